"""Ctrl-C that Python swallowed (raised inside a finalizer) is still seen by the run's check."""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading

import pytest

from orchard.interrupt import interrupts_recorded

pytestmark = pytest.mark.pure


class Finalized:
    """An object whose finalizer is running when SIGINT arrives, as py4j's weakref callbacks often are."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # the handler runs here; its KeyboardInterrupt is dropped
        for _ in range(1000):
            pass


def test_an_interrupt_swallowed_by_a_finalizer_is_raised_by_the_check(monkeypatch):
    swallowed = []  # what Python reports as "Exception ignored in ..." and drops
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: swallowed.append(unraisable.exc_type))
    with interrupts_recorded() as interrupted:
        interrupted()  # nothing yet
        Finalized()
        gc.collect()
        assert swallowed == [KeyboardInterrupt]  # the handler's exception is gone, and the code went on
        with pytest.raises(KeyboardInterrupt):
            interrupted()
        with pytest.raises(KeyboardInterrupt):  # and it stays raised: the run stops at every later check
            interrupted()


def test_an_interrupt_before_the_block_does_not_count_and_the_wakeup_fd_is_restored():
    previous = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(previous)
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):
            pass
    with interrupts_recorded() as interrupted:
        interrupted()
    assert signal.set_wakeup_fd(-1) == previous
    signal.set_wakeup_fd(previous)


def test_off_the_main_thread_the_check_does_nothing():
    checks = []

    def worker() -> None:
        with interrupts_recorded() as interrupted:
            interrupted()
            checks.append(interrupted)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(10)
    assert len(checks) == 1
