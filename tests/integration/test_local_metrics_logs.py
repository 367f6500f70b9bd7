"""A real job's metrics and logs in smtk local: regexes on the live output, logs kept, masked."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.integration.test_local import smtk_local

TRAINER = """
import json, os, sys
host = os.environ["SM_CURRENT_HOST"]
scale = 1 if host == "algo-1" else 2
for epoch in range(1, 5):
    print(f"epoch {epoch}: loss={scale / epoch:.4f} val_acc: {0.5 + epoch / 10:.2f}", flush=True)
print("connecting with", json.loads(os.environ["SM_HPS"])["db_password"], flush=True)
print("warning on stderr", file=sys.stderr, flush=True)
"""


def spec(tmp_path: Path, hosts: int) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text(TRAINER)
    path = tmp_path / "spec.json"
    path.write_text(
        json.dumps(
            {
                "TrainingJobName": "with-metrics",
                "HyperParameters": {
                    "sagemaker_program": "train.py",
                    "sagemaker_submit_directory": "src",
                    "db_password": "hunter2-very-secret",
                },
                "AlgorithmSpecification": {
                    "MetricDefinitions": [
                        {"Name": "train:loss", "Regex": "loss=([0-9.]+)"},
                        {"Name": "validation:accuracy", "Regex": "val_acc: ([0-9.]+)"},
                    ]
                },
                "ResourceConfig": {"InstanceCount": hosts},
            }
        )
    )
    return path


def test_metrics_and_logs_of_one_host(tmp_path: Path) -> None:
    spec(tmp_path, 1)
    proc = smtk_local("--spec", "spec.json", "--job-dir", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines() if ":" in line[:30]}
    assert rows["train:loss"] == ["0.25", "0.25", "1", "4"]
    assert rows["validation:accuracy"] == ["0.9", "0.6", "0.9", "4"]
    metrics = json.loads((tmp_path / "job" / "metrics.json").read_text())["metrics"]
    assert [v[2] for v in metrics["train:loss"]["values"]] == [1.0, 0.5, 0.3333, 0.25]
    assert (tmp_path / "job" / "metrics" / "train_loss.png").stat().st_size > 1000
    log = (tmp_path / "job" / "logs" / "algo-1.log").read_text()
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    assert re.search(rf"^{stamp} stdout epoch 1: loss=1\.0000", log, re.M)
    assert re.search(rf"^{stamp} stderr warning on stderr$", log, re.M)
    assert "hunter2-very-secret" not in log + proc.stdout + proc.stderr
    assert "connecting with" in log


def test_every_host_is_logged_and_measured(tmp_path: Path) -> None:
    spec(tmp_path, 2)
    proc = smtk_local("--spec", "spec.json", "--job-dir", "job", cwd=tmp_path, SMTK_LOCAL_HOSTS="loopback")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    for host in ("algo-1", "algo-2"):
        assert "epoch 4" in (tmp_path / "job" / "logs" / f"{host}.log").read_text()
    assert "algo-2 | epoch 4" in proc.stdout  # the terminal keeps its host prefixes
    values = json.loads((tmp_path / "job" / "metrics.json").read_text())["metrics"]["train:loss"]["values"]
    assert sorted({host for _, host, _ in values}) == ["algo-1", "algo-2"]
    assert max(v for _, _, v in values) == 2.0
