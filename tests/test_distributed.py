"""`orchard run` unchanged on a real standalone cluster and on a real S3-compatible server (moto).

The CLI runs in subprocesses, as a user runs it: each has its own driver JVM, so the s3a jars and the
cluster master are set exactly as they would be in production.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import orchard
from infra import (
    AWS_ENV,
    S3A_JARS_CONF,
    SPARK_HOME,
    moto_server,
    process_children,
    python_workers,
    s3a_jars,
    standalone_cluster,
    wait_for,
)

from orchard.sample import SampleSpec, make_sample

pytestmark = pytest.mark.e2e


def features_by_path(output: Path) -> dict[str, np.ndarray]:
    frame = pd.read_parquet(output / "features")
    return dict(zip(frame["path"].map(lambda p: p.split("fruits/", 1)[1]), frame["features"], strict=True))


def assert_same_features(a: Path, b: Path) -> None:
    left, right = features_by_path(a), features_by_path(b)
    assert left.keys() == right.keys() and len(left) > 0
    for path, vector in left.items():
        assert np.array_equal(vector, right[path]), f"features differ for {path}"


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("distributed") / "fruits"
    make_sample(root, SampleSpec(classes=4, train_per_class=40, test_per_class=10, seed=7))
    return root


@pytest.fixture(scope="module")
def local_run(collection, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("local") / "out"
    result = orchard("run", str(collection), "--output", str(output), "--weights", "random", "--k", "5",
                     "--master", "local[2]", "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    return output


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with standalone_cluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


def test_cluster_run_equals_local_run_and_builds_one_session_per_python_worker(cluster, collection, local_run,
                                                                                 tmp_path):
    builds = tmp_path / "builds.log"
    output = tmp_path / "out"
    result = orchard("run", str(collection), "--output", str(output), "--weights", "random", "--k", "5",
                     "--master", cluster.master_url, "--shard-size", "100", "--images-per-task", "25",
                     "--conf", f"spark.executorEnv.ORCHARD_MODEL_BUILD_LOG={builds}", "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_features(local_run, output)  # bit for bit, whatever ran where
    per_process = Counter(line.split()[0] for line in builds.read_text().splitlines())
    assert per_process and set(per_process.values()) == {1}, per_process  # 2 shards, 8 tasks, one build each
    assert len(per_process) <= 2  # two executors with one core each: at most two Python workers
    executors = {app["id"] for app in cluster.state()["completedapps"]}
    assert executors, "the run did not go through the cluster"


def test_killing_a_worker_mid_run_still_gives_identical_output(collection, local_run, tmp_path):
    with standalone_cluster(tmp_path / "cluster") as cluster:
        output = tmp_path / "out"
        env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
        command = [sys.executable, "-m", "orchard.cli", "run", str(collection), "--output", str(output),
                   "--weights", "random", "--k", "5", "--master", cluster.master_url, "--shard-size", "50",
                   "--images-per-task", "5", "--no-progress"]
        with open(tmp_path / "driver.log", "w") as log:
            driver = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            stats = output / "_work" / "stats"
            wait_for(lambda: stats.is_dir() and any(stats.iterdir()), 240, "the first finished shard")
            victim = cluster.workers[0].pid
            executors = process_children(victim)
            assert executors, "worker 0 runs no executor"
            for pid in [*executors, victim]:  # the worker JVM and its executor, by PID
                os.kill(pid, signal.SIGKILL)
            assert driver.wait(timeout=600) == 0, (tmp_path / "driver.log").read_text()[-3000:]
        finally:
            if driver.poll() is None:
                driver.kill()
        assert cluster.alive_workers() == 1
        assert_same_features(local_run, output)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 with a bucket in eu-west-1, and the s3a jars."""
    import boto3

    jars = s3a_jars(Path.home() / ".cache" / "orchard" / "s3a-jars")
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="eu-west-1",
                              aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"])
        client.create_bucket(Bucket="fruits", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        yield endpoint, client, jars


def test_s3a_input_to_s3a_output_through_a_real_s3_server(s3, collection, local_run):
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    endpoint, client, jars = s3
    for path in sorted(collection.rglob("*.jpg")):
        client.upload_file(str(path), "fruits", f"in/fruits/{path.relative_to(collection)}")
    result = orchard("run", "s3a://fruits/in/fruits", "--output", "s3a://fruits/out", "--weights", "random",
                     "--k", "5", "--s3-endpoint", endpoint, "--s3-region", "eu-west-1",
                     "--conf", f"spark.jars={','.join(map(str, jars))}",
                     *[part for key, value in S3A_JARS_CONF.items() for part in ("--conf", f"{key}={value}")],
                     env=AWS_ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "images 200  classes 4  ok 200  errors 0" in result.stdout

    keys = {o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket="fruits", Prefix="out/")
            for o in page.get("Contents", [])}
    assert "out/_SUCCESS" in keys and "out/run.json" in keys
    assert not any(key.startswith("out/_work/") for key in keys)
    run_json = client.get_object(Bucket="fruits", Key="out/run.json")["Body"].read().decode()
    secret = AWS_ENV["AWS_SECRET_ACCESS_KEY"]
    assert secret not in run_json and secret not in result.stdout + result.stderr
    assert '"listed": 200' in run_json

    filesystem = pafs.S3FileSystem(endpoint_override=endpoint.split("//")[1], scheme="http", region="eu-west-1",
                                   access_key=AWS_ENV["AWS_ACCESS_KEY_ID"], secret_key=secret)
    features = pq.read_table("fruits/out/features", filesystem=filesystem).to_pandas()
    assert len(features) == 200 and {len(v) for v in features["features"]} == {1280}
    local = features_by_path(local_run)
    for path, vector in zip(features["path"], features["features"], strict=True):
        assert path.startswith("s3a://fruits/in/fruits/")
        assert np.array_equal(vector, local[path.split("fruits/in/fruits/", 1)[1]])
    pca = pd.read_parquet(io.BytesIO(client.get_object(
        Bucket="fruits", Key=next(k for k in sorted(keys) if k.startswith("out/pca/") and k.endswith(".parquet"))
    )["Body"].read()))
    assert {len(v) for v in pca["pca"]} == {5}


def test_packed_environment_runs_on_the_cluster_in_client_mode(cluster, collection, local_run, tmp_path):
    """`orchard package` builds the archive; spark-submit ships it and executors run its Python."""
    import shlex

    archive = tmp_path / "dist" / "orchard-env.tar.gz"
    output, builds = tmp_path / "out", tmp_path / "builds.log"
    made = orchard("package", "--output", str(archive), "--master", cluster.master_url, "--",
                   str(collection), "--output", str(output), "--weights", "random", "--k", "5", "--no-progress",
                   "--conf", f"spark.executorEnv.ORCHARD_MODEL_BUILD_LOG={builds}")
    assert made.returncode == 0, made.stderr[-3000:]
    assert archive.is_file() and (archive.parent / "requirements.txt").is_file()
    line = made.stdout.strip().splitlines()[-1]
    assert "--archives" in line and "spark.pyspark.python=./environment/bin/python" in line
    command = shlex.split(line)
    command[0] = str(Path(sys.executable).with_name("spark-submit"))
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_HOME": str(SPARK_HOME)}
    env.pop("PYSPARK_PYTHON", None)  # the archive's Python must come from spark.pyspark.python alone
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_features(local_run, output)
    pythons = {line.split()[2] for line in builds.read_text().splitlines()}
    assert pythons and all(p.endswith("environment/bin/python") for p in pythons), pythons


def test_a_python_worker_killed_mid_task_is_retried_and_output_identical(cluster, collection, local_run, tmp_path):
    """A transient task failure with no hook in the code: one forked Python worker gets SIGKILL mid-task."""
    output = tmp_path / "out"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    command = [sys.executable, "-m", "orchard.cli", "run", str(collection), "--output", str(output), "--weights",
               "random", "--k", "5", "--master", cluster.master_url, "--shard-size", "50", "--images-per-task",
               "5", "--no-progress"]
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        stats = output / "_work" / "stats"
        wait_for(lambda: stats.is_dir() and any(stats.iterdir()) and python_workers(), 240, "a busy Python worker")
        victim = python_workers()[0]
        os.kill(victim, signal.SIGKILL)
        assert driver.wait(timeout=600) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
    assert not Path(f"/proc/{victim}").exists()
    assert_same_features(local_run, output)
    assert cluster.alive_workers() == 2  # the executors survived; only the task was retried


def test_an_oversized_batch_fails_fast_with_one_line_naming_the_setting(cluster, collection, local_run, tmp_path):
    """A Python worker under spark.executor.pyspark.memory (RLIMIT_AS) gets a batch that cannot fit."""
    output = tmp_path / "out"
    common = ("run", str(collection), "--output", str(output), "--weights", "random", "--k", "5", "--master",
              cluster.master_url, "--no-progress", "--conf", "spark.executor.pyspark.memory=3g")
    failed = orchard(*common, "--batch-size", "128", timeout=300)  # 128 images x MobileNetV2: > 3 GiB
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert re.fullmatch(
        r"orchard: error: Python worker out of memory: \d+ images embedded in inference batches of --batch-size 128 "
        r"do not fit in spark\.executor\.pyspark\.memory=3072m: lower --batch-size \(8 is the default\) or raise "
        r"spark\.executor\.pyspark\.memory \(finished shards are kept: rerun to resume\)",
        failed.stderr.strip().splitlines()[-1])
    assert "Traceback" not in failed.stderr
    assert not (output / "_SUCCESS").exists()
    rerun = orchard(*common)  # the default --batch-size fits; the same output resumes and completes
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_same_features(local_run, output)
