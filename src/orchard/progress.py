"""A one-line terminal progress display: images done / total, rate and ETA."""

from __future__ import annotations

import sys
import time


class Progress:
    """Prints at most every `interval` seconds; rewrites one line on a terminal, else appends lines."""

    def __init__(self, total: int, done: int = 0, enabled: bool = True, stream=None, interval: float = 1.0):
        self.total, self.enabled, self.interval = total, enabled, interval
        self.baseline = done  # images already done at the start (resume) do not count for the rate
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._last = 0.0
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._printed = -1

    def update(self, done: int, force: bool = False) -> None:
        """Report `done` images; printed only if the interval has passed (or `force`)."""
        if not self.enabled:
            return
        now = time.monotonic()
        interval = self.interval if self._tty else max(self.interval, 10.0)
        if not force and now - self._last < interval:
            return
        self._last, self._printed = now, done
        self.stream.write(("\r" if self._tty else "") + self.line(done, now) + ("" if self._tty else "\n"))
        self.stream.flush()

    def line(self, done: int, now: float) -> str:
        """The progress text for `done` images at monotonic time `now`: count, percent, rate, ETA."""
        elapsed = max(now - self.started, 1e-9)
        rate = (done - self.baseline) / elapsed
        left = self.total - done
        eta = f"{left / rate:6.0f}s" if rate > 0 else "     ?"
        percent = 100.0 * done / self.total if self.total else 100.0
        return f"featurising {done}/{self.total} images ({percent:5.1f}%)  {rate:7.1f} img/s  ETA {eta}"

    def close(self, done: int) -> None:
        """Print the final count (once) and end the terminal line."""
        if self.enabled and done != self._printed:
            self.update(done, force=True)
        if self.enabled and self._tty:
            self.stream.write("\n")
