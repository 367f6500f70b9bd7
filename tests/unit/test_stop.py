"""The one stop (smtk.stop): recorded from real signals, taken by every kind of wait."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from smtk.stop import Stop, Stopped


@pytest.fixture
def installed() -> Stop:
    stop = Stop().install()
    yield stop  # type: ignore[misc]
    stop.restore()


def test_a_real_signal_is_recorded_not_acted_on(installed: Stop) -> None:
    os.kill(os.getpid(), signal.SIGTERM)  # the process survives: the handler only records
    assert installed.wait(10)
    assert installed.signum == signal.SIGTERM and installed.requested
    with pytest.raises(Stopped) as info:
        installed.check("fetching the code")
    assert info.value.exit_status == 143
    assert str(info.value) == "SIGTERM received while fetching the code"


def test_the_phase_names_what_was_interrupted() -> None:
    stop = Stop()
    stop.phase = "installing the job's dependencies with pip"
    stop.request(signal.SIGINT)
    with pytest.raises(Stopped) as info:
        stop.check()
    assert info.value.signum == signal.SIGINT and info.value.during == stop.phase


def test_a_signal_wakes_a_waiting_thread_at_once(installed: Stop) -> None:
    woke: list[float] = []

    def waiter() -> None:
        installed.wait(None)
        woke.append(time.monotonic())

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.2)
    sent = time.monotonic()
    os.kill(os.getpid(), signal.SIGINT)
    thread.join(10)
    assert woke and woke[0] - sent < 2.0


def test_sleep_is_cut_short() -> None:
    stop = Stop()
    threading.Timer(0.2, stop.request, args=(signal.SIGTERM,)).start()
    started = time.monotonic()
    with pytest.raises(Stopped):
        stop.sleep(600, "sleeping")
    assert time.monotonic() - started < 10


def test_call_returns_at_once_from_a_call_that_never_ends() -> None:
    stop = Stop()
    never = threading.Event()
    threading.Timer(0.2, stop.request, args=(signal.SIGTERM,)).start()
    started = time.monotonic()
    with pytest.raises(Stopped) as info:
        stop.call(never.wait, during="downloading the code")
    assert time.monotonic() - started < 10 and info.value.during == "downloading the code"


def test_call_gives_back_results_and_errors() -> None:
    stop = Stop()
    assert stop.call(lambda x: x * 2, 21) == 42
    with pytest.raises(KeyError):
        stop.call({}.__getitem__, "missing")


def test_an_error_caused_by_the_stop_reads_as_the_stop() -> None:
    stop = Stop()

    def cancelled_transfer() -> None:
        stop.request(signal.SIGTERM)
        raise RuntimeError("transfer cancelled")

    with pytest.raises(Stopped):
        stop.call(cancelled_transfer)


def test_callbacks_run_for_every_stop_and_can_be_removed() -> None:
    stop = Stop()
    seen: list[int] = []
    remove = stop.on_stop(seen.append)
    stop.request(signal.SIGTERM)
    stop.request(signal.SIGTERM)
    remove()
    stop.request(signal.SIGINT)
    assert seen == [signal.SIGTERM, signal.SIGTERM]
    late: list[int] = []
    stop.on_stop(late.append)  # registered after a stop: told at once
    assert late == [signal.SIGTERM]


def test_a_shorter_kill_deadline_is_kept_from_the_first_request() -> None:
    stop = Stop()
    stop.request(signal.SIGTERM, kill_after=(10.0, "SMTK_PEER_ABORT_GRACE"))
    stop.request(signal.SIGTERM, kill_after=(1.0, "other"))
    assert stop.kill_after == (10.0, "SMTK_PEER_ABORT_GRACE")
    assert stop.received == [signal.SIGTERM, signal.SIGTERM]


def test_restore_puts_the_previous_handlers_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    stop = Stop().install()
    assert signal.getsignal(signal.SIGTERM) != before
    stop.restore()
    assert signal.getsignal(signal.SIGTERM) == before
