"""The progress line: counts that never go back, rate excluding work done before a resume, ETA, how often
lines come on and off a terminal, one final line."""

from __future__ import annotations

import io

import pytest

from orchard.progress import LOG_SECONDS, Progress


class Clock:
    """A fake monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


@pytest.mark.pure
def test_progress_line_reports_done_total_rate_and_eta():
    progress = Progress(total=1000, done=200, stream=io.StringIO(), clock=Clock())
    line = progress.line(600, progress.started + 4.0)
    assert "600/1000" in line and "( 60.0%)" in line
    assert "100.0 img/s" in line  # (600 - 200 already done) / 4 s
    assert "ETA      4s" in line


@pytest.mark.pure
def test_no_rate_from_a_tiny_interval():
    progress = Progress(total=2000, stream=io.StringIO(), clock=Clock())
    line = progress.line(600, progress.started + 0.2)
    assert "? img/s" in line and "ETA      ?" in line


@pytest.mark.pure
def test_the_count_never_goes_back():
    clock, stream = Clock(), io.StringIO()
    progress = Progress(total=100, stream=stream, clock=clock)
    for seconds, done in ((1, 60), (7, 30), (13, 50)):
        clock.now = progress.started + seconds
        progress.update(done)
    assert [line.split()[1] for line in lines(stream)] == ["60/100"] * 3


@pytest.mark.pure
def test_off_a_terminal_a_line_every_few_seconds_or_every_tenth():
    clock, stream = Clock(), io.StringIO()
    progress = Progress(total=1000, stream=stream, clock=clock)
    progress.update(0)  # the first report prints at once
    for _ in range(20):  # slow: 1 image per 0.5 s reported, 10 s in all
        clock.now += 0.5
        progress.update(progress.done + 1)
    assert len(lines(stream)) == 1 + 10 / LOG_SECONDS
    for _ in range(4):  # fast: 100 images (10%) per 0.5 s report
        clock.now += 0.5
        progress.update(progress.done + 100)
    assert len(lines(stream)) == 1 + 10 / LOG_SECONDS + 4
    progress.update(1000)  # all done: left to the final line
    progress.close(1000)
    assert lines(stream)[-1].startswith("featurised 1000/1000 images (100.0%) in 12.0s")
    assert stream.getvalue().count("1000/1000") == 1
    assert all("\r" not in line for line in lines(stream))


@pytest.mark.pure
def test_on_a_terminal_one_rewritten_line_per_interval_and_a_final_line():
    clock, stream = Clock(), Terminal()
    progress = Progress(total=10, done=4, stream=stream, clock=clock)
    for _ in range(8):
        clock.now += 0.25
        progress.update(5)
    assert stream.getvalue().count("\r") == 2  # at 0.25 s and 1.25 s (the next is due at 2.25 s)
    progress.close(10)
    progress.close(10)  # a second close prints nothing more
    assert stream.getvalue().endswith("\n") and stream.getvalue().count("\n") == 1
    final = stream.getvalue().rsplit("\r", 1)[-1]
    assert final.startswith("featurised 10/10 images (100.0%) in 2.0s") and "3.0 img/s" in final  # (10 - 4) / 2


@pytest.mark.pure
def test_disabled_progress_prints_nothing():
    stream = io.StringIO()
    progress = Progress(total=10, enabled=False, stream=stream)
    progress.update(5, force=True)
    progress.close(10)
    assert stream.getvalue() == ""


@pytest.mark.spark
def test_the_engine_reports_the_share_of_the_stage_after_the_shuffle(spark):
    """The shape of a shard's job: a stage, a shuffle, then the slow UDF stage. With adaptive execution the
    first stage is a job of its own; its tasks must not count, else the share jumps to 2/3 (or all done) and
    falls back when the UDF stage starts. Classic: the status tracker (every 0.5 s); Connect: progress
    handlers (every ~2 s). Only the range and order of the reports are checked, never their timing."""
    from orchard.engine import engine_for

    def slow(seconds: float):  # defined here: pickled by value, the workers cannot import this test module
        def partition(batches):
            import time

            for batch in batches:
                time.sleep(seconds)
                yield batch

        return partition

    shares: list[float] = []
    frame = (spark.range(0, 3, numPartitions=3).mapInPandas(slow(1.0), "id long").repartition(6)
             .mapInPandas(slow(2.0), "id long"))
    with engine_for(spark).watch("orchard-progress-test", shares.append):
        frame.write.format("noop").mode("overwrite").save()
    assert shares, "no progress was reported during an 8-second job"
    assert all(0.0 <= share <= 1.0 for share in shares)
    assert shares == sorted(shares), shares
