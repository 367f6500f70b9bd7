"""Progress lines of long transfers (smtk.progress): what they say, and when."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtk.progress import Progress, human_seconds, human_size


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.arrived = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        self.arrived.set()


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("test.progress")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield handler
    logger.removeHandler(handler)


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (5 * 1024**2, "5.0 MiB"),
        (3 * 1024**3, "3.0 GiB"),
        (2 * 1024**4, "2.0 TiB"),
        (5000 * 1024**4, "5000.0 TiB"),
    ],
)
def test_human_size(size: int, text: str) -> None:
    assert human_size(size) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (7.4, "7 s"), (59.6, "1 min"), (75, "1 min 15 s"), (3600, "1 h 0 min"), (7384, "2 h 3 min")],
)
def test_human_seconds(seconds: float, text: str) -> None:
    assert human_seconds(seconds) == text


def test_a_line_has_files_bytes_percent_rate_and_time_left(monkeypatch: pytest.MonkeyPatch) -> None:
    start = time.monotonic()
    monkeypatch.setattr("smtk.progress.time.monotonic", lambda: start)  # started exactly then
    progress = Progress("checkpoints", logging.getLogger("test.progress"), interval=5)
    progress.expect(files=8, size=2 * 1024**3)
    progress.start()
    monkeypatch.undo()
    progress.advance(768 * 1024**2)
    for _ in range(3):
        progress.file_done()
    line = progress.line(start + 4.0)  # 768 MiB in 4 s: 192 MiB/s, 1280 MiB left: ~7 s
    progress.finish()
    assert line == "checkpoints: 3 of 8 files, 768.0 MiB of 2.0 GiB (37%), 192.0 MiB/s, ~7 s left"


def test_totals_still_growing_say_so_far_and_no_time_left() -> None:
    progress = Progress("channel 'train'", logging.getLogger("test.progress"), interval=5)
    progress.expect(files=1000, size=10 * 1024**2, final=False)
    progress.start()
    progress.advance(1024**2)
    progress.file_done()
    line = progress.line(time.monotonic() + 2.0)
    assert line.startswith("channel 'train': 1 of 1000 files, 1.0 MiB of 10.0 MiB so far, ")
    assert "left" not in line


def test_bytes_counted_twice_never_show_more_than_the_total() -> None:
    progress = Progress("code", logging.getLogger("test.progress"), interval=5)
    progress.expect(files=1, size=1000)
    progress.start()
    progress.advance(800)
    progress.advance(800)  # a retried part
    assert "1000 B of 1000 B (100%)" in progress.line(time.monotonic() + 1)


@pytest.mark.parametrize(
    ("advances", "shown"),
    [
        # s3transfer rewinds a part's body before resending it: a negative count.
        ([600, -200, 200, 400], ["600 B", "600 B", "600 B", "1000 B"]),
        # A restarted download takes back everything, then counts it again.
        ([900, -900, 500, 500], ["900 B", "900 B", "900 B", "1000 B"]),
        # Counted twice (a retried part), then taken back: it stays at the total.
        ([800, 800, -600], ["800 B", "1000 B", "1000 B"]),
    ],
)
def test_bytes_shown_never_go_down(advances: list[int], shown: list[str]) -> None:
    progress = Progress("code", logging.getLogger("test.progress"), interval=5)
    progress.expect(files=1, size=1000)
    progress.start()
    seen = []
    for count in advances:
        progress.advance(count)
        seen.append(progress.line(time.monotonic() + 1).split(", ")[1].split(" of ")[0])
    progress.finish()
    assert seen == shown


@given(
    steps=st.lists(
        st.tuples(st.integers(0, 5_000), st.integers(0, 5_000), st.booleans()), min_size=1, max_size=40
    )
)
def test_percentages_only_grow_and_stop_at_100(steps: list[tuple[int, int, bool]]) -> None:
    """Any mix of progress, take-backs (never more than was counted) and lines."""
    progress = Progress("sync", logging.getLogger("test.progress"), interval=5)
    progress.expect(files=1, size=20_000)
    net, percents = 0, []
    for forward, back, show in steps:
        progress.advance(forward)
        net += forward
        taken = min(back, net)
        progress.advance(-taken)
        net -= taken
        if show:
            line = progress.line(time.monotonic() + 1)
            percents.append(int(line.split("(")[1].split("%")[0]))
            assert "-" not in line, line  # no negative size, rate or time left
    assert percents == sorted(percents) and all(0 <= p <= 100 for p in percents), percents


def test_nothing_is_logged_when_the_transfer_ends_within_the_interval(lines: Lines) -> None:
    with Progress("quick", logging.getLogger("test.progress"), interval=0.5):
        time.sleep(0.1)
    time.sleep(0.6)
    assert lines.lines == []


def test_a_long_transfer_logs_every_interval(lines: Lines) -> None:
    progress = Progress("slow", logging.getLogger("test.progress"), interval=0.1)
    progress.expect(files=2, size=200)
    with progress:
        for _ in range(4):
            progress.advance(10)
            time.sleep(0.1)
        assert lines.arrived.wait(5)
    count = len(lines.lines)
    time.sleep(0.3)
    assert count >= 2 and len(lines.lines) == count  # and none after it finished
    assert all(line.startswith("slow: 0 of 2 files, ") for line in lines.lines)
