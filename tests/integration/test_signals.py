"""Stopping `train`: SIGTERM/SIGINT forwarding, the grace period, and `train` as PID 1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from smtk.launch.plan import LaunchPlan
from smtk.stop import Stop
from smtk.supervisor import run
from tests.helpers.jobtree import clean_env, make_tree
from tests.helpers.processes import pid_alive

TRAIN = str(Path(sys.executable).parent / "train")

TRAPPING = """
import os, signal, sys, time
def on_term(signum, frame):
    with open(os.path.join(os.environ["SM_MODEL_DIR"], "checkpoint.txt"), "w") as f:
        f.write(f"saved on {signal.Signals(signum).name}")
    print("checkpointed", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGINT, on_term)
child = os.fork()
if child == 0:  # a worker in the same process group must be stopped too
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    time.sleep(600)
    os._exit(0)
with open(os.path.join(os.environ["SM_MODEL_DIR"], "worker.pid"), "w") as f:
    f.write(str(child))
print("ready", flush=True)
time.sleep(600)
"""

STUBBORN = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(600)
"""


def start_train(root: Path, argv: list[str] | None = None, **extra: str) -> subprocess.Popen[str]:
    env = clean_env(root, SAGEMAKER_PROGRAM="train.py", **extra)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.Popen(
        argv or [TRAIN], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_line(proc: subprocess.Popen[str], text: str, timeout: float = 60) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if text in line:
            return
    raise AssertionError(f"{text!r} never printed")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_reaches_the_whole_group(tmp_path: Path, signum: int) -> None:
    root = make_tree(tmp_path, code={"train.py": TRAPPING})
    proc = start_train(root)
    wait_for_line(proc, "ready")
    worker = int((root / "model" / "worker.pid").read_text())
    proc.send_signal(signum)
    proc.wait(timeout=60)
    assert proc.returncode == 128 + signum
    assert (root / "model" / "checkpoint.txt").read_text() == f"saved on {signal.Signals(signum).name}"
    failure = (root / "output" / "failure").read_text()
    assert failure.startswith(f"Stopped: train received {signal.Signals(signum).name}")
    record = json.loads((root / "output" / "failure.json").read_text())
    assert record["category"] == "stopped"
    assert record["retryable"] is True
    deadline = time.monotonic() + 10
    while pid_alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(worker), "the worker process outlived the job"


def test_grace_period_ends_with_sigkill(tmp_path: Path) -> None:
    root = make_tree(tmp_path, code={"train.py": STUBBORN})
    proc = start_train(root, SMTK_GRACE_PERIOD="1")
    wait_for_line(proc, "ready")
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == 143
    failure = (root / "output" / "failure").read_text()
    assert "killed with SIGKILL" in failure.splitlines()[0]


needs_unshare = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare for a PID namespace"
)

ZOMBIE_MAKER = """
import os, signal, sys, time
pid = os.fork()
if pid == 0:
    if os.fork() == 0:      # grandchild: orphaned, reparented to PID 1 (train), then exits
        time.sleep(0.3)
        os._exit(0)
    os._exit(0)
os.waitpid(pid, 0)
time.sleep(1.5)
zombies = []
for entry in os.listdir("/proc"):
    if entry.isdigit():
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z":
            zombies.append(entry)
print(f"zombies={len(zombies)} mypid={os.getpid()}", flush=True)
def on_term(signum, frame):
    print("got SIGTERM in PID namespace", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
time.sleep(600)
"""


@needs_unshare
def test_train_as_pid_1_reaps_zombies_and_forwards_sigterm(tmp_path: Path) -> None:
    root = make_tree(tmp_path, code={"train.py": ZOMBIE_MAKER})
    proc = start_train(root, ["unshare", "--pid", "--fork", "--mount-proc", TRAIN])
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "ready" in line or not line:
            break
    assert any("zombies=0" in line for line in lines), lines
    # unshare's child is train, PID 1 in the namespace: signal it directly.
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(children) == 1
    os.kill(int(children[0]), signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert "got SIGTERM in PID namespace" in out
    assert proc.returncode == 143
    assert (root / "output" / "failure").read_text().startswith("Stopped: train received SIGTERM")


def test_a_stop_that_kills_sooner_says_so_and_is_kept(
    tmp_path: Path, smtk_log: pytest.LogCaptureFixture
) -> None:
    # A peer's failure stops this host's run with SIGKILL after SMTK_PEER_ABORT_GRACE, not
    # after the (longer) grace period: the supervisor must keep that deadline and log it.
    ready = tmp_path / "ready"
    program = STUBBORN.replace('print("ready", flush=True)', f"open({str(ready)!r}, 'w').close()")
    plan = LaunchPlan(kind="process", argv=(sys.executable, "-c", program), cwd=str(tmp_path))
    stop = Stop()

    def stop_when_ready() -> None:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.request(signal.SIGTERM, kill_after=(1.0, "SMTK_PEER_ABORT_GRACE"))

    threading.Thread(target=stop_when_ready, daemon=True).start()
    result = run(plan, stop=stop, grace_period=60)
    assert result.killed_after_grace
    assert result.signal == signal.SIGKILL
    assert result.seconds < 30
    assert "SIGKILL in 1 s if it has not exited (SMTK_PEER_ABORT_GRACE)" in smtk_log.text


SLOW_SAVER = """
import os, signal, sys, time
def on_term(signum, frame):
    time.sleep(1.5)  # saving a checkpoint
    with open(os.path.join(os.environ["SM_MODEL_DIR"], "checkpoint.txt"), "w") as f:
        f.write("saved")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize(
    ("script", "second_after", "saved", "killed"),
    [
        # the same stop from two senders (a scheduler and a launcher) within the window
        (SLOW_SAVER, 0.05, True, False),
        (SLOW_SAVER, 0.5, True, False),
        # a second SIGTERM later is an escalation: SIGKILL now, not after the 60 s grace period
        (STUBBORN, 2.0, False, True),
    ],
)
def test_a_second_sigterm_escalates_only_after_the_duplicate_window(
    tmp_path: Path, script: str, second_after: float, saved: bool, killed: bool
) -> None:
    root = make_tree(tmp_path, code={"train.py": script})
    proc = start_train(root, SMTK_GRACE_PERIOD="60")
    wait_for_line(proc, "ready")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    time.sleep(second_after)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == 143
    assert time.monotonic() - started < 30
    assert (root / "model" / "checkpoint.txt").exists() == saved
    first_line = (root / "output" / "failure").read_text().splitlines()[0]
    assert ("killed with SIGKILL" in first_line) == killed, first_line
