"""SMTK_LOG_FORMAT=json: every smtk log line one JSON object, masked before it is encoded."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from smtk.log import JsonFormatter
from smtk.redact import Masker
from tests.helpers.jobtree import make_tree
from tests.integration.test_train import run_train


def test_train_logs_json_lines(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path,
        hyperparameters={"sagemaker_program": "train.py", "db_password": 'quote"and\\slash-secret'},
        code={"train.py": "print('user output stays as it is')\n"},
    )
    proc = run_train(root, SMTK_LOG_FORMAT="json")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stderr.splitlines() if line.strip()]
    assert records and {r["logger"] for r in records} <= {"smtk", "smtk.sync", "smtk.s3"}
    assert {"time", "level", "logger", "message"} == set(records[0])
    assert any("reporting success" in r["message"] for r in records)
    assert "quote" not in proc.stderr and "slash-secret" not in proc.stderr
    assert "user output stays as it is" in proc.stdout


@settings(max_examples=200, deadline=None)
@given(secret=st.text(min_size=6, max_size=40).filter(lambda s: s.strip() == s and len(set(s)) > 3))
def test_no_secret_survives_json_encoding(secret: str) -> None:
    own = Masker()  # not the process's: other tests must not see these values masked
    own.add([secret])
    record = logging.LogRecord("smtk", logging.INFO, __file__, 1, "connecting with %s now", (secret,), None)
    line = JsonFormatter(own).format(record)
    decoded = json.loads(line)["message"]
    assert secret not in decoded
    assert decoded.startswith("connecting with ") and decoded.endswith(" now")
