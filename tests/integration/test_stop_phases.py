"""A stop at every phase of ``train`` ends the job with 128 + signal and names what it interrupted.

Each case runs a real ``train`` whose chosen phase cannot end on its own (a peer that
never comes, an S3 endpoint that accepts connections and never answers, a build that
ignores SIGTERM, user code that sleeps), sends SIGTERM once the phase has begun, and
checks the documented outcome: exit status 143, ``output/failure`` starting with
``Stopped: train received SIGTERM`` and naming the phase, and an end within the bound
the user guide gives (a few seconds before the user's code runs; here a generous
:data:`BOUND` so a loaded machine cannot make the test flaky).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers.jobtree import clean_env, make_tree
from tests.helpers.processes import hanging_setup_py, pid_alive
from tests.helpers.s3server import CREDENTIALS

TRAIN = str(Path(sys.executable).parent / "train")
#: Seconds from the SIGTERM to train's exit that no phase may exceed here.
BOUND = 30.0


@dataclass
class Silent:
    """A TCP server that accepts connections and never answers (an S3 endpoint that hangs)."""

    sock: socket.socket = field(default_factory=socket.socket)
    connected: threading.Event = field(default_factory=threading.Event)
    held: list[socket.socket] = field(default_factory=list)

    def start(self) -> Silent:
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            self.connected.set()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    server = Silent().start()
    yield server
    server.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(root: Path, **extra: str) -> subprocess.Popen[str]:
    env = clean_env(root, **extra)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.Popen([TRAIN], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class Lines:
    """Both streams of a running ``train``, read on threads, searchable as they arrive."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.text: list[str] = []
        self.changed = threading.Condition()
        for stream in (proc.stdout, proc.stderr):
            threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self.changed:
                self.text.append(line)
                self.changed.notify_all()

    def wait_for(self, words: str, timeout: float = 120) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: any(words in line for line in self.text), timeout):
                raise AssertionError(f"{words!r} never printed:\n{''.join(self.text)[-4000:]}")


def stop_and_check(proc: subprocess.Popen[str], root: Path, lines: Lines, phase: str) -> str:
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=BOUND + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    took = time.monotonic() - sent
    output = "".join(lines.text)
    assert proc.returncode == 143, output[-4000:]
    assert took < BOUND, f"train took {took:.1f} s to stop"
    failure = (root / "output" / "failure").read_text()
    first = failure.splitlines()[0]
    assert first.startswith("Stopped: train received SIGTERM"), failure
    assert phase in first, failure
    record = json.loads((root / "output" / "failure.json").read_text())
    assert (record["category"], record["signal_name"], record["retryable"]) == ("stopped", "SIGTERM", True)
    assert not (root / "output" / "success").exists()
    return first


def test_during_start_up_once_the_handler_is_installed(tmp_path: Path) -> None:
    """The stop is caught from train's first instruction: as soon as the process catches
    SIGTERM (its SigCgt mask says so), a SIGTERM ends the job as stopped."""
    root = make_tree(tmp_path, code={"train.py": "import time\ntime.sleep(600)\n"})
    proc = start(root, SAGEMAKER_PROGRAM="train.py")
    lines = Lines(proc)
    deadline = time.monotonic() + 60
    while not _catches(proc.pid, signal.SIGTERM):
        assert time.monotonic() < deadline and proc.poll() is None, "train never caught SIGTERM"
        time.sleep(0.001)
    stop_and_check(proc, root, lines, "SIGTERM")


def _catches(pid: int, signum: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
    return False


@pytest.mark.parametrize("delay", [0.0, 0.01, 0.03, 0.06, 0.1, 0.2, 0.4])
def test_a_stop_at_any_moment_of_the_start_has_a_true_outcome(tmp_path: Path, delay: float) -> None:
    """Whenever it arrives: exit 143 with a failure file, or (only before the interpreter has
    run train's first instruction) death by SIGTERM with nothing written. Never a hang,
    never exit 0, never a traceback."""
    root = make_tree(tmp_path, code={"train.py": "import time\ntime.sleep(600)\n"})
    proc = start(root, SAGEMAKER_PROGRAM="train.py")
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    try:
        _, stderr = proc.communicate(timeout=BOUND + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (143, -signal.SIGTERM), stderr
    written = (root / "output" / "failure").exists()
    assert written == (proc.returncode == 143), stderr
    assert "Traceback" not in stderr
    if written:
        assert (root / "output" / "failure").read_text().startswith("Stopped: train received SIGTERM")


def _torchrun_tree(base: Path, host: str, hosts: list[str], **code: str) -> Path:
    return make_tree(
        base / host,
        hyperparameters={"sagemaker_program": "train.py", "sagemaker_torch_distributed_enabled": True},
        resourceconfig={"current_host": host, "hosts": hosts, "network_interface_name": "lo"},
        code=code or {"train.py": "print('never runs')\n"},
    )


def _two_hosts(port: int) -> dict[str, str]:
    return {
        "SMTK_HOST_ADDRESSES": "algo-1=127.0.0.1,algo-2=127.0.0.2",
        "SMTK_STATUS_PORT": str(port),
        "SMTK_MASTER_PORT": str(_free_port()),
    }


def test_while_the_master_waits_for_a_peer_that_never_comes(tmp_path: Path) -> None:
    root = _torchrun_tree(tmp_path, "algo-1", ["algo-1", "algo-2"])
    proc = start(root, **_two_hosts(_free_port()))
    lines = Lines(proc)
    lines.wait_for("waiting up to")
    first = stop_and_check(proc, root, lines, "while waiting for the other hosts")
    assert "algo-2" in first


def test_while_a_member_waits_for_a_master_that_never_comes(tmp_path: Path) -> None:
    root = _torchrun_tree(tmp_path, "algo-2", ["algo-1", "algo-2"])
    proc = start(root, **_two_hosts(_free_port()))
    lines = Lines(proc)
    lines.wait_for("waiting up to")
    stop_and_check(proc, root, lines, "while waiting for the other hosts (algo-1)")


def test_while_the_code_downloads_from_an_endpoint_that_hangs(tmp_path: Path, silent: Silent) -> None:
    root = make_tree(
        tmp_path, hyperparameters={"sagemaker_submit_directory": "s3://bucket/code/sourcedir.tar.gz"}
    )
    proc = start(root, SAGEMAKER_PROGRAM="train.py", S3_ENDPOINT_URL=silent.endpoint, **CREDENTIALS)
    lines = Lines(proc)
    assert silent.connected.wait(120), "train never asked the endpoint for the code"
    stop_and_check(proc, root, lines, "while fetching the code")


def test_while_checkpoints_are_restored_from_an_endpoint_that_hangs(tmp_path: Path, silent: Silent) -> None:
    root = make_tree(
        tmp_path,
        checkpointconfig={"S3Uri": "s3://bucket/checkpoints", "LocalPath": str(tmp_path / "ckpt")},
        code={"train.py": "print('never runs')\n"},
    )
    proc = start(
        root,
        SAGEMAKER_PROGRAM="train.py",
        SMTK_SYNC_CHECKPOINTS="1",
        S3_ENDPOINT_URL=silent.endpoint,
        **CREDENTIALS,
    )
    lines = Lines(proc)
    assert silent.connected.wait(120), "train never asked the endpoint for the checkpoints"
    stop_and_check(proc, root, lines, "while restoring checkpoints from S3")


def test_while_pip_builds_a_package_that_ignores_sigterm(tmp_path: Path) -> None:
    pid_file = tmp_path / "build.pid"
    root = make_tree(
        tmp_path / "job",
        code={
            "train.py": "print('never runs')\n",
            "requirements.txt": "./slowpkg\n",
            "slowpkg/setup.py": hanging_setup_py(pid_file),
        },
    )
    proc = start(root, SAGEMAKER_PROGRAM="train.py", SMTK_PIP_ARGS="--no-index --no-build-isolation")
    lines = Lines(proc)
    deadline = time.monotonic() + 120
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.monotonic() < deadline and proc.poll() is None, "the build never started"
        time.sleep(0.05)
    build = int(pid_file.read_text())
    try:
        first = stop_and_check(proc, root, lines, "while pip was installing the job's dependencies")
        assert first == "Stopped: train received SIGTERM while pip was installing the job's dependencies"
        deadline = time.monotonic() + 10
        while pid_alive(build) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(build), "the build that ignored SIGTERM outlived the job"
    finally:
        if pid_alive(build):
            os.kill(build, signal.SIGKILL)


def test_while_the_training_code_runs(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path, code={"train.py": "import time\nprint('ready', flush=True)\ntime.sleep(600)\n"}
    )
    proc = start(root, SAGEMAKER_PROGRAM="train.py")
    lines = Lines(proc)
    lines.wait_for("ready")
    first = stop_and_check(proc, root, lines, "it was forwarded to the job's processes")
    assert "ended by SIGTERM" in first


def test_while_the_output_sync_flushes_to_an_endpoint_that_hangs(tmp_path: Path, silent: Silent) -> None:
    script = (
        "import os\n"
        "with open(os.path.join(os.environ['SM_OUTPUT_INTERMEDIATE_DIR'], 'metrics.txt'), 'w') as f:\n"
        "    f.write('loss=1')\n"
    )
    root = make_tree(
        tmp_path, hyperparameters={"sagemaker_s3_output": "s3://bucket/out"}, code={"train.py": script}
    )
    proc = start(
        root,
        SAGEMAKER_PROGRAM="train.py",
        S3_ENDPOINT_URL=silent.endpoint,
        SMTK_SYNC_FLUSH_SECONDS="600",
        # A stop during the flush leaves it what is left of the platform's window (minus 5 s).
        SMTK_STOP_WINDOW="12",
        SMTK_SYNC_DEBOUNCE_MS="0",
        **CREDENTIALS,
    )
    lines = Lines(proc)
    lines.wait_for("flushing the output sync to S3")
    assert silent.connected.wait(120)
    first = stop_and_check(proc, root, lines, "while flushing the output sync to S3")
    assert "the training code had succeeded" in first


def test_after_the_run_while_the_master_waits_to_tell_a_late_host(tmp_path: Path) -> None:
    """The last wait before the report: a failed master keeps its outcome for a member that
    has not connected (SMTK_OUTCOME_LINGER); a stop ends that wait and the job as stopped."""
    root = _torchrun_tree(tmp_path, "algo-1", ["algo-1", "algo-2"], **{"other.py": ""})
    proc = start(root, SMTK_OUTCOME_LINGER="600", **_two_hosts(_free_port()))
    lines = Lines(proc)
    lines.wait_for("to learn this host's outcome")
    first = stop_and_check(proc, root, lines, "while waiting for the other hosts to learn the outcome")
    assert "the job had already failed: EntryPointError" in first
