"""Progress lines for long transfers: files, bytes, rate and time left, every few seconds.

A transfer that ends within the interval says nothing more than its own summary; one
that takes longer logs a line every ``SMTK_TRANSFER_PROGRESS_SECONDS`` (5 s)::

    checkpoints: 3 of 8 files, 768.0 MiB of 2.0 GiB (37%), 181.2 MiB/s, ~7 s left

Counting is cheap and thread-safe (transfer callbacks call :meth:`Progress.advance` from
the client's threads); a daemon thread writes the lines, so no transfer waits on
logging. The bytes a line shows never go down and never pass a final total: a client
that retries a part first takes back what it had counted of it (s3transfer calls back
with a negative count when it rewinds a body or restarts a download), then counts it
again, so the lines show the most ever counted, at most the total. Totals may grow while
the transfer runs (a listing still paging in): the line then says ``so far``. The rate
is the average over the last few intervals, so a stall shows within a few lines (the CRT
client counts a large object part by part, 16 MiB at a time).

::

    progress = Progress("checkpoints", logger, interval=5.0)
    progress.expect(files=8, size=2 * 1024**3)
    with progress:                         # starts the ticker, stops it on exit
        ...                                # progress.advance(n), progress.file_done()
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from types import TracebackType

#: Samples kept for the rate: the last few intervals.
_RATE_SAMPLES = 4


def human_size(size: float) -> str:
    """``1536`` -> ``1.5 KiB``; bytes as a whole number."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size:.0f} B"  # pragma: no cover - the loop always returns


def human_seconds(seconds: float) -> str:
    """``75`` -> ``1 min 15 s``; ``7`` -> ``7 s``."""
    whole = int(seconds + 0.5)
    if whole < 60:
        return f"{whole} s"
    minutes, rest = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


class Progress:
    """Counts one transfer's files and bytes and logs where it stands every ``interval`` seconds."""

    def __init__(
        self, label: str, logger: logging.Logger, *, interval: float, level: int = logging.INFO
    ) -> None:
        self.label = label
        self._logger = logger
        self._interval = interval
        self._level = level
        self._lock = threading.Lock()
        self._files_total = 0
        self._bytes_total = 0
        self._final_totals = True
        self._files_done = 0
        self._bytes_done = 0
        #: The most ``_bytes_done`` has been: what the lines show (it never goes down).
        self._bytes_peak = 0
        self._started = time.monotonic()
        self._samples: deque[tuple[float, int]] = deque(maxlen=_RATE_SAMPLES + 1)
        self._finished = threading.Event()
        self._thread: threading.Thread | None = None

    # -- counting (any thread) --------------------------------------------------------

    def expect(self, *, files: int = 0, size: int = 0, final: bool = True) -> None:
        """Add to the totals; ``final=False`` while more may still be added."""
        with self._lock:
            self._files_total += files
            self._bytes_total += size
            self._final_totals = final

    def advance(self, size: int) -> None:
        """``size`` more bytes moved (may be called for every chunk); negative when the
        client takes back bytes it will send again."""
        with self._lock:
            self._bytes_done += size
            self._bytes_peak = max(self._bytes_peak, self._bytes_done)

    def file_done(self, unreported: int = 0) -> None:
        """One more file finished; ``unreported`` bytes of it were not passed to :meth:`advance`."""
        with self._lock:
            self._files_done += 1
            self._bytes_done += unreported
            self._bytes_peak = max(self._bytes_peak, self._bytes_done)

    # -- reporting --------------------------------------------------------------------

    def line(self, now: float | None = None) -> str:
        """Where the transfer stands: ``3 of 8 files, 768.0 MiB of 2.0 GiB (37%), 181.2 MiB/s, ~7 s left``."""
        now = time.monotonic() if now is None else now
        with self._lock:
            files_done, files_total = self._files_done, self._files_total
            done, total, final = self._bytes_peak, self._bytes_total, self._final_totals
            samples = list(self._samples)
        # A retried part may be counted twice: never show more than the total.
        done = min(done, total) if total and final else done
        parts = [f"{files_done} of {files_total} files" if files_total else f"{files_done} files"]
        if total:
            percent = f" ({done * 100 // total}%)" if final else " so far"
            parts.append(f"{human_size(done)} of {human_size(total)}{percent}")
        else:
            parts.append(human_size(done))
        rate = self._rate(samples, now, done)
        if rate is not None:
            parts.append(f"{human_size(rate)}/s")
            if total and final and rate > 0 and done < total:
                parts.append(f"~{human_seconds((total - done) / rate)} left")
        return f"{self.label}: " + ", ".join(parts)

    def _rate(self, samples: list[tuple[float, int]], now: float, done: int) -> float | None:
        if samples:
            then, before = samples[0]
        else:
            then, before = self._started, 0
        elapsed = now - then
        if elapsed < 0.5:
            return None
        return max(0, done - before) / elapsed

    def report(self) -> None:
        """Log the current line now (and remember it for the rate)."""
        now = time.monotonic()
        message = self.line(now)
        with self._lock:
            self._samples.append((now, self._bytes_peak))
        self._logger.log(self._level, "%s", message)

    # -- the ticker ---------------------------------------------------------------------

    def start(self) -> Progress:
        """Log a line every ``interval`` seconds until :meth:`finish` (none if it ends sooner)."""
        self._started = time.monotonic()
        with self._lock:
            self._samples.clear()
            self._samples.append((self._started, self._bytes_peak))
        self._thread = threading.Thread(target=self._tick, name=f"smtk-progress-{self.label}", daemon=True)
        self._thread.start()
        return self

    def _tick(self) -> None:
        while not self._finished.wait(self._interval):
            try:
                self.report()
            except Exception:  # a progress line must never break the transfer
                return

    def finish(self) -> float:
        """Stop the ticker; the seconds since :meth:`start`."""
        self._finished.set()
        return time.monotonic() - self._started

    def __enter__(self) -> Progress:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.finish()
