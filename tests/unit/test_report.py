"""Root causes, failure rendering and the outcome files."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from smtk import report
from smtk.errors import ConfigError, InstallError
from smtk.paths import Paths

TRACEBACK = """\
Epoch 1 loss 0.3
Traceback (most recent call last):
  File "/opt/ml/code/train.py", line 42, in <module>
    main()
  File "/opt/ml/code/train.py", line 30, in main
    model.fit(x)
  File "/usr/lib/python3/site-packages/lib/model.py", line 7, in fit
    raise ValueError(f"bad shape {x.shape}")
ValueError: bad shape (1, 3)
""".splitlines()


def test_innermost_user_frame_is_named() -> None:
    error = report.find_python_error(TRACEBACK, "/opt/ml/code")
    assert error is not None
    assert error.describe() == "ValueError: bad shape (1, 3) at train.py:30"


def test_without_a_code_dir_the_innermost_frame_is_named() -> None:
    error = report.find_python_error(TRACEBACK, None)
    assert error is not None and error.location == "model.py:7"


def test_chained_exceptions_report_the_last_one() -> None:
    lines = [
        "Traceback (most recent call last):",
        '  File "/c/a.py", line 1, in <module>',
        "KeyError: 'x'",
        "",
        "During handling of the above exception, another exception occurred:",
        "",
        "Traceback (most recent call last):",
        '  File "/c/a.py", line 3, in <module>',
        "RuntimeError: wrapped",
    ]
    error = report.find_python_error(lines, "/c")
    assert error is not None and error.describe() == "RuntimeError: wrapped at a.py:3"


def test_rank_tags_are_ignored() -> None:
    lines = [f"[rank1]: {line}" for line in TRACEBACK]
    error = report.find_python_error(lines, "/opt/ml/code")
    assert error is not None and error.exception == "ValueError: bad shape (1, 3)"


def test_exception_line_without_header_is_still_found() -> None:
    lines = ["  [Previous line repeated 996 more times]", "RecursionError: maximum recursion depth exceeded"]
    error = report.find_python_error(lines)
    assert error is not None and error.exception.startswith("RecursionError")


@pytest.mark.parametrize(
    ("signum", "category", "words"),
    [
        (signal.SIGKILL, "out-of-memory", "out of memory"),
        (signal.SIGSEGV, "signal", "segmentation fault"),
        (signal.SIGBUS, "signal", "/dev/shm"),
    ],
)
def test_signals_get_names_and_hints(signum: int, category: str, words: str) -> None:
    cause, got, retryable, _ = report.classify_exit(returncode=None, signum=signum, stderr_tail=[])
    assert got == category and words in cause and signal.Signals(signum).name in cause
    assert retryable is False


def test_gloo_abort_at_exit_is_recognisable() -> None:
    cause, _, _, _ = report.classify_exit(
        returncode=None, signum=signal.SIGABRT, stderr_tail=["terminate called without an active exception"]
    )
    assert "destroy_process_group" in cause


def test_plain_exit_uses_the_last_stderr_line() -> None:
    cause, category, _, _ = report.classify_exit(
        returncode=2, signum=None, stderr_tail=["usage: x", "x: error: bad"]
    )
    assert category == "exit" and cause == "the training script exited with status 2: x: error: bad"


def test_rendering_fits_1024_and_keeps_the_cause_first() -> None:
    outcome = report.Outcome(
        success=False, exit_status=1, cause="ValueError: boom at train.py:3", host="algo-1",
        stderr_tail=tuple(f"line {i} " + "z" * 80 for i in range(100)), command="python x.py", seconds=2.0,
    )  # fmt: skip
    text = report.render_failure(outcome)
    assert len(text) <= 1024
    assert text.splitlines()[0] == "ValueError: boom at train.py:3"
    assert text.splitlines()[1] == "where: host algo-1, exit status 1, after 2.0 s"
    assert text.rstrip().endswith("line 99 " + "z" * 80)  # the newest lines are kept


def test_errors_map_to_their_exit_status() -> None:
    assert report.from_error(ConfigError("a.json", "k", "x", 1)).exit_status == 2
    outcome = report.from_error(InstallError("pip failed"))
    assert outcome.exit_status == 3 and outcome.retryable and outcome.cause == "InstallError: pip failed"


def test_finish_writes_success_then_failure_files(tmp_path: Path) -> None:
    paths = Paths(str(tmp_path))
    assert report.finish(paths, report.success(1.0)) == 0
    assert (tmp_path / "output" / "success").read_text() == ""
    report.clear_stale(paths)
    failed = report.Outcome(success=False, exit_status=0, cause="token abc123 leaked", category="exit")
    assert report.finish(paths, failed, ["abc123"]) == 1  # never exit 0 with a failure
    assert "abc123" not in (tmp_path / "output" / "failure").read_text()
    record = json.loads((tmp_path / "output" / "failure.json").read_text())
    assert record["exit_status"] == 1 and "abc123" not in json.dumps(record)
    assert not (tmp_path / "output" / "success").exists()
