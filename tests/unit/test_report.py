"""Root causes (smtk.causes), the failure record (smtk.failure) and the outcome files (smtk.report)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from smtk import causes, failure, report
from smtk.errors import ConfigError, InstallError
from smtk.failure import Failure, Success, root_cause
from smtk.paths import Paths
from smtk.redact import Masker

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
    error = causes.find_python_error(TRACEBACK, "/opt/ml/code")
    assert error is not None
    assert error.describe() == "ValueError: bad shape (1, 3) at train.py:30"


def test_without_a_code_dir_the_innermost_frame_is_named() -> None:
    error = causes.find_python_error(TRACEBACK, None)
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
    error = causes.find_python_error(lines, "/c")
    assert error is not None and error.describe() == "RuntimeError: wrapped at a.py:3"


def test_rank_tags_are_ignored() -> None:
    lines = [f"[rank1]: {line}" for line in TRACEBACK]
    error = causes.find_python_error(lines, "/opt/ml/code")
    assert error is not None and error.exception == "ValueError: bad shape (1, 3)"


def test_exception_line_without_header_is_still_found() -> None:
    lines = ["  [Previous line repeated 996 more times]", "RecursionError: maximum recursion depth exceeded"]
    error = causes.find_python_error(lines)
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
    failure = causes.process_failure(returncode=None, signum=signum, stderr_tail=[])
    assert failure.category == category and words in failure.cause
    assert signal.Signals(signum).name in failure.cause
    assert failure.retryable is False and failure.exit_status == 128 + signum and failure.signal == signum


def test_gloo_abort_at_exit_is_recognisable() -> None:
    failure = causes.process_failure(
        returncode=None, signum=signal.SIGABRT, stderr_tail=["terminate called without an active exception"]
    )
    assert "destroy_process_group" in failure.cause


def test_plain_exit_uses_the_last_stderr_line() -> None:
    failure = causes.process_failure(returncode=2, signum=None, stderr_tail=["usage: x", "x: error: bad"])
    assert failure.category == "exit"
    assert failure.cause == "the training script exited with status 2: x: error: bad"
    assert failure.exit_status == 2


def test_rendering_fits_1024_and_keeps_the_cause_first() -> None:
    outcome = Failure(
        exit_status=1, cause="ValueError: boom at train.py:3", host="algo-1",
        stderr_tail=tuple(f"line {i} " + "z" * 80 for i in range(100)), command="python x.py", seconds=2.0,
    )  # fmt: skip
    text = report.render_failure(outcome)
    assert len(text) <= 1024
    assert text.splitlines()[0] == "ValueError: boom at train.py:3"
    assert text.splitlines()[1] == "where: host algo-1, exit status 1, after 2.0 s"
    assert text.rstrip().endswith("line 99 " + "z" * 80)  # the newest lines are kept


def test_errors_map_to_their_exit_status() -> None:
    assert failure.from_error(ConfigError("a.json", "k", "x", 1)).exit_status == 2
    outcome = failure.from_error(InstallError("pip failed"))
    assert outcome.exit_status == 3 and outcome.retryable and outcome.cause == "InstallError: pip failed"


def test_finish_writes_success_then_failure_files(tmp_path: Path) -> None:
    paths = Paths(str(tmp_path))
    assert report.finish(paths, Success(1.0)) == 0
    assert (tmp_path / "output" / "success").read_text() == ""
    report.clear_stale(paths)
    failed = Failure(exit_status=0, cause="token abc123 leaked", category="exit")
    assert report.finish(paths, failed, Masker(["abc123"])) == 1  # never exit 0 with a failure
    assert "abc123" not in (tmp_path / "output" / "failure").read_text()
    record = json.loads((tmp_path / "output" / "failure.json").read_text())
    assert record["exit_status"] == 1 and "abc123" not in json.dumps(record)
    assert not (tmp_path / "output" / "success").exists()
    assert record["cause"] == "token **** leaked" and record["category"] == "exit"


ERROR_FILE = {
    "message": {
        "message": "ValueError: from the error file",
        "extraInfo": {
            "py_callstack": "Traceback (most recent call last):\n"
            '  File "/opt/ml/code/train.py", line 7, in main\n'
            "    raise ValueError('from the error file')\n"
            "ValueError: from the error file\n",
            "timestamp": "1764633600",
        },
    }
}


def test_torchrun_error_file_is_the_first_source(tmp_path: Path) -> None:
    path = tmp_path / "error.json"
    path.write_text(json.dumps(ERROR_FILE))
    found = causes.process_failure(
        returncode=1,
        signum=None,
        stderr_tail=["Traceback (most recent call last):", "RuntimeError: what stderr says"],
        code_dir="/opt/ml/code",
        error_file=str(path),
    )
    assert found.cause == "ValueError: from the error file at train.py:7"
    assert found.category == "exception" and "py_callstack" not in found.detail
    assert "raise ValueError" in found.detail


@pytest.mark.parametrize("content", ["", "{", '{"message": 3}', "[]", '{"message": {"no": 1}}'])
def test_a_broken_error_file_falls_back_to_stderr(tmp_path: Path, content: str) -> None:
    path = tmp_path / "error.json"
    path.write_text(content)
    found = causes.process_failure(
        returncode=1, signum=None, stderr_tail=["KeyError: 'x'"], error_file=str(path)
    )
    assert found.cause == "KeyError: 'x'"


def test_an_error_file_that_is_a_fifo_is_never_opened_for_long(tmp_path: Path) -> None:
    path = tmp_path / "error.json"
    os.mkfifo(path)
    found = causes.process_failure(returncode=3, signum=None, stderr_tail=[], error_file=str(path))
    assert found.cause == "the training script exited with status 3"


def test_the_record_round_trips_through_json() -> None:
    record = Failure(
        cause="ValueError: x", category="exception", exit_status=3, host="algo-2", rank=5, signal=None,
        time=12.5, stderr_tail=("a", "b"), retryable=True, detail="tb", command="python x", seconds=1.5,
        extra={"k": "v"},
    )  # fmt: skip
    assert Failure.from_json(json.loads(json.dumps(record.to_json()))) == record


@pytest.mark.parametrize(
    "data",
    [None, 3, [], {}, {"cause": 5}, {"cause": "x", "exit_status": 0}, {"cause": "x", "exit_status": "many"}],
)
def test_hostile_records_are_bounded_or_refused(data: object) -> None:
    found = Failure.from_json(data)
    assert found is None or (found.exit_status != 0 and found.cause == "x")


def test_a_huge_record_is_cut_down() -> None:
    found = Failure.from_json({"cause": "x" * 10_000_000, "stderr_tail": ["y" * 100_000] * 100_000})
    assert found is not None and len(found.cause) <= 64 * 1024
    assert len(found.stderr_tail) == 200 and all(len(line) <= 16 * 1024 for line in found.stderr_tail)


def test_root_cause_prefers_a_cause_over_fallout_then_the_earliest() -> None:
    fallout = Failure(cause="RuntimeError: Connection reset by peer", host="algo-1", time=1.0)
    late = Failure(cause="ValueError: late", host="algo-3", time=9.0)
    early = Failure(cause="KeyError: early", host="algo-2", time=5.0)
    assert root_cause([fallout, late, early]) is early
    assert root_cause([fallout]) is fallout
    assert root_cause([None]) is None


@pytest.mark.parametrize("thing", ["dir", "fifo"])
def test_whatever_sits_at_the_outcome_paths_is_moved_aside(tmp_path: Path, thing: str) -> None:
    paths = Paths(str(tmp_path))
    output = tmp_path / "output"
    output.mkdir()
    for name in ("failure", "success"):
        if thing == "dir":
            (output / name).mkdir()
            (output / name / "keep.txt").write_text("the user's")
        else:
            os.mkfifo(output / name)
    report.clear_stale(paths)
    assert report.finish(paths, Failure(cause="ValueError: x", exit_status=1)) == 1
    assert (output / "failure").read_text().startswith("ValueError: x")
    moved = sorted(p.name for p in output.iterdir() if ".moved-" in p.name)
    assert len(moved) == 2  # nothing of the user's is lost
    if thing == "dir":
        assert all((output / name / "keep.txt").read_text() == "the user's" for name in moved)


def test_success_is_written_even_when_a_directory_was_in_its_way(tmp_path: Path) -> None:
    paths = Paths(str(tmp_path))
    (tmp_path / "output" / "success").mkdir(parents=True)
    assert report.finish(paths, Success(1.0)) == 0
    assert (tmp_path / "output" / "success").is_file()
