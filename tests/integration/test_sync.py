"""Intermediate-output sync against a real S3-protocol server on loopback.

Each test starts :func:`smtk.sync.start_sync` the way ``train`` does, writes files
the way training scripts do (in this process or in a real child process), stops the
sync and compares the objects under ``<s3_output>/<job>/output/intermediate/`` with
the local tree, keys and contents.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from smtk.sync import start_sync
from tests.helpers.s3server import S3Server, running_server
from tests.integration.sync_support import (
    captured,
    local_digests,
    local_files,
    make_job,
    object_body,
    object_exists,
    remote_digests,
    remote_files,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("s3_env", "quiet_server_log")


def _stop_and_compare(handle, job, server: S3Server, timeout: float = 240.0):  # type: ignore[no-untyped-def]
    report = handle.stop(timeout=timeout)
    assert report.failed == 0, report.errors
    assert report.pending_abandoned == 0
    # Keys and contents (by MD5) of everything under the prefix against the local tree.
    assert remote_digests(server, job.bucket, job.prefix) == local_digests(job.inter)
    return report


def test_burst_of_5000_small_files(tmp_path: Path, s3_server: S3Server) -> None:
    job = make_job(tmp_path, s3_server)
    handle = start_sync(job.env)
    assert handle is not None
    for i in range(5000):
        directory = job.inter / f"epoch-{i // 500}"
        directory.mkdir(exist_ok=True)
        (directory / f"step-{i:05d}.txt").write_bytes(f"step {i}\n".encode() * (1 + i % 7))
    report = _stop_and_compare(handle, job, s3_server)
    assert report.uploaded == 5000
    assert len(local_files(job.inter)) == 5000


def test_objects_arrive_while_training_runs(tmp_path: Path, s3_server: S3Server) -> None:
    job = make_job(tmp_path, s3_server)
    handle = start_sync(job.env)
    assert handle is not None
    (job.inter / "metrics.json").write_text('{"loss": 0.5}')
    # Before any stop: the object must show up on its own.
    assert wait_until(lambda: object_exists(s3_server, job.bucket, job.prefix + "metrics.json"))
    _stop_and_compare(handle, job, s3_server)


def test_files_in_new_nested_directories(tmp_path: Path, s3_server: S3Server) -> None:
    job = make_job(tmp_path, s3_server)
    handle = start_sync(job.env)
    assert handle is not None
    # Deep trees made in one go: files land before their directory's watch exists.
    for n in range(20):
        deep = job.inter / f"run-{n}" / "a" / "b" / "c"
        deep.mkdir(parents=True)
        for m in range(5):
            (deep / f"f{m}.bin").write_bytes(os.urandom(64 + m))
        (job.inter / f"run-{n}" / "top.txt").write_text(f"run {n}")
    # A populated directory moved in from outside the tree.
    outside = tmp_path / "staging" / "bundle"
    (outside / "inner").mkdir(parents=True)
    (outside / "inner" / "x.txt").write_text("moved in")
    (outside / "y.txt").write_text("moved in too")
    os.rename(outside, job.inter / "bundle")
    # A directory renamed inside the tree after its files were (probably) uploaded.
    (job.inter / "old-name").mkdir()
    (job.inter / "old-name" / "z.txt").write_text("renamed dir")
    assert wait_until(lambda: object_exists(s3_server, job.bucket, job.prefix + "old-name/z.txt"))
    os.rename(job.inter / "old-name", job.inter / "new-name")
    (job.inter / "new-name" / "after.txt").write_text("written after the rename")
    _stop_and_compare(handle, job, s3_server)


def test_write_then_rename_shows_only_the_final_name(tmp_path: Path, s3_server: S3Server) -> None:
    job = make_job(tmp_path, s3_server)
    handle = start_sync(job.env)
    assert handle is not None
    # The atomic-save pattern, many times over (the reference never uploads these).
    for i in range(200):
        tmp = job.inter / f".ckpt-{i}.json.tmp"
        tmp.write_text(f'{{"step": {i}}}')
        os.rename(tmp, job.inter / f"ckpt-{i}.json")
    # A temporary name that is surely uploaded before its rename: its object must go.
    slow = job.inter / "slow.tmp"
    slow.write_text("slow save")
    assert wait_until(lambda: object_exists(s3_server, job.bucket, job.prefix + "slow.tmp"))
    os.rename(slow, job.inter / "slow.json")
    # Replacing an existing name by rename (log rotation style).
    (job.inter / "latest.json").write_text("v1")
    assert wait_until(lambda: object_exists(s3_server, job.bucket, job.prefix + "latest.json"))
    (job.inter / "latest.json.new").write_text("v2 - longer")
    os.rename(job.inter / "latest.json.new", job.inter / "latest.json")
    report = _stop_and_compare(handle, job, s3_server)
    remote = remote_files(s3_server, job.bucket, job.prefix)
    assert not [k for k in remote if "tmp" in k or k.endswith(".new")]
    assert remote["latest.json"] == b"v2 - longer"
    assert report.removed >= 1


def test_rewritten_file_last_content_wins(tmp_path: Path, s3_server: S3Server) -> None:
    job = make_job(tmp_path, s3_server)
    handle = start_sync(job.env)
    assert handle is not None
    path = job.inter / "state.txt"
    path.write_text("version-1")
    key = job.prefix + "state.txt"
    assert wait_until(lambda: object_body(s3_server, job.bucket, key) == b"version-1")
    # Same size, right after: the kernel's coarse mtime may not change; the event must still count.
    path.write_text("version-2")
    assert wait_until(lambda: object_body(s3_server, job.bucket, key) == b"version-2")
    for i in range(50):
        path.write_text(f"version-{i + 3:03d}")
    _stop_and_compare(handle, job, s3_server)
    assert object_body(s3_server, job.bucket, key) == b"version-052"


def test_large_file_is_uploaded_in_parts(tmp_path: Path, s3_server: S3Server) -> None:
    job = make_job(tmp_path, s3_server)
    handle = start_sync(job.env)
    assert handle is not None
    data = os.urandom(50 * 1024 * 1024)
    (job.inter / "model.bin").write_bytes(data)
    _stop_and_compare(handle, job, s3_server)
    head = s3_server.client().head_object(Bucket=job.bucket, Key=job.prefix + "model.bin")
    assert head["ContentLength"] == len(data)
    assert "-" in head["ETag"]  # a multipart ETag: md5-of-parts "-" part count


def test_everything_arrives_after_a_server_outage(tmp_path: Path) -> None:
    with running_server() as server:
        job = make_job(tmp_path, server, extra_env={"SMTK_SYNC_RETRY_SECONDS": "600"})
        handle = start_sync(job.env)
        assert handle is not None
        for i in range(20):
            (job.inter / f"before-{i}.txt").write_text(f"before {i}")
        assert wait_until(lambda: object_exists(server, job.bucket, job.prefix + "before-19.txt"))
        server.stop()
        try:
            for i in range(50):
                (job.inter / "during" / str(i % 5)).mkdir(parents=True, exist_ok=True)
                (job.inter / "during" / str(i % 5) / f"f{i}.txt").write_text(f"during {i}")
            (job.inter / "before-0.txt").write_text("rewritten during the outage")
            # Let the uploads run into the closed port and back off a few times.
            wait_until(lambda: False, timeout=3)
        finally:
            server.start()
        # Retries, not the final flush, must deliver them: wait before stopping.
        for i in range(50):
            key = f"{job.prefix}during/{i % 5}/f{i}.txt"
            assert wait_until(lambda key=key: object_exists(server, job.bucket, key))
        key0 = job.prefix + "before-0.txt"
        assert wait_until(lambda: object_body(server, job.bucket, key0) == b"rewritten during the outage")
        _stop_and_compare(handle, job, server)


@pytest.mark.parametrize("ending", ["fails", "sigterm"])
def test_files_written_before_the_user_process_ends_arrive(
    tmp_path: Path, s3_server: S3Server, ending: str
) -> None:
    job = make_job(tmp_path, s3_server)
    script = textwrap.dedent(
        """
        import os, sys, time
        inter = sys.argv[1]
        for i in range(300):
            os.makedirs(os.path.join(inter, "logs"), exist_ok=True)
            with open(os.path.join(inter, "logs", f"{i}.log"), "w") as f:
                f.write(f"line {i}\\n" * 20)
        print("written", flush=True)
        if sys.argv[2] == "fails":
            sys.exit(3)
        time.sleep(600)
        """
    )
    handle = start_sync(job.env)
    assert handle is not None
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(job.inter), ending], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "written"
    if ending == "sigterm":
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) != 0
    report = _stop_and_compare(handle, job, s3_server)
    assert report.uploaded == 300


def test_file_deleted_before_upload_is_skipped(tmp_path: Path, s3_server: S3Server) -> None:
    # A long debounce keeps the file waiting; it is deleted before its turn.
    job = make_job(tmp_path, s3_server, extra_env={"SMTK_SYNC_DEBOUNCE_MS": "30000"})
    handle = start_sync(job.env)
    assert handle is not None
    (job.inter / "gone.txt").write_text("short-lived")
    (job.inter / "kept.txt").write_text("kept")
    os.unlink(job.inter / "gone.txt")
    report = _stop_and_compare(handle, job, s3_server)
    assert report.errors == ()
    assert set(remote_files(s3_server, job.bucket, job.prefix)) == {"kept.txt"}


def test_permanent_error_is_reported_once_and_does_not_hang(tmp_path: Path, s3_server: S3Server) -> None:
    job = make_job(tmp_path, s3_server, bucket="no-such-bucket-smtk")
    with captured() as records:
        handle = start_sync(job.env)
        assert handle is not None
        for i in range(30):
            (job.inter / f"f{i}.txt").write_text(str(i))
        report = handle.stop(timeout=120)
    assert report.failed == 30
    assert report.uploaded == 0
    assert not report.fails_job  # not strict: the job's own outcome stands
    errors = [m for m in records.messages(40) if "NoSuchBucket" in m]
    assert len(errors) == 1, records.messages()
    assert "no-such-bucket-smtk" in errors[0]
    assert all("no-such-bucket-smtk" in e for e in report.errors)


def test_strict_mode_marks_the_job_failed(tmp_path: Path, s3_server: S3Server) -> None:
    job = make_job(tmp_path, s3_server, bucket="no-such-bucket-strict", extra_env={"SMTK_SYNC_STRICT": "1"})
    handle = start_sync(job.env)
    assert handle is not None
    (job.inter / "f.txt").write_text("x")
    report = handle.stop(timeout=120)
    assert report.failed == 1
    assert report.fails_job


def test_stop_is_bounded_when_the_server_is_gone(tmp_path: Path) -> None:
    server = S3Server()
    server.start()
    job = make_job(tmp_path, server)
    server.stop()
    handle = start_sync(job.env)
    assert handle is not None
    for i in range(10):
        (job.inter / f"f{i}.txt").write_text(str(i))
    report = handle.stop(timeout=3)
    assert report.timed_out
    assert report.pending_abandoned == 10
    assert "abandoned" in report.summary()


def test_polling_mode_finds_everything(tmp_path: Path, s3_server: S3Server) -> None:
    job = make_job(tmp_path, s3_server, extra_env={"SMTK_SYNC_MODE": "poll", "SMTK_SYNC_POLL_SECONDS": "0.2"})
    handle = start_sync(job.env)
    assert handle is not None
    assert handle.polling
    (job.inter / "a" / "b").mkdir(parents=True)
    (job.inter / "a" / "b" / "c.txt").write_text("polled")
    assert wait_until(lambda: object_exists(s3_server, job.bucket, job.prefix + "a/b/c.txt"))
    tmp = job.inter / "d.tmp"
    tmp.write_text("renamed")
    os.rename(tmp, job.inter / "d.txt")
    _stop_and_compare(handle, job, s3_server)


def test_running_out_of_watches_falls_back_to_scanning(
    tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    import inotify_simple

    real_add_watch = inotify_simple.INotify.add_watch
    job = make_job(tmp_path, s3_server, extra_env={"SMTK_SYNC_POLL_SECONDS": "0.2"})
    root = str(job.inter)

    def add_watch(self, path, mask):  # type: ignore[no-untyped-def]
        # The kernel's answer once fs.inotify.max_user_watches is reached.
        if os.fspath(path) != root:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_add_watch(self, path, mask)

    monkeypatch.setattr(inotify_simple.INotify, "add_watch", add_watch)
    with captured() as records:
        handle = start_sync(job.env)
        assert handle is not None
        for n in range(3):
            (job.inter / f"sub{n}").mkdir()
            (job.inter / f"sub{n}" / "later.txt").write_text(f"found by scanning {n}")
        assert wait_until(lambda: object_exists(s3_server, job.bucket, job.prefix + "sub2/later.txt"))
        assert handle.polling
        _stop_and_compare(handle, job, s3_server)
    assert len([m for m in records.messages(30) if "watch limit" in m]) == 1


DRIVER = textwrap.dedent(
    """
    import json, sys
    from smtk.environment import Environment
    from smtk.log import configure
    from smtk.sync import start_sync
    configure()
    handle = start_sync(Environment())
    print("READY", flush=True)
    sys.stdin.readline()
    report = handle.stop(240)
    print(json.dumps({"failed": report.failed, "abandoned": report.pending_abandoned}), flush=True)
    """
)


def test_queue_overflow_triggers_a_rescan(tmp_path: Path, s3_server: S3Server) -> None:
    max_events = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if max_events > 200_000:
        pytest.skip(f"fs.inotify.max_queued_events={max_events} is too large to overflow quickly")
    job = make_job(tmp_path, s3_server)
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER],
        env={**os.environ, **job.environ},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "READY"
        proc.send_signal(signal.SIGSTOP)  # the watcher cannot read: the kernel queue fills up
        a, b = job.inter / "a.txt", job.inter / "b.txt"
        for i in range(max_events // 2 + 100):
            # Alternate two files: identical consecutive events would be merged by the kernel.
            a.write_text(str(i))
            b.write_text(str(i))
        for i in range(30):
            (job.inter / f"late-{i}.txt").write_text(f"event dropped {i}")
        proc.send_signal(signal.SIGCONT)
        # Only a rescan can find these before the final flush.
        assert wait_until(lambda: object_exists(s3_server, job.bucket, job.prefix + "late-29.txt"))
        assert wait_until(lambda: object_exists(s3_server, job.bucket, job.prefix + "late-0.txt"))
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()
    assert '"failed": 0' in out and '"abandoned": 0' in out, err
    assert "overflowed" in err
    assert remote_digests(s3_server, job.bucket, job.prefix) == local_digests(job.inter)


def test_nothing_to_sync_gives_none(tmp_path: Path, s3_server: S3Server) -> None:
    job = make_job(tmp_path, s3_server, s3_output=False)
    assert start_sync(job.env) is None


def test_auto_mode_leaves_a_preexisting_directory_alone(tmp_path: Path, s3_server: S3Server) -> None:
    job = make_job(tmp_path, s3_server)
    job.inter.mkdir()
    assert start_sync(job.env) is None
    forced = make_job(tmp_path / "on", s3_server, extra_env={"SMTK_SYNC_INTERMEDIATE": "on"})
    forced.inter.mkdir()
    (forced.inter / "already-there.txt").write_text("from before the start")
    handle = start_sync(forced.env)
    assert handle is not None
    _stop_and_compare(handle, forced, s3_server)
    remote = remote_files(s3_server, forced.bucket, forced.prefix)
    assert remote == {"already-there.txt": b"from before the start"}


def test_importing_smtk_sync_loads_no_boto3() -> None:
    code = (
        "import sys, smtk.sync; "
        "print(sorted(m for m in ('boto3', 'botocore', 'inotify_simple') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
