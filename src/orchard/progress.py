"""A one-line progress display: images done / total, rate and ETA; a final line with the average rate."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

LOG_SECONDS = 5.0  # off a terminal: a line at least this often, so a log never looks stalled for long ...
LOG_STEP = 0.10  # ... or sooner, once this share of the total is done since the last line (at most ~10 more)
MIN_RATE_SECONDS = 1.0  # no rate (nor ETA) from less time than this: a few tasks' worth says nothing


class Progress:
    """On a terminal, rewrites one line at most every `interval` s; elsewhere (a pipe, a log file) appends a
    line every LOG_SECONDS or every LOG_STEP of the total, whichever comes first. The count never goes back."""

    def __init__(self, total: int, done: int = 0, enabled: bool = True, stream: TextIO | None = None,
                 interval: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.total, self.enabled, self.interval, self.clock = total, enabled, interval, clock
        self.baseline = self.done = done  # images done before this run (resumed shards) do not count for the rate
        self.stream = stream or sys.stderr
        self.started = clock()
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last: tuple[float, int] | None = None  # (time, count) of the last line printed
        self._closed = False

    def update(self, done: int, force: bool = False) -> None:
        """Report `done` images (a lower count than before is ignored); printed when due (or `force`)."""
        self.done = max(self.done, done)
        if not self.enabled or self._closed:
            return
        now = self.clock()
        if force or self._due(now):
            self._write(self.line(self.done, now))
            self._last = (now, self.done)

    def _due(self, now: float) -> bool:
        if self.total and self.done >= self.total:
            return False  # all done: close() prints the final line
        if self._last is None:
            return True
        at, count = self._last
        if self._tty:
            return now - at >= self.interval
        return now - at >= max(self.interval, LOG_SECONDS) or self.done - count >= LOG_STEP * self.total > 0

    def rate(self, done: int, now: float) -> float | None:
        """Images per second featurised by this run; None before MIN_RATE_SECONDS have passed."""
        elapsed = now - self.started
        return (done - self.baseline) / elapsed if elapsed >= MIN_RATE_SECONDS else None

    def line(self, done: int, now: float) -> str:
        """The progress text for `done` images at clock time `now`: count, percent, rate, ETA."""
        rate = self.rate(done, now)
        speed = f"{rate:7.1f} img/s" if rate is not None else "      ? img/s"
        eta = f"{(self.total - done) / rate:6.0f}s" if rate else "     ?"
        return f"featurising {done}/{self.total} images ({self._percent(done):5.1f}%)  {speed}  ETA {eta}"

    def final_line(self, done: int, now: float) -> str:
        """The closing text: count, percent, seconds and the average rate of this run's images."""
        seconds = now - self.started
        rate = (done - self.baseline) / seconds if seconds > 0 else 0.0
        return (f"featurised {done}/{self.total} images ({self._percent(done):5.1f}%) in {seconds:.1f}s  "
                f"{rate:7.1f} img/s")

    def _percent(self, done: int) -> float:
        return 100.0 * done / self.total if self.total else 100.0

    def _write(self, text: str) -> None:
        # on a terminal, pad so that a shorter line fully covers the one it rewrites
        self.stream.write(f"\r{text:<78}" if self._tty else text + "\n")
        self.stream.flush()

    def close(self, done: int) -> None:
        """Print the final line (once), ending the terminal line."""
        self.done = max(self.done, done)
        if not self.enabled or self._closed:
            return
        self._closed = True
        self._write(self.final_line(self.done, self.clock()))
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()
