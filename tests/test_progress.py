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


def test_the_engine_reports_the_share_of_a_running_jobs_tasks(spark):
    """Classic: the status tracker; Connect: progress handlers. A 6-task job of 2 s tasks on 2 slots runs ~6 s,
    so several reports come (every 0.5 s on classic, every ~2 s from a Connect server); only their range is
    checked, never their timing."""
    from orchard.engine import engine_for

    def slow_partition(batches):  # defined here: pickled by value, the workers cannot import this test module
        import time

        for batch in batches:
            time.sleep(2.0)
            yield batch

    shares: list[float] = []
    with engine_for(spark).watch("orchard-progress-test", shares.append):
        rows = spark.range(0, 6, numPartitions=6).mapInPandas(slow_partition, "id long").count()
    assert rows == 6
    assert shares, "no progress was reported during a 6-second job"
    assert all(0.0 <= share <= 1.0 for share in shares)
