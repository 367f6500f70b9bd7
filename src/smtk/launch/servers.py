"""Running a plan whose command has companions (TensorFlow parameter servers) under one supervisor.

::

    companions (parameter server)  ──start──┐
    the plan's command             ──start──┤  one Supervisor: a stop reaches every child
                                            │
    a companion ends first    ──> its Failure is the job's root cause; the command is
                                  stopped (SIGTERM, SIGKILL after the grace period)
    the command ends          ──> companions stopped (SIGTERM, SIGKILL after 10 s): at once,
                                  or, when the command succeeded and the companion has
                                  ``until_closed``, once nothing accepts connections there

Nothing outlives the job: :meth:`smtk.supervisor.Supervisor.wait` returns only when every
child has ended, and each child's process group and marked descendants are cleaned up.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import socket
import threading
from collections.abc import Callable, Sequence

from smtk import causes
from smtk.failure import Failure
from smtk.launch.plan import Companion, LaunchPlan
from smtk.stop import Stop
from smtk.supervisor import Child, ProcessResult, Supervisor, prefixed

logger = logging.getLogger("smtk")

#: Seconds a companion gets between SIGTERM and SIGKILL once the command has ended.
COMPANION_GRACE = 10.0
#: Seconds between two checks of ``until_closed`` (the toolkit checks every 10 s with curl).
POLL_SECONDS = 1.0
JOB = "job"


def accepts(address: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections at ``address:port`` now."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def run(
    plan: LaunchPlan,
    *,
    stop: Stop,
    grace_period: float = 100.0,
    progress_interval: float = 10.0,
    host: str | None = None,
    code_dir: str | None = None,
    mask: Callable[[Sequence[str]], Sequence[str]] | None = None,
) -> tuple[ProcessResult, Failure | None]:
    """Start ``plan.companions``, then ``plan``'s command, and supervise them to the end.

    Returns the command's result, and the companion's :class:`Failure` when one ended
    while the command was still running (the job's root cause). Raises :class:`OSError`
    only when the command cannot be started (the companions are stopped first).
    """
    supervisor = Supervisor(stop=stop, grace=grace_period)
    companions: dict[str, Companion] = {}
    try:
        for index, companion in enumerate(plan.companions):
            name = f"{companion.name} {index}" if len(plan.companions) > 1 else companion.name
            companions[name] = companion
            supervisor.start(
                name,
                companion.argv,
                env={**os.environ, **companion.env},
                cwd=plan.cwd,
                sink=prefixed(companion.log_prefix),
                progress_interval=progress_interval,
            )
        supervisor.start(
            JOB,
            plan.argv,
            env={**os.environ, **plan.env},
            cwd=plan.cwd,
            sink=prefixed(plan.log_prefix),
            progress_interval=progress_interval,
        )
    except OSError:  # nothing started may outlive the failed start
        supervisor.stop_children(signal.SIGTERM, kill_after=COMPANION_GRACE)
        supervisor.wait()
        raise
    found: list[Failure] = []

    def on_exit(child: Child) -> None:
        job = supervisor.children[JOB]
        if child.name == JOB:
            _after_command(supervisor, companions, child.result(), stop)
        elif job.running and not stop.requested:
            failure = _companion_failure(child, host, code_dir, mask)
            found.append(failure)
            logger.error("%s ended while the training code was running: %s", child.name, failure.cause)
            supervisor.stop_children(signal.SIGTERM, kill_after=grace_period, reason=f"{child.name} failed")

    results = supervisor.wait(on_exit)
    return results[JOB], (found[0] if found else None)


def _after_command(
    supervisor: Supervisor, companions: dict[str, Companion], result: ProcessResult, stop: Stop
) -> None:
    """The command ended: stop the companions now, or once their ``until_closed`` closes."""
    waits = {c.until_closed for c in companions.values() if c.until_closed is not None}
    if result.exit_status != 0 or not waits:
        supervisor.stop_children(signal.SIGTERM, kill_after=COMPANION_GRACE)
        return
    names = ", ".join(f"{address}:{port}" for address, port in sorted(waits))
    logger.info("training code done; the parameter server keeps serving until %s closes", names)

    def wait_then_stop() -> None:
        while not stop.requested and any(c.running for c in supervisor.children.values()):
            if not any(accepts(address, port) for address, port in waits):
                logger.info("%s closed: stopping the parameter server", names)
                break
            stop.wait(POLL_SECONDS)
        supervisor.stop_children(signal.SIGTERM, kill_after=COMPANION_GRACE)

    threading.Thread(target=wait_then_stop, name="smtk-companions", daemon=True).start()


Mask = Callable[[Sequence[str]], Sequence[str]]


def _companion_failure(child: Child, host: str | None, code_dir: str | None, mask: Mask | None) -> Failure:
    result = child.result()
    command = shlex.join(mask(result.argv) if mask is not None else result.argv)
    if result.returncode == 0:
        return Failure(
            cause=f"the {child.name} exited (status 0) while the training code was still running",
            host=host,
            command=command,
            stderr_tail=result.stderr_tail[-20:],
            seconds=None,
        )
    failure = causes.process_failure(
        returncode=result.returncode,
        signum=result.signal,
        stderr_tail=result.stderr_tail,
        stdout_tail=result.stdout_tail,
        code_dir=code_dir,
        what=f"the {child.name}",
        host=host,
        command=command,
    )
    return failure.evolve(extra={**failure.extra, "process": child.name})
