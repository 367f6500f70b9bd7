"""Running a :class:`~smtk.launch.plan.LaunchPlan`: the only module that spawns user processes.

What it guarantees::

    train (supervisor)                       user process group (its own session)
    ──────────────────                       ───────────────────────────────────
    SIGTERM/SIGINT ──record──> loop ──killpg(same signal)──> every process at once
                               │ grace period (SMTK_GRACE_PERIOD) ... then killpg(SIGKILL)
    stdout/stderr  <──lines── one reader thread (selectors; lines kept whole, \\r bars
                               throttled to periodic lines, secrets masked, optional prefix)
    stderr tail    <── ring buffer of the last lines, for the failure report

- The command is an argv list, never a shell; ``stdin`` is ``/dev/null``; the child
  gets ``os.environ`` merged with ``plan.env`` at spawn time (ours is never modified).
- The child leads its own session and process group, so one ``killpg`` reaches every
  process it started (data-loader workers, torchrun ranks, a shell's children).
- Signal handlers only record the signal; the supervision loop acts on it
  (forward, wait on one monotonic deadline, escalate). A second signal of the same
  kind during the grace period escalates to SIGKILL at once.
- As PID 1 it also reaps orphaned zombies (``waitpid(-1)``), keeping the exit status
  of its own child.
- When the leader exits, stragglers left in its process group get SIGTERM, then
  SIGKILL after a short wait, so nothing outlives the job.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import logging
import math
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import IO

from smtk import settings
from smtk.launch.plan import LaunchPlan
from smtk.redact import redact_text
from smtk.report import signal_name

logger = logging.getLogger("smtk")

#: Default seconds between forwarding SIGTERM and SIGKILL: fits the platform's 120 s
#: stop window with room left for the final output flush and the outcome files.
DEFAULT_GRACE_PERIOD = 100.0
#: Seconds between two lines of the same carriage-return progress bar.
DEFAULT_PROGRESS_INTERVAL = 10.0
#: A line longer than this is emitted in pieces (a runaway writer must not eat memory).
MAX_LINE_BYTES = 1 << 20
#: Seconds stragglers of a finished process group get between SIGTERM and SIGKILL.
STRAGGLER_GRACE = 5.0

_LOOP_INTERVAL = 0.05


class StopController:
    """Records SIGTERM/SIGINT for the supervision loop (handlers never act themselves)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: list[int] = []
        self.first_at: float | None = None
        #: A shorter grace period the first stop asked for, and the setting it comes from.
        self.kill_after: tuple[float, str] | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> StopController:
        """Install the handlers (main thread only); returns ``self``."""
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if self.first_at is None:
            self.first_at = time.monotonic()

    def request(self, signum: int = signal.SIGTERM, *, kill_after: tuple[float, str] | None = None) -> None:
        """Ask for a stop as if ``signum`` had been received (max runtime, a peer's failure, tests).

        ``kill_after``: (seconds, setting name) when whoever asks kills the job sooner than
        the grace period (a peer's failure: ``SMTK_PEER_ABORT_GRACE``), so the log says so.
        """
        if not self.received and kill_after is not None:
            self.kill_after = kill_after
        self._handle(signum, None)

    @property
    def stop_signal(self) -> int | None:
        """The first stop signal received, if any."""
        return self.received[0] if self.received else None


@dataclass(frozen=True)
class ProcessResult:
    """How the plan's process ended."""

    pid: int
    #: The exit code when it exited, else ``None``.
    returncode: int | None
    #: The signal that killed it, else ``None``.
    signal: int | None
    #: The stop signal ``train`` received and forwarded, if the run was stopped.
    stopped_by: int | None
    #: Whether the grace period ran out and the group was killed with SIGKILL.
    killed_after_grace: bool
    #: Whether the run was stopped because it exceeded its maximum runtime.
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


class _LineSplitter:
    """Turns a byte stream into whole lines; ``\\r``-only updates are throttled."""

    def __init__(self, emit: Callable[[str], None], progress_interval: float) -> None:
        self._emit = emit
        self._buffer = bytearray()
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._progress_interval = progress_interval
        self._last_progress = -math.inf  # the first update shows at once
        self._pending_progress: str | None = None

    def feed(self, data: bytes) -> None:
        self._buffer.extend(data)
        while True:
            nl = self._buffer.find(b"\n")
            if nl < 0:
                break
            raw = bytes(self._buffer[:nl])
            del self._buffer[: nl + 1]
            self._line(raw)
        # Progress bars rewrite one line with \r and may never send \n.
        cr = self._buffer.rfind(b"\r")
        if cr >= 0:
            raw = bytes(self._buffer[:cr])
            del self._buffer[: cr + 1]
            self._progress(raw)
        if len(self._buffer) > MAX_LINE_BYTES:
            raw = bytes(self._buffer)
            self._buffer.clear()
            self._emit(self._decode(raw) + " [line continues]")

    def close(self) -> None:
        if self._buffer:
            raw = bytes(self._buffer)
            self._buffer.clear()
            self._line(raw)
        self._flush_progress()

    def _decode(self, raw: bytes) -> str:
        return self._decoder.decode(raw, final=True)

    def _line(self, raw: bytes) -> None:
        # A line ending in \r\n is a normal line; \r inside it means progress updates:
        # only the last state is worth keeping.
        text = self._decode(raw.rstrip(b"\r"))
        if "\r" in text:
            text = text.rsplit("\r", 1)[-1]
        self._pending_progress = None
        self._emit(text)

    def _progress(self, raw: bytes) -> None:
        text = self._decode(raw).rsplit("\r", 1)[-1]
        if not text.strip():
            return
        now = time.monotonic()
        if now - self._last_progress >= self._progress_interval:
            self._last_progress = now
            self._pending_progress = None
            self._emit(text)
        else:
            self._pending_progress = text

    def _flush_progress(self) -> None:
        if self._pending_progress is not None:
            self._emit(self._pending_progress)
            self._pending_progress = None


class _OutputPump:
    """One thread multiplexing the child's stdout and stderr into our streams."""

    def __init__(
        self,
        streams: Mapping[int, tuple[IO[str], str]],
        prefix: str,
        secrets: Sequence[str],
        tail_lines: int,
        progress_interval: float,
    ) -> None:
        self._selector = selectors.DefaultSelector()
        self._prefix = prefix
        self._secrets = [s for s in secrets if s]
        self._stop_at: float | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self.stdout_tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._splitters: dict[int, _LineSplitter] = {}
        for fd, (out, name) in streams.items():
            os.set_blocking(fd, False)
            self._selector.register(fd, selectors.EVENT_READ)
            tail = self.stderr_tail if name == "stderr" else self.stdout_tail
            self._splitters[fd] = _LineSplitter(self._make_emit(out, tail), progress_interval)
        self._thread = threading.Thread(target=self._run, name="smtk-output", daemon=True)

    def _make_emit(self, out: IO[str], tail: collections.deque[str]) -> Callable[[str], None]:
        def emit(line: str) -> None:
            if self._secrets:
                line = redact_text(line, self._secrets)
            tail.append(line)
            try:
                out.write(f"{self._prefix}{line}\n")
                out.flush()
            except (OSError, ValueError):
                pass  # our own stdout is gone (closed terminal): keep draining the child

        return emit

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while self._selector.get_map():
            if self._stop_at is not None and time.monotonic() >= self._stop_at:
                break
            for key, _ in self._selector.select(timeout=0.1):
                fd = key.fd if isinstance(key.fd, int) else key.fd.fileno()
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    self._splitters[fd].feed(data)
                else:
                    self._selector.unregister(fd)
                    self._splitters[fd].close()
        for leftover in list(self._splitters):
            if leftover in self._selector.get_map():
                self._selector.unregister(leftover)
                self._splitters[leftover].close()

    def finish(self, drain_seconds: float) -> None:
        """Wait for EOF on both pipes, at most ``drain_seconds`` (a stray holder of the
        pipe must not keep ``train`` from reporting)."""
        self._stop_at = time.monotonic() + drain_seconds
        self._thread.join(drain_seconds + 1.0)
        self._selector.close()


def signal_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to process group ``pgid``; False when the group is gone."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def _group_alive(pgid: int) -> bool:
    return signal_group(pgid, 0)


class _Reaper:
    """Waits for the child in a thread; as PID 1 it also reaps orphaned zombies.

    A blocking ``waitpid`` in a thread wakes the supervision loop the moment the
    child exits, instead of on the next tick of a polling sleep.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.status: int | None = None
        self.exited = threading.Event()
        self._reap_all = os.getpid() == 1 or os.environ.get("SMTK_REAP_ZOMBIES") == "1"
        self._thread = threading.Thread(target=self._wait, name="smtk-reaper", daemon=True)
        self._thread.start()

    def _wait(self) -> None:
        while self.status is None:
            try:
                pid, status = os.waitpid(-1 if self._reap_all else self.pid, 0)
            except ChildProcessError:
                # Someone else reaped it (cannot happen unless the caller waits too).
                pid, status = self.pid, 0
            except InterruptedError:
                continue
            if pid == self.pid:
                self.status = status
        self.exited.set()

    def poll(self, timeout: float) -> bool:
        return self.exited.wait(timeout)


def run(
    plan: LaunchPlan,
    *,
    stop: StopController | None = None,
    grace_period: float | None = None,
    max_runtime: float | None = None,
    secrets: Sequence[str] = (),
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    tail_lines: int = 200,
    progress_interval: float | None = None,
) -> ProcessResult:
    """Start ``plan`` and supervise it to the end; never raises for the child's failures.

    Raises :class:`OSError` only if the command cannot be started at all.
    """
    grace = grace_period if grace_period is not None else settings_grace_period()
    interval = (
        progress_interval
        if progress_interval is not None
        else settings.number(os.environ, "SMTK_PROGRESS_INTERVAL", DEFAULT_PROGRESS_INTERVAL)
    )
    env = {**os.environ, **plan.env}
    started = time.monotonic()
    proc = subprocess.Popen(
        list(plan.argv),
        cwd=plan.cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        close_fds=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    pump = _OutputPump(
        {
            proc.stdout.fileno(): (stdout or sys.stdout, "stdout"),
            proc.stderr.fileno(): (stderr or sys.stderr, "stderr"),
        },
        prefix=plan.log_prefix,
        secrets=secrets,
        tail_lines=tail_lines,
        progress_interval=interval,
    )
    pump.start()
    pgid = proc.pid  # start_new_session: the child leads its own process group
    reaper = _Reaper(proc.pid)
    forwarded = 0
    kill_deadline: float | None = None
    killed = False
    timed_out = False
    stopped_by: int | None = None
    try:
        while not reaper.poll(_LOOP_INTERVAL):
            now = time.monotonic()
            if max_runtime is not None and not timed_out and now - started >= max_runtime:
                timed_out = True
                logger.warning("maximum runtime of %.0f s reached: stopping the job (SIGTERM)", max_runtime)
                if stop is None:
                    stop = StopController()
                stop.request(signal.SIGTERM)
            if stop is not None and len(stop.received) > forwarded:
                for signum in stop.received[forwarded:]:
                    if stopped_by is None:
                        stopped_by = signum
                        wait, setting = grace, "SMTK_GRACE_PERIOD"
                        if stop.kill_after is not None and stop.kill_after[0] < grace:
                            wait, setting = stop.kill_after
                        kill_deadline = now + wait
                        logger.warning(
                            "received %s: forwarding it to the job's process group %d; "
                            "SIGKILL in %.0f s if it has not exited (%s)",
                            signal_name(signum),
                            pgid,
                            wait,
                            setting,
                        )
                        signal_group(pgid, signum)
                    elif signum == stopped_by and not killed:
                        logger.warning("received %s again: killing the job now", signal_name(signum))
                        kill_deadline = now
                    else:
                        signal_group(pgid, signum)
                forwarded = len(stop.received)
            if kill_deadline is not None and not killed and now >= kill_deadline:
                killed = True
                logger.error("the job did not exit in time: killing its process group with SIGKILL")
                signal_group(pgid, signal.SIGKILL)
    finally:
        if reaper.status is None:
            # We are unwinding because of an error of our own: leave nothing behind.
            signal_group(pgid, signal.SIGKILL)
            reaper.poll(10.0)
    status = reaper.status if reaper.status is not None else 0
    proc.returncode = os.waitstatus_to_exitcode(status)
    _clean_up_group(pgid)
    pump.finish(drain_seconds=5.0)
    proc.stdout.close()
    proc.stderr.close()
    returncode: int | None = None
    killed_by: int | None = None
    if os.WIFSIGNALED(status):
        killed_by = os.WTERMSIG(status)
    else:
        returncode = os.WEXITSTATUS(status)
    return ProcessResult(
        pid=proc.pid,
        returncode=returncode,
        signal=killed_by,
        stopped_by=stopped_by,
        killed_after_grace=killed,
        timed_out=timed_out,
        seconds=time.monotonic() - started,
        stderr_tail=tuple(pump.stderr_tail),
        stdout_tail=tuple(pump.stdout_tail),
        argv=plan.argv,
    )


def _clean_up_group(pgid: int) -> None:
    """SIGTERM, then SIGKILL, whatever is left of the process group."""
    if not _group_alive(pgid):
        return
    logger.info("the job's main process exited; stopping processes it left running")
    signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + STRAGGLER_GRACE
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return
        _reap_orphans()
        time.sleep(_LOOP_INTERVAL)
    signal_group(pgid, signal.SIGKILL)
    _reap_orphans()


def _reap_orphans() -> None:
    if os.getpid() != 1:
        return
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] != 0:
            pass


def settings_grace_period() -> float:
    """``SMTK_GRACE_PERIOD`` (seconds between the forwarded stop signal and SIGKILL)."""
    return settings.number(os.environ, "SMTK_GRACE_PERIOD", DEFAULT_GRACE_PERIOD)
