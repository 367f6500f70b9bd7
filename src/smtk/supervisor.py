"""The one supervisor: every child smtk starts and waits for runs through it.

User code (a plain process, torchrun, mpirun, the rank wrapper's child), pip, each
host's ``train`` under ``smtk local`` and the container engine all get the same care::

    Supervisor(stop, grace)                      each child: its own session and process group
    ───────────────────────                      ─────────────────────────────────────────────
    stop (SIGTERM/SIGINT, max runtime) ──signal(same signal)──> every running child's group
                 │ one deadline: grace period (or the stop's shorter kill_after), then SIGKILL
                 │ a second identical signal: SIGKILL at once
    stdout/stderr <──lines── one pump thread per child (lines whole, masked by the sink)
    exit          <──status── a reaper thread per child (or waitpid(-1) as PID 1)
    the end       ──> stragglers in the child's group: SIGTERM, SIGKILL after 5 s;
                      descendants that left the group (setsid daemons): the same

- Commands are argv lists, never a shell; ``stdin`` is ``/dev/null``; the child's
  environment is the one given (ours is never modified).
- Signal handlers never act (see :mod:`smtk.stop`); this loop does, woken by the
  stop's callback, a child's exit or the next deadline.
- **Nothing outlives the job.** The supervisor makes this process a *child subreaper*
  (``PR_SET_CHILD_SUBREAPER``), so a descendant whose parent dies is re-parented here
  instead of to init. Every child carries ``SMTK_SUPERVISED=<id>`` in its environment
  (inherited by what it starts); when a child ends, every descendant of this process
  carrying that id (or one below it) is stopped, found with ``psutil``.
- As PID 1 it also reaps orphaned zombies (``waitpid(-1)``), keeping the exit status
  of its own children.

::

    supervisor = Supervisor(stop=stop, grace=100.0)
    supervisor.start("job", ["python", "train.py"], env=env, cwd=code_dir)
    results = supervisor.wait()          # {"job": ProcessResult(...)}
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from smtk import log
from smtk.launch.plan import LaunchPlan
from smtk.lines import LineSink, OutputPump
from smtk.settings import SUPERVISED, Settings, supervised_mark
from smtk.stop import Stop, signal_name

logger = logging.getLogger("smtk")

#: Seconds stragglers of a finished process group get between SIGTERM and SIGKILL.
STRAGGLER_GRACE = 5.0
#: Seconds the pump may keep reading after a child exited (a pipe held by a stray process).
DRAIN_SECONDS = 5.0
#: Seconds after a stop in which the same signal again is the same stop, not an escalation:
#: one stop often arrives from several senders at once (a scheduler such as Slurm signals
#: every process of the job, the launcher signals its ranks, ``train`` its process group).
DUPLICATE_WINDOW = 1.0
#: The variable that marks a supervised child and everything it starts.
MARK = SUPERVISED
_PR_SET_CHILD_SUBREAPER = 36

_subreaper_lock = threading.Lock()
_subreaper_done = False
#: PIDs a supervisor's reaper is waiting for (never reaped by the orphan sweep).
_waiting: set[int] = set()
_waiting_lock = threading.Lock()


@dataclass(frozen=True)
class ProcessResult:
    """How one supervised child ended."""

    pid: int
    #: The exit code when it exited, else ``None``.
    returncode: int | None
    #: The signal that killed it, else ``None``.
    signal: int | None
    #: The stop signal that was forwarded to it, if it was stopped.
    stopped_by: int | None
    #: Whether the grace period ran out and it was killed with SIGKILL.
    killed_after_grace: bool
    #: Whether it was stopped because it exceeded its maximum runtime.
    timed_out: bool
    seconds: float
    stderr_tail: tuple[str, ...] = ()
    stdout_tail: tuple[str, ...] = ()
    argv: tuple[str, ...] = field(default=(), repr=False)

    @property
    def exit_status(self) -> int:
        """Shell convention: the code, or 128 + signal."""
        if self.signal is not None:
            return 128 + self.signal
        return self.returncode if self.returncode is not None else 1


def signal_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to process group ``pgid``; False when the group is gone."""
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def become_subreaper() -> None:
    """Make orphaned descendants re-parent to this process (Linux; once per process)."""
    global _subreaper_done  # noqa: PLW0603 (a property of the process, set once)
    with _subreaper_lock:
        if _subreaper_done or not sys.platform.startswith("linux"):
            return
        _subreaper_done = True
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
                logger.debug("PR_SET_CHILD_SUBREAPER failed: errno %d", ctypes.get_errno())
        except (OSError, AttributeError) as exc:
            logger.debug("PR_SET_CHILD_SUBREAPER unavailable: %s", exc)


def _mark_of(environ: Mapping[str, str]) -> str:
    """A new mark below the one this process carries (so a parent's sweep finds our children)."""
    parent = supervised_mark(environ)
    own = os.urandom(6).hex()
    return f"{parent}/{own}" if parent else own


def has_children() -> bool:
    """Whether this process has any child (alive or zombie), from ``/proc`` (Linux 3.5+).

    ``True`` when it cannot tell, so that the caller looks properly.
    """
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return True
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/children", "rb") as handle:
                if handle.read(1):
                    return True
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        except OSError:
            return True
    return False


def sweep(mark: str, *, grace: float = STRAGGLER_GRACE, exclude: Sequence[int] = ()) -> int:
    """Stop every descendant of this process carrying ``mark`` (or one below it).

    SIGTERM, then SIGKILL after ``grace`` seconds; reaps what it killed. Returns how
    many processes it found.
    """
    if not has_children():
        return 0  # the usual case: nothing left, and no need to load psutil to learn it
    import psutil  # declared dependency; imported only when there is something to look at

    me = psutil.Process()
    try:
        descendants = me.children(recursive=True)
    except psutil.Error:
        return 0
    found: list[psutil.Process] = []
    for proc in descendants:
        if proc.pid in exclude:
            continue
        try:
            value = supervised_mark(proc.environ())
        except (psutil.Error, OSError):
            continue
        if value == mark or value.startswith(mark + "/"):
            found.append(proc)
    if not found:
        return 0
    logger.info(
        "stopping %d process(es) the job left running outside its process group: %s",
        len(found),
        ", ".join(str(p.pid) for p in found[:10]) + (", ..." if len(found) > 10 else ""),
    )
    for proc in found:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(found, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace)
    return len(found)


class Child:
    """One supervised process (see :class:`Supervisor.start`)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str | None,
        sink: LineSink,
        merge_stderr: bool,
        tail_lines: int,
        progress_interval: float,
        signaller: Callable[[int], None] | None,
    ) -> None:
        self.name = name
        self.argv = tuple(argv)
        self.mark = _mark_of(env)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env={**env, MARK: self.mark},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
        self.pid = self.proc.pid
        with _waiting_lock:
            _waiting.add(self.pid)
        self.pgid = self.proc.pid  # start_new_session: it leads its own process group
        assert self.proc.stdout is not None
        streams = {self.proc.stdout.fileno(): "stdout"}
        if self.proc.stderr is not None:
            streams[self.proc.stderr.fileno()] = "stderr"
        self.pump = OutputPump(streams, sink, tail_lines=tail_lines, progress_interval=progress_interval)
        self.pump.start()
        self._signaller = signaller
        self.status: int | None = None
        self.ended_at: float | None = None
        self.stopped_by: int | None = None
        self.killed = False
        self.timed_out = False

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the child (its whole process group, unless it has a signaller)."""
        if self._signaller is not None:
            self._signaller(signum)
        else:
            signal_group(self.pgid, signum)

    @property
    def running(self) -> bool:
        return self.status is None

    @property
    def has_signaller(self) -> bool:
        return self._signaller is not None

    def result(self) -> ProcessResult:
        status = self.status if self.status is not None else 0
        returncode: int | None = None
        killed_by: int | None = None
        if os.WIFSIGNALED(status):
            killed_by = os.WTERMSIG(status)
        else:
            returncode = os.WEXITSTATUS(status)
        tails = self.pump.tails
        return ProcessResult(
            pid=self.pid,
            returncode=returncode,
            signal=killed_by,
            stopped_by=self.stopped_by,
            killed_after_grace=self.killed,
            timed_out=self.timed_out,
            seconds=(self.ended_at or time.monotonic()) - self.started,
            stderr_tail=tuple(tails.get("stderr", ())) if "stderr" in tails else tuple(tails["stdout"]),
            stdout_tail=tuple(tails["stdout"]),
            argv=self.argv,
        )

    def close(self) -> None:
        """After the exit: stop stragglers, drain the output, close the pipes."""
        _clean_up_group(self.pgid)
        sweep(self.mark)
        self.pump.finish(drain_seconds=DRAIN_SECONDS)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


class Supervisor:
    """Starts children and supervises them to the end (see the module docstring)."""

    def __init__(
        self,
        *,
        stop: Stop | None = None,
        grace: float = 100.0,
        grace_setting: str = "SMTK_GRACE_PERIOD",
        max_runtime: float | None = None,
    ) -> None:
        self.stop = stop or Stop()
        self.grace = grace
        self.grace_setting = grace_setting
        self.max_runtime = max_runtime
        self.children: dict[str, Child] = {}
        self._changed = threading.Event()
        self._reap_all = os.getpid() == 1 or Settings.from_environ(os.environ).reap_zombies
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._forwarded = 0
        self._stopped_by: int | None = None
        self._stopped_at = 0.0
        self._kill_at: float | None = None
        self._timed_out = False
        self._reaper: threading.Thread | None = None
        self._timers: list[tuple[float, Callable[[], None]]] = []

    # -- starting ---------------------------------------------------------------------------------

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        sink: LineSink,
        merge_stderr: bool = False,
        tail_lines: int = 200,
        progress_interval: float = 10.0,
        signaller: Callable[[int], None] | None = None,
    ) -> Child:
        """Start ``argv`` in its own session; its lines go to ``sink(stream, line)``.

        ``signaller`` replaces ``killpg`` for forwarding (the container engine's ``kill``).
        Raises :class:`OSError` when the command cannot be started.
        """
        become_subreaper()
        child = Child(
            name,
            argv,
            env=dict(os.environ if env is None else env),
            cwd=cwd,
            sink=sink,
            merge_stderr=merge_stderr,
            tail_lines=tail_lines,
            progress_interval=progress_interval,
            signaller=signaller,
        )
        with self._lock:
            self.children[name] = child
        if self._reap_all:
            if self._reaper is None:
                self._reaper = threading.Thread(target=self._reap_any, name="smtk-reaper", daemon=True)
                self._reaper.start()
        else:
            threading.Thread(target=self._reap_one, args=(child,), name="smtk-reaper", daemon=True).start()
        if self._stopped_by is not None:
            child.stopped_by = self._stopped_by
            child.signal(self._stopped_by)  # started during a stop: it stops at once
        return child

    def _reap_one(self, child: Child) -> None:
        while True:
            try:
                _, status = os.waitpid(child.pid, 0)
            except ChildProcessError:
                status = 0  # reaped elsewhere (cannot happen unless the caller waits too)
            except InterruptedError:
                continue
            break
        self._ended(child, status)

    def _reap_any(self) -> None:
        while True:
            with self._lock:
                waiting = [c for c in self.children.values() if c.running]
            if not waiting:
                return
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                for child in waiting:
                    self._ended(child, 0)
                return
            except InterruptedError:
                continue
            for child in waiting:
                if child.pid == pid:
                    self._ended(child, status)

    def _ended(self, child: Child, status: int) -> None:
        child.ended_at = time.monotonic()
        child.status = status
        with _waiting_lock:
            _waiting.discard(child.pid)
        self._changed.set()

    # -- stopping ---------------------------------------------------------------------------------

    def stop_children(self, signum: int, *, kill_after: float | None = None, reason: str = "") -> None:
        """Send ``signum`` to every running child now; SIGKILL after ``kill_after`` seconds
        (default: leave the deadline as it is). For policies such as "a host failed"."""
        with self._lock:
            running = [c for c in self.children.values() if c.running]
        if reason:
            logger.warning("%s: sending %s to %d process(es)", reason, signal_name(signum), len(running))
        for child in running:
            child.signal(signum)
        if kill_after is not None:
            deadline = time.monotonic() + kill_after
            self._kill_at = deadline if self._kill_at is None else min(self._kill_at, deadline)
        self._changed.set()

    def after(self, seconds: float, action: Callable[[], None]) -> None:
        """Run ``action`` on the supervising thread ``seconds`` from now (if still waiting)."""
        with self._lock:
            self._timers.append((time.monotonic() + seconds, action))
        self._changed.set()

    def _run_timers(self, now: float) -> None:
        with self._lock:
            due = [action for when, action in self._timers if when <= now]
            self._timers = [(when, action) for when, action in self._timers if when > now]
        for action in due:
            action()

    def _forward_stops(self, now: float) -> None:
        received = self.stop.received
        for signum in received[self._forwarded :]:
            with self._lock:
                running = [c for c in self.children.values() if c.running]
            if self._stopped_by is None:
                self._stopped_by = signum
                self._stopped_at = now
                wait, setting = self.grace, self.grace_setting
                if self.stop.kill_after is not None and self.stop.kill_after[0] < wait:
                    wait, setting = self.stop.kill_after
                self._kill_at = now + wait
                if running:
                    logger.warning(
                        "received %s: forwarding it to %s; SIGKILL in %.0f s if it has not exited (%s)",
                        signal_name(signum),
                        _describe(running),
                        wait,
                        setting,
                    )
                for child in running:
                    child.stopped_by = signum
                    child.timed_out = self._timed_out
                    child.signal(signum)
            elif signum == self._stopped_by and now - self._stopped_at < DUPLICATE_WINDOW:
                logger.info("received %s again from another sender: the same stop", signal_name(signum))
            elif signum == self._stopped_by:
                if running:
                    logger.warning("received %s again: killing the job now", signal_name(signum))
                self._kill_at = now
            else:
                for child in running:
                    child.signal(signum)
        self._forwarded = len(received)

    # -- waiting ----------------------------------------------------------------------------------

    def wait(self, on_exit: Callable[[Child], None] | None = None) -> dict[str, ProcessResult]:
        """Supervise every started child until all have ended; their results by name.

        ``on_exit(child)`` runs on this thread as each child ends (a policy may call
        :meth:`stop_children`). Never raises for the children's failures.
        """
        remove = self.stop.on_stop(lambda _signum: self._changed.set())
        closed: set[str] = set()
        try:
            while True:
                now = time.monotonic()
                if self._runtime_over(now):
                    self._timed_out = True
                    logger.warning(
                        "maximum runtime of %.0f s reached: stopping the job (SIGTERM)", self.max_runtime
                    )
                    self.stop.request(signal.SIGTERM)
                if len(self.stop.received) > self._forwarded:
                    self._forward_stops(now)
                self._run_timers(now)
                if self._kill_at is not None and now >= self._kill_at:
                    self._kill_running()
                with self._lock:
                    children = list(self.children.values())
                for child in children:
                    if not child.running and child.name not in closed:
                        closed.add(child.name)
                        if on_exit is not None:
                            on_exit(child)
                if all(not c.running for c in children):
                    break
                self._changed.wait(self._next_wake(now))
                self._changed.clear()
        finally:
            remove()
            with self._lock:
                leftovers = [c for c in self.children.values() if c.running]
            for child in leftovers:
                # Unwinding because of an error of our own: leave nothing behind.
                signal_group(child.pgid, signal.SIGKILL)
            for child in leftovers:
                self._wait_ended(child, 10.0)
        threads = [
            threading.Thread(target=child.close, name="smtk-close", daemon=True)
            for child in self.children.values()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(STRAGGLER_GRACE * 2 + DRAIN_SECONDS + 2)
        return {name: child.result() for name, child in self.children.items()}

    def _runtime_over(self, now: float) -> bool:
        return (
            self.max_runtime is not None and not self._timed_out and now - self._started >= self.max_runtime
        )

    def _next_wake(self, now: float) -> float:
        wakes = [1.0]
        if self._kill_at is not None:
            wakes.append(self._kill_at - now)
        if self.max_runtime is not None and not self._timed_out:
            wakes.append(self._started + self.max_runtime - now)
        with self._lock:
            wakes.extend(when - now for when, _ in self._timers)
        return max(0.01, min(wakes))

    def _kill_running(self) -> None:
        with self._lock:
            running = [c for c in self.children.values() if c.running and not c.killed]
        if running:
            logger.error("%s did not exit in time: killing with SIGKILL", _describe(running))
        for child in running:
            child.killed = True
            child.signal(signal.SIGKILL)
            if child.has_signaller:
                # The engine kills the container; its CLI gets a moment to report, then goes too.
                self.after(STRAGGLER_GRACE, functools.partial(_kill_group, child.pgid))
        self._kill_at = None

    def _wait_ended(self, child: Child, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while child.running and time.monotonic() < deadline:
            self._changed.wait(0.05)


def _kill_group(pgid: int) -> None:
    signal_group(pgid, signal.SIGKILL)


def _describe(children: Sequence[Child]) -> str:
    if len(children) == 1:
        child = children[0]
        return f"the {child.name}'s process group {child.pgid}"
    return f"{len(children)} process groups ({', '.join(c.name for c in children)})"


def _clean_up_group(pgid: int) -> None:
    """SIGTERM, then SIGKILL, whatever is left of the process group."""
    if not signal_group(pgid, 0):
        return
    logger.info("process %d exited; stopping the processes it left running in its group", pgid)
    signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + STRAGGLER_GRACE
    while time.monotonic() < deadline:
        if not signal_group(pgid, 0):
            return
        _reap_orphans()
        time.sleep(0.05)
    signal_group(pgid, signal.SIGKILL)
    _reap_orphans()


def _reap_orphans() -> None:
    """Reap zombies re-parented to this process (PID 1, or a subreaper), without blocking.

    Children a supervisor is waiting for are left to their reaper thread.
    """
    import psutil

    with _waiting_lock:
        waiting = set(_waiting)
    with contextlib.suppress(psutil.Error):
        for proc in psutil.Process().children():
            if proc.pid in waiting:
                continue
            with contextlib.suppress(psutil.Error, ChildProcessError):
                if proc.status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(proc.pid, os.WNOHANG)


# -- one plan ---------------------------------------------------------------------------------------


def prefixed(prefix: str) -> LineSink:
    """A sink writing each line, prefixed, to the same stream of ours (masked: :func:`smtk.log.write`)."""

    def sink(stream: str, line: str) -> None:
        log.write(stream, prefix + line)

    return sink


def run(
    plan: LaunchPlan,
    *,
    stop: Stop | None = None,
    grace_period: float = 100.0,
    max_runtime: float | None = None,
    sink: LineSink | None = None,
    tail_lines: int = 200,
    progress_interval: float = 10.0,
) -> ProcessResult:
    """Start ``plan`` and supervise it to the end; never raises for the child's failures.

    Raises :class:`OSError` only if the command cannot be started at all.
    """
    supervisor = Supervisor(stop=stop, grace=grace_period, max_runtime=max_runtime)
    supervisor.start(
        "job",
        plan.argv,
        env={**os.environ, **plan.env},
        cwd=plan.cwd,
        sink=sink or prefixed(plan.log_prefix),
        tail_lines=tail_lines,
        progress_interval=progress_interval,
    )
    return supervisor.wait()["job"]
