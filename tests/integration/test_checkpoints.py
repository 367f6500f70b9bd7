"""Checkpoint sync and restore (spot-restart case) against the loopback S3 server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from smtk.errors import SyncError
from smtk.sync import restore_checkpoints, start_sync
from tests.helpers.s3server import S3Server
from tests.integration.sync_support import (
    SyncJob,
    local_digests,
    local_files,
    make_job,
    object_exists,
    remote_digests,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("s3_env", "quiet_server_log")


def checkpoint_job(base: Path, server: S3Server, bucket: str, uri: str, *, enabled: bool = True) -> SyncJob:
    local = base / "checkpoints"
    return make_job(
        base,
        server,
        bucket=bucket,
        s3_output=False,
        checkpointconfig={"LocalPath": str(local), "S3Uri": uri},
        extra_env={"SMTK_SYNC_CHECKPOINTS": "1"} if enabled else {},
    )


def test_checkpoints_sync_during_training_and_restore_on_a_second_run(
    tmp_path: Path, s3_server: S3Server
) -> None:
    bucket = s3_server.new_bucket()
    uri = f"s3://{bucket}/ckpt/run"
    prefix = "ckpt/run/"

    # First run: nothing to restore; checkpoints written while training go to S3.
    first = checkpoint_job(tmp_path / "first", s3_server, bucket, uri)
    local1 = tmp_path / "first" / "checkpoints"
    restored = restore_checkpoints(first.env)
    assert restored is not None and restored.downloaded == 0
    handle = start_sync(first.env)
    assert handle is not None
    (local1 / "epoch-1").mkdir(parents=True, exist_ok=True)
    (local1 / "epoch-1" / "model.pt").write_bytes(os.urandom(300_000))
    assert wait_until(lambda: object_exists(s3_server, bucket, prefix + "epoch-1/model.pt"))
    (local1 / "epoch-1" / "optimizer.pt").write_bytes(os.urandom(20 * 1024 * 1024))  # in parts
    tmp = local1 / "latest.json.tmp"
    tmp.write_text('{"epoch": 1}')
    os.rename(tmp, local1 / "latest.json")
    report = handle.stop(timeout=240)
    assert report.failed == 0 and report.pending_abandoned == 0, report.errors
    assert remote_digests(s3_server, bucket, prefix) == local_digests(local1)

    # Second run (a spot restart): an empty local dir is filled from S3 before user code.
    second = checkpoint_job(tmp_path / "second", s3_server, bucket, uri)
    local2 = tmp_path / "second" / "checkpoints"
    restored = restore_checkpoints(second.env)
    assert restored is not None
    assert restored.downloaded == 3 and restored.kept == 0 and restored.failed == 0
    assert local_files(local2) == local_files(local1)
    handle = start_sync(second.env)
    assert handle is not None
    (local2 / "epoch-2").mkdir()
    (local2 / "epoch-2" / "model.pt").write_bytes(os.urandom(1000))
    report = handle.stop(timeout=240)
    assert report.failed == 0, report.errors
    assert report.uploaded == 1  # only the new file: restored ones are not sent back
    assert remote_digests(s3_server, bucket, prefix) == local_digests(local2)

    # Restoring again over a complete local copy downloads nothing.
    again = restore_checkpoints(second.env)
    assert again is not None and again.downloaded == 0 and again.kept == 4


def test_checkpoint_sync_is_off_unless_switched_on(tmp_path: Path, s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    job = checkpoint_job(tmp_path, s3_server, bucket, f"s3://{bucket}/c", enabled=False)
    assert restore_checkpoints(job.env) is None
    assert start_sync(job.env) is None


def test_restore_refuses_keys_that_leave_the_directory(tmp_path: Path, s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    s3_server.client().put_object(Bucket=bucket, Key="c/../../escape.txt", Body=b"x")
    s3_server.client().put_object(Bucket=bucket, Key="c/fine.txt", Body=b"ok")
    job = checkpoint_job(tmp_path, s3_server, bucket, f"s3://{bucket}/c")
    with pytest.raises(SyncError, match=r"escape\.txt"):
        restore_checkpoints(job.env)
    assert not (tmp_path / "escape.txt").exists()
    assert not (tmp_path.parent / "escape.txt").exists()


def test_restore_from_a_missing_bucket_is_a_clear_error(tmp_path: Path, s3_server: S3Server) -> None:
    job = checkpoint_job(tmp_path, s3_server, "missing-bucket-smtk", "s3://missing-bucket-smtk/c")
    with pytest.raises(SyncError) as info:
        restore_checkpoints(job.env)
    assert "missing-bucket-smtk" in str(info.value)
    assert "NoSuchBucket" in str(info.value)
