"""smtk.local.run: a job from Python, and a result object that says how it ended."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest

import smtk.local
from smtk.errors import ConfigError

SCRIPT = """
import argparse, json, os
parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int)
parser.add_argument("--layers")
parser.add_argument("--fail", default="false")
args = parser.parse_args()
if args.fail.lower() == "true":
    raise ValueError(f"diverged after {args.epochs} epochs")
for epoch in range(1, args.epochs + 1):
    print(f"epoch {epoch} loss={1 / epoch:.3f}", flush=True)
rows = sorted(os.listdir(os.environ["SM_CHANNEL_TRAIN"]))
json.dump({"layers": json.loads(args.layers), "rows": rows},
          open(os.path.join(os.environ["SM_MODEL_DIR"], "model.json"), "w"))
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text(SCRIPT)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "part-0.csv").write_text("1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SAGEMAKER_BASE_DIR", raising=False)
    return tmp_path


def test_a_job_from_python(project: Path) -> None:
    result = smtk.local.run(
        "train.py",
        source_dir="src",
        hyperparameters={"epochs": 3, "layers": [64, 32]},
        channels={"train": "data"},
        metric_definitions=[{"Name": "loss", "Regex": "loss=([0-9.]+)"}],
        output_path="out",
        job_name="from-python",
        job_dir="job",
    )
    assert result.succeeded and result.exit_status == 0 and result.failure is None
    assert result.job_dir == str(project / "job")
    assert result.metric("loss") == [1.0, 0.5, 0.333]
    model = json.loads(Path(result.model_dir, "model.json").read_text())
    assert model == {"layers": [64, 32], "rows": ["part-0.csv"]}
    assert result.model_data == str(project / "out" / "from-python" / "output" / "model.tar.gz")
    with tarfile.open(result.model_data) as tar:
        assert tar.getnames() == ["model.json"]
    assert [h.host for h in result.hosts] == ["algo-1"]
    assert "epoch 3" in Path(result.logs["algo-1"]).read_text()


def test_a_failed_job_returns_its_root_cause(project: Path) -> None:
    result = smtk.local.run(
        "train.py",
        source_dir="src",
        hyperparameters={"epochs": 2, "layers": [1], "fail": True},
        channels={"train": "data"},
        job_dir="job",
    )
    assert not result.succeeded and result.exit_status == 1
    assert result.failure is not None
    assert "ValueError: diverged after 2 epochs" in result.failure.cause
    assert result.hosts[0].outcome is result.failure


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({}, "entry_point"),
        ({"entry_point": "train.py", "instance_count": 0}, "instance_count"),
        ({"entry_point": "train.py", "metric_definitions": [{"Name": "x", "Regex": "no group"}]}, "capture"),
    ],
)
def test_bad_arguments_raise_config_errors(project: Path, kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        smtk.local.run(**kwargs)  # type: ignore[arg-type]
    assert not os.path.exists("smtk-jobs")
