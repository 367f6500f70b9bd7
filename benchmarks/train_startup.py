"""How much `train` adds to a trivial job, against plain `python` and the reference's `train`.

    python benchmarks/train_startup.py [--runs 20]

Each figure is the median wall-clock time of fresh runs of a one-line script: run
directly with `python`, through smtk's `train`, and (when `.venv-ref` holds
sagemaker-training) through the reference's `train` with SM_STUDIO_LOCAL_MODE=true so
that it skips its DNS wait. The target: smtk's added time is at most 1/5 of the
reference's added time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt_ms, reference_python, time_runs

SCRIPT = "print('first line')\n"


def make_tree(base: Path) -> Path:
    root = base / "opt" / "ml"
    for sub in ("input/config", "input/data/train", "code", "model", "output"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    hps = {
        "epochs": "3",
        "lr": "0.01",
        "sagemaker_program": '"train.py"',
        "sagemaker_container_log_level": "20",
    }
    (root / "input/config/hyperparameters.json").write_text(json.dumps(hps))
    (root / "input/config/inputdataconfig.json").write_text(
        json.dumps({"train": {"TrainingInputMode": "File"}})
    )
    (root / "input/config/resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]})
    )
    (root / "code" / "train.py").write_text(SCRIPT)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_tree(Path(tmp))
        base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp, "LANG": "C.UTF-8"}
        env = {**base_env, "SAGEMAKER_BASE_DIR": str(root), "TRAINING_JOB_NAME": "bench"}
        bare = time_runs([sys.executable, str(root / "code" / "train.py")], base_env, args.runs)
        train = str(Path(sys.executable).parent / "train")
        smtk = time_runs([train], env, args.runs)
        print(f"runs per figure: {args.runs} (median)")
        print(f"plain python script      {fmt_ms(bare)}")
        print(f"smtk train               {fmt_ms(smtk)}   adds {fmt_ms(smtk - bare)}")
        ref_python = reference_python()
        if ref_python is None:
            print("reference train          not installed (.venv-ref); ratio not measured")
            return
        ref_train = str(Path(ref_python).parent / "train")
        ref_bare = time_runs([ref_python, str(root / "code" / "train.py")], base_env, args.runs)
        ref_env = {**env, "SM_STUDIO_LOCAL_MODE": "true", "AWS_REGION": "us-east-1"}
        reference = time_runs([ref_train], ref_env, args.runs)
        added_smtk, added_ref = smtk - bare, reference - ref_bare
        print(f"plain python (ref venv)  {fmt_ms(ref_bare)}")
        print(f"reference train          {fmt_ms(reference)}   adds {fmt_ms(added_ref)}")
        ratio = added_smtk / added_ref if added_ref > 0 else float("inf")
        verdict = "meets" if ratio <= 0.2 else "misses"
        print(f"smtk added / reference added = {ratio:.3f}  ({verdict} the target of <= 0.200)")


if __name__ == "__main__":
    main()
