"""Start-up cost of reading the job: ``import smtk`` + ``Environment()`` vs the reference.

Each measurement is a fresh interpreter (what ``train`` and every user process pay),
timed from spawn to exit, median over ``--runs`` runs, interleaved so that load from
other processes hits every variant alike. The baseline is a bare interpreter
(``python -c pass``) of the same virtualenv, so "added" is the cost of the library alone.

Variants:

- ``build``: ``import`` + ``Environment()``;
- ``render``: the same + ``to_env_vars()`` + ``to_cmd_args()`` (what a launcher does; smtk
  runs its hardware probes lazily, here, while the reference runs them in the constructor).

The reference (``sagemaker-training`` in ``.venv-ref``, or ``$SMTK_REFERENCE_PYTHON``) is
measured when installed. Both read the same real tree (the reference document's worked
example) through ``SAGEMAKER_BASE_DIR``, with a clean environment and no network.

Usage::

    .venv/bin/python benchmarks/environment.py [--runs 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REFERENCE = Path(os.environ.get("SMTK_REFERENCE_PYTHON", str(REPO / ".venv-ref" / "bin" / "python")))
WORKED = REPO / "tests" / "data" / "worked_example.json"

SMTK_CODE = {
    "build": "import smtk; smtk.Environment()",
    "render": "import smtk; e = smtk.Environment(); e.to_env_vars(); e.to_cmd_args()",
}
REF_CODE = {
    "build": "import sagemaker_training.environment as m; m.Environment()",
    "render": (
        "import sagemaker_training.environment as m; e = m.Environment(); e.to_env_vars(); e.to_cmd_args()"
    ),
}


def make_tree(base: Path) -> Path:
    spec = json.loads(WORKED.read_text())
    root = base / "opt" / "ml"
    config = root / "input" / "config"
    config.mkdir(parents=True)
    for sub in ("code", "model", "output/data", "input/data/train", "input/data/eval"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(json.dumps(spec["hyperparameters"]))
    (config / "inputdataconfig.json").write_text(json.dumps(spec["inputdataconfig"]))
    (config / "resourceconfig.json").write_text(json.dumps(spec["resourceconfig"]))
    (root / "code" / "train.py").write_text("print('hi')\n")
    return root


def time_once(python: str, code: str, env: dict[str, str], cwd: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run([python, "-c", code], env=env, cwd=cwd, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{python} -c {code!r} failed:\n{proc.stderr.decode(errors='replace')}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="fresh processes per variant (default 30)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="smtk-bench-env-") as tmp:
        base = Path(tmp)
        root = make_tree(base)
        home = base / "home"
        home.mkdir()
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "SAGEMAKER_BASE_DIR": str(root),
            "TRAINING_JOB_NAME": "job-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_REGION": "us-west-2",
        }
        variants: dict[str, tuple[str, str]] = {"smtk:bare": (sys.executable, "pass")}
        variants.update({f"smtk:{k}": (sys.executable, v) for k, v in SMTK_CODE.items()})
        has_reference = REFERENCE.exists()
        if has_reference:
            variants["ref:bare"] = (str(REFERENCE), "pass")
            variants.update({f"ref:{k}": (str(REFERENCE), v) for k, v in REF_CODE.items()})

        # One warm-up each (page cache, .pyc files), then interleaved rounds.
        for python, code in variants.values():
            time_once(python, code, env, tmp)
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.runs):
            for name, (python, code) in variants.items():
                samples[name].append(time_once(python, code, env, tmp))

    median = {name: statistics.median(values) * 1000 for name, values in samples.items()}
    print(f"fresh-process start-up, median of {args.runs} runs (ms); tree = the reference's worked example")
    print(f"{'variant':<14} {'median':>9} {'added':>9}")
    for name, value in median.items():
        side = name.split(":")[0]
        added = value - median[f"{side}:bare"]
        print(f"{name:<14} {value:9.1f} {added:9.1f}")
    if not has_reference:
        print(f"reference not installed ({REFERENCE}): no comparison")
        return 0
    print()
    for variant in SMTK_CODE:
        mine = median[f"smtk:{variant}"] - median["smtk:bare"]
        theirs = median[f"ref:{variant}"] - median["ref:bare"]
        ratio = mine / theirs if theirs > 0 else float("inf")
        verdict = "meets" if ratio <= 0.2 else "MISSES"
        times = 1 / ratio if ratio > 0 else float("inf")
        print(
            f"{variant:<7} added: smtk {mine:7.1f} ms, reference {theirs:7.1f} ms, "
            f"ratio {ratio:.3f} (target <= 0.200: {verdict}); the reference adds {times:.1f}x more"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
