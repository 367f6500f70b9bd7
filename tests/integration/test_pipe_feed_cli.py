"""``smtk pipe-feed`` as a process: exit statuses, signals, S3 sources."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from smtk.channels.pipe import open_epoch
from tests.conftest import VENV_BIN
from tests.helpers.s3server import S3Server
from tests.integration.test_pipe_feeder import wait_for_fifo

SMTK = str(VENV_BIN / "smtk")


def run_feed(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SMTK, "pipe-feed", *args], check=False, capture_output=True, text=True, timeout=120, env=env
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--channel", "train"], "the following arguments are required: --source"),
        (["--channel", "a/b", "--source", "."], "expected a channel name"),
        (["--channel", "train", "--source", ".", "--epochs", "0"], "epochs"),
        (["--channel", "train", "--source", "/nonexistent/smtk"], "--source: expected a directory"),
        (["--channel", "train", "--source", ".", "--record-wrapper", "Gzip"], "invalid choice"),
        (
            [
                "--channel",
                "train",
                "--source",
                ".",
                "--host-index",
                "3",
                "--host-count",
                "2",
                "--distribution",
                "ShardedByS3Key",
            ],
            "host_index",
        ),
        (["--channel", "train", "--source", "s3:/bucket"], "--source: expected a directory"),
    ],
)
def test_bad_arguments_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_feed(*args, "--data-dir", str(tmp_path))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_it_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x" * 10)
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [
            SMTK,
            "pipe-feed",
            "--channel",
            "train",
            "--source",
            str(src),
            "--data-dir",
            str(data),
            "--epochs",
            "5",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    with open_epoch(str(data / "train"), 0, timeout=120) as epoch:
        assert epoch.read() == b"x" * 10
    wait_for_fifo(str(data / "train_1"))  # now blocked waiting for a reader of epoch 1
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig
    assert f"stopped by {sig.name} after 1 of 5 epoch(s)" in err
    assert os.listdir(data) == []


def test_s3_source_and_failure_exit_1(tmp_path: Path, s3_server: S3Server, s3_env: dict[str, str]) -> None:
    bucket = s3_server.new_bucket()
    s3_server.client().put_object(Bucket=bucket, Key="p/one", Body=b"from s3")
    env = {**os.environ, **s3_env}
    proc = subprocess.Popen(
        [
            SMTK,
            "pipe-feed",
            "--channel",
            "train",
            "--source",
            f"s3://{bucket}/p/",
            "--data-dir",
            str(tmp_path),
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    with open_epoch(str(tmp_path / "train"), 0, timeout=120) as epoch:
        assert epoch.read() == b"from s3"
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    result = run_feed(
        "--channel", "train", "--source", "s3://smtk-missing-bucket/p", "--data-dir", str(tmp_path), env=env
    )
    assert result.returncode == 1
    assert "cannot list s3://smtk-missing-bucket/p" in result.stderr
