"""One stop for the whole job: SIGTERM/SIGINT recorded from the first instruction, taken by every wait.

``train`` creates a :class:`Stop` and installs it before anything else happens (before
the heavy imports, before the tree is read), then hands it to everything that blocks::

    signal handler ──> records the signal, writes one byte to a pipe   (never acts itself)
                              │
    stop-watcher thread <─────┘  sets the event, runs the on_stop callbacks
                              │
    every wait ───────────────┴─> stop.wait(t) / stop.sleep(t) / stop.check() / stop.call(fn)
                                  wakes at once and raises Stopped(signal, during=<what it was doing>)

Why a pipe and a thread: a Python signal handler runs on the main thread between two
bytecodes, possibly while that thread holds a lock inside ``threading.Event`` or a
condition; setting an event from the handler could deadlock. Writing a byte to a pipe
is safe anywhere, and the watcher thread does the rest.

Everything that blocks takes the stop: waits for peers and readiness, downloads, pip,
FIFO opens, the output sync's final flush, the container engine, the user's run (which
forwards it to the process group). A blocking call that cannot be interrupted natively
(a library download, a hardware probe) runs through :meth:`Stop.call`, which returns
at once when a stop arrives and leaves the call to end on its own in a daemon thread.

The bound a stop honours (documented in the user guide): before the user's code starts,
``train`` ends within a few seconds (a helper process such as pip gets
:data:`HELPER_GRACE` seconds after SIGTERM); while it runs, the code gets
``SMTK_GRACE_PERIOD`` seconds; the final output flush gets what is left of the
platform's 120 s window.

::

    stop = Stop().install()               # main thread, first thing
    stop.phase = "fetching the code"
    stop.check()                          # raises Stopped if a stop arrived
    stop.sleep(0.5)                       # sleeps, or raises Stopped at once
    data = stop.call(download, uri)       # interruptible blocking call
"""

from __future__ import annotations

import os
import signal
import threading
import time

# Not typing.TYPE_CHECKING: this module is imported before the stop handler is installed,
# and `typing` (with the `re` it imports) would be most of that time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType
    from typing import TypeVar

    T = TypeVar("T")

#: Seconds a helper process (pip, the container engine) gets between SIGTERM and SIGKILL.
HELPER_GRACE = 5.0


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15; ``signal N`` for a number that names no signal."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Stopped(Exception):
    """A stop arrived while ``during`` was going on; the job ends with 128 + ``signum``."""

    def __init__(self, signum: int, during: str = "") -> None:
        self.signum = signum
        self.during = during
        super().__init__(f"{signal_name(signum)} received" + (f" while {during}" if during else ""))

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class Stop:
    """Stop requests for one process: signals received, or asked for (a peer, a time limit)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        #: Every stop signal in arrival order (a second SIGTERM escalates a running job).
        self.received: list[int] = []
        #: ``time.monotonic()`` of the first stop.
        self.first_at: float | None = None
        #: A shorter SIGKILL deadline the first stop asked for, and the setting it comes from.
        self.kill_after: tuple[float, str] | None = None
        #: What the job is doing now, for the message of a stop that interrupts it.
        self.phase = "starting"
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[int], None]] = []
        self._notified = 0
        self._previous: dict[int, object] = {}
        self._pipe: tuple[int, int] | None = None

    # -- installing ---------------------------------------------------------------------------

    def install(self) -> Stop:
        """Install the SIGTERM/SIGINT handlers (main thread only); returns ``self``."""
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        self._pipe = (read_end, write_end)
        threading.Thread(target=self._watch, args=(read_end,), name="smtk-stop", daemon=True).start()
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        """Put the previous handlers back (a stop after this is no longer recorded)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()
        if self._pipe is not None:
            write_end = self._pipe[1]
            self._pipe = None
            try:
                os.write(write_end, b"q")  # wakes the watcher, which closes both ends
            except OSError:
                pass

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Only records: the watcher thread (or whoever waits) acts on it.
        self._record(signum)
        pipe = self._pipe
        if pipe is not None:
            try:
                os.write(pipe[1], b"s")
            except OSError:
                pass  # the pipe is full (the watcher will wake anyway) or closed

    def _watch(self, read_end: int) -> None:
        write_end = self._pipe[1] if self._pipe else -1
        try:
            while True:
                data = os.read(read_end, 64)
                if not data or b"q" in data:
                    return
                self._notify()
        except OSError:
            return
        finally:
            for fd in (read_end, write_end):
                try:
                    os.close(fd)
                except OSError:
                    pass

    # -- recording ----------------------------------------------------------------------------

    def _record(self, signum: int) -> None:
        self.received.append(signum)
        if self.first_at is None:
            self.first_at = time.monotonic()

    def _notify(self) -> None:
        """Wake every waiter and run the callbacks for stops not yet announced (any thread)."""
        with self._lock:
            fresh = self.received[self._notified :]
            self._notified = len(self.received)
            callbacks = list(self._callbacks)
        if not fresh:
            return
        self._event.set()
        for signum in fresh:
            for callback in callbacks:
                callback(signum)

    def request(self, signum: int = signal.SIGTERM, *, kill_after: tuple[float, str] | None = None) -> None:
        """Ask for a stop as if ``signum`` had been received (a time limit, a peer's failure, tests).

        ``kill_after``: (seconds, setting name) when whoever asks kills the job sooner than
        the grace period (a peer's failure: ``SMTK_PEER_ABORT_GRACE``), so the log says so.
        """
        if not self.received and kill_after is not None:
            self.kill_after = kill_after
        self._record(signum)
        self._notify()

    def on_stop(self, callback: Callable[[int], None]) -> Callable[[], None]:
        """Call ``callback(signum)`` on every stop from now on (at once for one already
        received); returns a function that unregisters it. Callbacks run on the watcher
        thread or the requesting thread: they must be quick and must not raise."""
        with self._lock:
            self._callbacks.append(callback)
            past = list(self.received[: self._notified])
        for signum in past[:1]:
            callback(signum)

        def remove() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return remove

    # -- asking -----------------------------------------------------------------------------

    @property
    def signum(self) -> int | None:
        """The first stop signal received, if any."""
        return self.received[0] if self.received else None

    # The name the supervision loop and older callers use.
    stop_signal = signum

    @property
    def requested(self) -> bool:
        return bool(self.received)

    def check(self, during: str | None = None) -> None:
        """Raise :class:`Stopped` if a stop has arrived (``during``: default the phase)."""
        signum = self.signum
        if signum is not None:
            raise Stopped(signum, self.phase if during is None else during)

    def wait(self, timeout: float | None) -> bool:
        """Block until a stop arrives or ``timeout`` passes; whether a stop arrived."""
        if self.received:
            return True
        return self._event.wait(timeout) or bool(self.received)

    def sleep(self, seconds: float, during: str | None = None) -> None:
        """Sleep ``seconds``, or raise :class:`Stopped` as soon as a stop arrives."""
        if self.wait(max(0.0, seconds)):
            self.check(during)

    def call(self, function: Callable[..., T], *args: object, during: str | None = None) -> T:
        """``function(*args)``, or :class:`Stopped` as soon as a stop arrives.

        The call runs in a daemon thread; on a stop it is left to finish (or to die with
        the process): use this only for calls that change nothing outside a temporary
        place, or that the caller cleans up after.
        """
        self.check(during)
        wake = threading.Event()
        finished: list[bool] = []
        result: list[T] = []
        error: list[BaseException] = []

        def target() -> None:
            try:
                result.append(function(*args))
            except BaseException as exc:  # handed to the caller's thread
                error.append(exc)
            finally:
                finished.append(True)
                wake.set()

        remove = self.on_stop(lambda _signum: wake.set())
        try:
            threading.Thread(target=target, name="smtk-interruptible", daemon=True).start()
            wake.wait()
        finally:
            remove()
        if not finished or (error and self.received):
            # Stopped, or failed because of the stop (a cancelled transfer): the stop explains it.
            self.check(during)
        if error:
            raise error[0]
        return result[0]
