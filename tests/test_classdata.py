"""The driver JVM's class-data archive: recorded by a first run, mapped by the next, results unchanged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from conftest import orchard
from infra import wait_for

from orchard import classdata
from orchard.output import read_info
from orchard.sample import SampleSpec, make_sample

pytestmark = pytest.mark.spark


def orchard_run(data: Path, output: Path, cache: Path, **env: str) -> dict:
    result = orchard("run", str(data), "--output", str(output), "--weights", "random", "--k", "3", "--master",
                     "local[2]", "--no-progress", env={"ORCHARD_CACHE": str(cache), **env}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cds" not in result.stderr.lower()  # the JVM's archive notices stay off the console
    return read_info(str(output))


def features(output: Path) -> np.ndarray:
    return np.stack(pd.read_parquet(output / "features")["features"].to_numpy())


def test_first_run_records_the_archive_and_the_next_maps_it(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    make_sample(data, SampleSpec(classes=2, train_per_class=4, test_per_class=0, seed=3))
    first = orchard_run(data, tmp_path / "first", cache)
    assert first["spark"]["jvm_class_data"] == "recording"
    owners = list((cache / "jvm").glob("*.jsa.*.part.jvm"))
    assert len(owners) == 1
    jvm = int(owners[0].read_text())
    wait_for(lambda: not psutil.pid_exists(jvm) or psutil.Process(jvm).status() == psutil.STATUS_ZOMBIE, 120,
             "the driver JVM to finish dumping its classes")
    part = owners[0].with_name(owners[0].name.removesuffix(".jvm"))
    assert part.stat().st_size > 10_000_000  # dumped when the driver JVM exited

    second = orchard_run(data, tmp_path / "second", cache)
    assert second["spark"]["jvm_class_data"] == "mapped"
    archives = list((cache / "jvm").glob("*.jsa"))
    assert len(archives) == 1 and not list((cache / "jvm").glob("*.part*"))  # promoted, nothing left over
    assert np.array_equal(features(tmp_path / "first"), features(tmp_path / "second"))

    off = orchard_run(data, tmp_path / "off", cache, ORCHARD_JVM_CDS="0")
    assert off["spark"]["jvm_class_data"] == "off"


def test_a_partial_archive_of_a_dead_jvm_is_promoted_and_a_live_one_is_left_alone(tmp_path):
    spark_home = tmp_path / "spark"
    (spark_home / "jars").mkdir(parents=True)
    (spark_home / "jars" / "spark-core.jar").write_bytes(b"jar")
    recording = classdata.plan(tmp_path, spark_home)
    assert recording.recording is not None and recording.options[0].startswith("-XX:ArchiveClassesAtExit=")
    recording.recording.write_bytes(b"archive bytes")
    owner = recording.recording.with_name(recording.recording.name + ".jvm")
    owner.write_text(str(os.getpid()))  # a live process: still dumping
    assert classdata.plan(tmp_path, spark_home).options == []
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    owner.write_text(dead.stdout.strip())
    mapped = classdata.plan(tmp_path, spark_home)
    archive = recording.recording.with_name(recording.recording.name.split(".jsa")[0] + ".jsa")
    assert mapped.options[0] == f"-XX:SharedArchiveFile={archive}" and archive.read_bytes() == b"archive bytes"
    assert mapped.recording is None and not owner.exists()


def test_an_unwritable_cache_only_costs_the_speed_up(tmp_path):
    spark_home = tmp_path / "spark"
    (spark_home / "jars").mkdir(parents=True)
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should be")
    assert classdata.plan(blocked, spark_home).options == []
