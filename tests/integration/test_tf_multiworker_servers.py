"""A parameter server beside the training script, under one supervisor (smtk.launch.servers).

Real processes stand in for the server and the script (plain Python: the supervision is
the same whatever the server runs): it starts first, a stop reaches it, its failure is
the job's root cause, it never outlives the job, and on a non-master host it keeps
serving until the master's worker port closes.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from smtk.launch import servers
from smtk.launch.plan import Companion, LaunchPlan
from smtk.stop import Stop

PY = sys.executable


def _server(pidfile: Path, code: str = "import time; time.sleep(120)", **kwargs: object) -> Companion:
    script = f"import os; open({str(pidfile)!r}, 'w').write(str(os.getpid()))\n{code}"
    return Companion(name="parameter server", argv=(PY, "-c", script), log_prefix="ps: ", **kwargs)  # type: ignore[arg-type]


def _plan(code: str, *companions: Companion) -> LaunchPlan:
    return LaunchPlan(kind="process", argv=(PY, "-c", code), cwd="/", companions=companions)


def _after_server(pidfile: Path) -> str:
    """Python code that waits until the server has started (written its pid file)."""
    return f"import os, time\nwhile not os.path.exists({str(pidfile)!r}): time.sleep(0.05)"


def _alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


def _wait_for(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_script_succeeds_then_the_server_is_stopped(tmp_path: Path) -> None:
    pidfile = tmp_path / "ps.pid"
    wait = f"import os, time\nwhile not os.path.exists({str(pidfile)!r}): time.sleep(0.05)\nprint('trained')"
    started = time.monotonic()
    result, failure = servers.run(_plan(wait, _server(pidfile)), stop=Stop(), grace_period=5)
    assert result.exit_status == 0 and failure is None
    assert not _alive(pidfile)  # nothing outlives the job
    assert time.monotonic() - started < servers.COMPANION_GRACE + 10


def test_server_failure_is_the_root_cause_and_stops_the_script(tmp_path: Path) -> None:
    pidfile = tmp_path / "ps.pid"
    broken = "raise ValueError('cannot bind 0.0.0.0:2223')"
    plan = _plan("import time; time.sleep(120)", _server(pidfile, broken))
    started = time.monotonic()
    result, failure = servers.run(plan, stop=Stop(), grace_period=5, host="algo-2", code_dir=str(tmp_path))
    assert time.monotonic() - started < 30
    assert failure is not None
    assert failure.cause.startswith("ValueError: cannot bind 0.0.0.0:2223"), failure.cause
    assert failure.host == "algo-2" and failure.exit_status == 1
    assert failure.extra["process"] == "parameter server"
    assert "ps.pid" in failure.command
    assert result.signal == signal.SIGTERM  # the script was stopped because of it


def test_server_exiting_cleanly_early_is_still_a_failure(tmp_path: Path) -> None:
    pidfile = tmp_path / "ps.pid"
    plan = _plan("import time; time.sleep(120)", _server(pidfile, "pass"))
    result, failure = servers.run(plan, stop=Stop(), grace_period=5)
    assert (
        failure is not None and "exited (status 0) while the training code was still running" in failure.cause
    )
    assert result.signal == signal.SIGTERM


def test_script_failure_stays_the_cause_and_the_server_stops(tmp_path: Path) -> None:
    pidfile = tmp_path / "ps.pid"
    until = ("127.0.0.1", 9)  # ignored: the script failed, nothing is waited for
    code = (
        f"import os, time\nwhile not os.path.exists({str(pidfile)!r}): time.sleep(0.05)\nraise SystemExit(3)"
    )
    result, failure = servers.run(
        _plan(code, _server(pidfile, until_closed=until)), stop=Stop(), grace_period=5
    )
    assert result.returncode == 3 and failure is None
    assert not _alive(pidfile)


def test_stop_reaches_the_server_and_the_script(tmp_path: Path) -> None:
    pidfile = tmp_path / "ps.pid"
    stop = Stop()
    ignore_term = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
    plan = _plan("import time; time.sleep(120)", _server(pidfile, ignore_term))
    threading.Thread(target=lambda: (_wait_for(pidfile), stop.request(signal.SIGTERM)), daemon=True).start()
    started = time.monotonic()
    result, failure = servers.run(plan, stop=stop, grace_period=2)
    assert result.stopped_by == signal.SIGTERM and failure is None
    assert not _alive(pidfile)  # it ignored SIGTERM: killed after the grace period
    assert time.monotonic() - started < 20


@pytest.mark.slow
def test_worker_host_serves_until_the_masters_worker_port_closes(tmp_path: Path) -> None:
    pidfile = tmp_path / "ps.pid"
    master = socket.create_server(("127.0.0.1", 0))  # the master's worker, still training
    port = master.getsockname()[1]
    done = tmp_path / "done"
    code = f"{_after_server(pidfile)}\nopen({str(done)!r}, 'w').write('x')"
    plan = _plan(code, _server(pidfile, until_closed=("127.0.0.1", port)))
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(servers.run(plan, stop=Stop(), grace_period=5)))
    thread.start()
    try:
        _wait_for(done)
        time.sleep(2.5)  # the script is done; the master is not
        assert _alive(pidfile), "the parameter server stopped while the master was still training"
        assert thread.is_alive()
    finally:
        master.close()
    thread.join(30)
    assert not thread.is_alive()
    result, failure = outcome[0]  # type: ignore[misc]
    assert result.exit_status == 0 and failure is None
    assert not _alive(pidfile)


@pytest.mark.parametrize("address", ["127.0.0.1"])
def test_accepts(address: str) -> None:
    with socket.create_server((address, 0)) as listener:
        port = listener.getsockname()[1]
        assert servers.accepts(address, port)
    assert not servers.accepts(address, port)


def test_script_that_cannot_start_leaves_no_server(tmp_path: Path) -> None:
    pidfile = tmp_path / "ps.pid"
    plan = LaunchPlan(
        kind="process", argv=(str(tmp_path / "missing"),), cwd="/", companions=(_server(pidfile),)
    )
    with pytest.raises(OSError):
        servers.run(plan, stop=Stop(), grace_period=5)
    assert not pidfile.exists() or not _alive(pidfile)
