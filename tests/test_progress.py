"""The progress line: counts, rate excluding work done before a resume, ETA, no duplicate last line."""

from __future__ import annotations

import io

from orchard.progress import Progress


def test_progress_line_reports_done_total_rate_and_eta():
    stream = io.StringIO()
    progress = Progress(total=1000, done=200, stream=stream, interval=0.0)
    line = progress.line(600, progress.started + 4.0)
    assert "600/1000" in line and "( 60.0%)" in line
    assert "100.0 img/s" in line  # (600 - 200 already done) / 4 s
    assert "ETA      4s" in line
    progress.update(1000, force=True)
    progress.close(1000)
    assert stream.getvalue().count("1000/1000") == 1


def test_disabled_progress_prints_nothing():
    stream = io.StringIO()
    progress = Progress(total=10, enabled=False, stream=stream)
    progress.update(5, force=True)
    progress.close(10)
    assert stream.getvalue() == ""
