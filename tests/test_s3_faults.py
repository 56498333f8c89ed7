"""S3 under faults: 503 SlowDown, reset connections and slow answers (infra.FaultProxy in front of moto).

A passing failure is retried (pyarrow's S3 retry strategy, then orchard's own loop in io/reader.py; S3A's
policy on Spark's side) and is never recorded as a bad image; if it persists the task fails, never a row
in errors/. A prefix the credentials may not read ends the run with one line.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import orchard
from infra import AWS_ENV, S3A_JARS_CONF, Faults, fault_proxy, moto_server, s3a_jars

from orchard.errors import TRANSIENT_MARK, TransientReadError
from orchard.io import fs, reader
from orchard.preprocess import ImageError
from orchard.sample import SampleSpec, make_sample

BUCKET = "fruits"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 with a bucket in eu-west-1; yields (endpoint, client)."""
    import boto3

    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="eu-west-1",
                              aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"])
        client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        yield endpoint, client


@pytest.fixture
def aws_env(monkeypatch):
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)


def put_objects(client, prefix: str, count: int, seed: int = 0) -> dict[str, bytes]:
    """`count` objects of 1-40 KB of random bytes under `prefix`; returns s3 URI -> content."""
    rng = random.Random(seed)
    objects = {}
    for index in range(count):
        key, data = f"{prefix}/{index:03d}.jpg", rng.randbytes(rng.randint(1_000, 40_000))
        client.put_object(Bucket=BUCKET, Key=key, Body=data)
        objects[f"s3://{BUCKET}/{key}"] = data
    return objects


@pytest.mark.e2e
def test_reads_through_throttling_resets_and_slow_answers_return_the_exact_bytes(s3, aws_env):
    endpoint, client = s3
    objects = put_objects(client, "reads", 24)
    faults = Faults(share=0.3, reset_share=0.4, stubborn_share=0.1, stubborn_streak=2 * fs.S3_REQUEST_ATTEMPTS,
                    delay_share=0.1, seed=3)  # stubborn: every pyarrow attempt fails, orchard's loop retries
    with fault_proxy(endpoint, faults) as proxy:
        storage = fs.StorageOptions(proxy.endpoint, "eu-west-1")
        blobs, retries = reader.read_all(list(objects), 10**6, threads=8, storage=storage)
        assert reader.read_many(list(objects)[:3], 10**6, threads=2, storage=storage) == list(objects.values())[:3]
    assert blobs == list(objects.values())  # every object, exactly; no ImageError
    assert sum(retries) > 0  # some reads outlasted pyarrow's attempts and were retried by orchard
    assert proxy.counts["slowdown"] > 0 and proxy.counts["reset"] > 0 and proxy.counts["delay"] > 0, proxy.counts


@pytest.mark.e2e
def test_a_read_that_keeps_failing_raises_a_transient_error_never_an_image_error(s3, aws_env):
    endpoint, client = s3
    client.put_object(Bucket=BUCKET, Key="stuck/tiny.jpg", Body=b"\xff\xd8" + b"x" * 62)
    client.put_object(Bucket=BUCKET, Key="denied/secret.jpg", Body=b"\xff\xd8" + b"x" * 62)
    # A 64-byte object: the 503's XML body does not fit the ranged read's buffer, so pyarrow reports
    # INTERNAL_FAILURE ("Failed to flush response stream") and does not retry; orchard's loop does.
    faults = Faults(always=(f"/{BUCKET}/stuck/tiny.jpg",), deny_prefix=f"/{BUCKET}/denied/", methods=("GET",))
    policy = reader.RetryPolicy(attempts=3, base=0.05)
    with fault_proxy(endpoint, faults) as proxy:
        storage = fs.StorageOptions(proxy.endpoint, "eu-west-1")
        with pytest.raises(TransientReadError) as raised:
            reader.read_file(f"s3://{BUCKET}/stuck/tiny.jpg", 10**6, storage, policy)
        assert not isinstance(raised.value, ImageError) and isinstance(raised.value, OSError)
        assert str(raised.value).startswith(f"{TRANSIENT_MARK} reading s3://{BUCKET}/stuck/tiny.jpg failed 3 times")
        assert raised.value.attempts == 3 and raised.value.uri == f"s3://{BUCKET}/stuck/tiny.jpg"
        with pytest.raises(TransientReadError):  # never a row among the others
            reader.read_many([f"s3://{BUCKET}/stuck/tiny.jpg", f"s3://{BUCKET}/denied/secret.jpg"], 10**6, 2,
                             storage, policy)
        denied, retries = reader.read_counted(f"s3://{BUCKET}/denied/secret.jpg", 10**6, storage, policy)
        missing, _ = reader.read_counted(f"s3://{BUCKET}/stuck/none.jpg", 10**6, storage, policy)
    assert proxy.counts["slowdown"] >= 3 and proxy.counts["denied"] > 0
    assert isinstance(denied, ImageError) and denied.reason == "permission denied" and retries == 0
    assert isinstance(missing, ImageError) and missing.reason == reader.VANISHED


@pytest.mark.pure
@pytest.mark.parametrize(("message", "reason"), [
    ("When reading information for key 'in/x.jpg' in bucket 'b': AWS Error UNKNOWN (HTTP status 503) during "
     "HeadObject operation: No response body.", None),
    ("When reading information for key 'in/x.jpg' in bucket 'b': AWS Error NETWORK_CONNECTION during HeadObject "
     "operation: curlCode: 56, Failure when receiving data from the peer; Details: Recv failure: Connection reset "
     "by peer", None),
    ("AWS Error SLOW_DOWN during GetObject operation: Please reduce your request rate.", None),
    ("AWS Error INTERNAL_FAILURE during GetObject operation: Failed to flush response stream (eof: 0, bad: 1)", None),
    ("AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 28, Timeout was reached", None),
    ("something nobody has seen before", None),
    ("When reading information for key 'in/x.jpg' in bucket 'b': AWS Error ACCESS_DENIED during HeadObject "
     "operation: No response body.", "permission denied"),
    ("AWS Error NO_SUCH_KEY during GetObject operation: The specified key does not exist.", reader.VANISHED),
])
def test_only_clearly_permanent_read_errors_are_image_errors(message, reason):
    assert reader.permanent_reason(OSError(message)) == reason


@pytest.mark.pure
def test_permanent_local_errors_stay_image_errors():
    assert reader.permanent_reason(FileNotFoundError(2, "gone")) == reader.VANISHED
    assert reader.permanent_reason(PermissionError(13, "no")) == "permission denied"
    assert reader.permanent_reason(IsADirectoryError(21, "dir")) == "is a directory, not a file"
    assert reader.permanent_reason(OSError(5, "Input/output error")) is None  # EIO may pass: retried


@pytest.mark.pure
def test_spark_gets_an_explicit_s3a_retry_policy_and_a_stuck_job_one_line():
    from orchard import s3a as s3conf
    from orchard.spark import transient_failure

    conf = s3conf.spark_conf(fs.StorageOptions("http://127.0.0.1:9000"), "s3://b/in")
    for key in ("attempts.maximum", "retry.limit", "retry.interval", "retry.throttle.limit",
                "retry.throttle.interval", "connection.establish.timeout", "connection.timeout"):
        assert f"spark.hadoop.fs.s3a.{key}" in conf
    job = RuntimeError(f"Job aborted\norchard.errors.TransientReadError: {TRANSIENT_MARK} reading s3://b/x.jpg "
                       "failed 4 times (the last: 503)\n  at org.apache...")
    assert transient_failure(job) == "storage kept failing: reading s3://b/x.jpg failed 4 times (the last: 503)"
    assert transient_failure(RuntimeError("Job aborted: something else")) is None


def s3_run_args(endpoint: str, jars: list[Path]) -> list[str]:
    return ["--weights", "random", "--k", "3", "--master", "local[2]", "--no-progress", "--io-threads", "8",
            "--s3-endpoint", endpoint, "--s3-region", "eu-west-1", "--conf", f"spark.jars={','.join(map(str, jars))}",
            *[part for key, value in S3A_JARS_CONF.items() for part in ("--conf", f"{key}={value}")]]


def keys_under(client, prefix: str) -> set[str]:
    return {o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
            for o in page.get("Contents", [])}


def dataset(client, prefix: str) -> pd.DataFrame:
    """A Parquet dataset folder on the server, as one frame sorted by path."""
    import io

    parts = sorted(key for key in keys_under(client, prefix) if key.endswith(".parquet"))
    frames = [pd.read_parquet(io.BytesIO(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())) for key in parts]
    return pd.concat(frames, ignore_index=True).sort_values("path", ignore_index=True)


@pytest.fixture(scope="module")
def collection(s3, tmp_path_factory) -> str:
    """48 images under s3://fruits/in/fruits (4 classes, 9 train + 3 test each)."""
    _, client = s3
    root = tmp_path_factory.mktemp("faults") / "fruits"
    make_sample(root, SampleSpec(classes=4, train_per_class=9, test_per_class=3, seed=11))
    for path in sorted(root.rglob("*.jpg")):
        client.upload_file(str(path), BUCKET, f"in/fruits/{path.relative_to(root)}")
    return f"s3a://{BUCKET}/in/fruits"


@pytest.fixture(scope="module")
def jars() -> list[Path]:
    return s3a_jars(Path.home() / ".cache" / "orchard" / "s3a-jars")


@pytest.mark.e2e
def test_an_s3_run_under_faults_equals_a_run_without_and_counts_its_retries(s3, collection, jars, aws_env):
    endpoint, client = s3
    clean = orchard("run", collection, "--output", f"s3a://{BUCKET}/out-clean", *s3_run_args(endpoint, jars),
                    env=AWS_ENV)
    assert clean.returncode == 0, clean.stderr[-3000:]
    # Spark's s3a traffic (listing, its reads and writes of the rows and datasets) and pyarrow's (image reads
    # on executors, the driver's stats, manifest and run.json) both go through the proxy.
    faults = Faults(share=0.05, reset_share=0.4, stubborn_share=0.1, stubborn_streak=2 * fs.S3_REQUEST_ATTEMPTS,
                    stubborn_agent="aws-sdk-cpp", delay_share=0.03, methods=("GET", "HEAD", "PUT", "POST", "DELETE"),
                    seed=5)  # stubborn: pyarrow's image reads outlast its attempts, orchard's loop retries them
    with fault_proxy(endpoint, faults) as proxy:
        faulty = orchard("run", collection, "--output", f"s3a://{BUCKET}/out-faulty",
                         *s3_run_args(proxy.endpoint, jars), env=AWS_ENV)
    assert faulty.returncode == 0, faulty.stderr[-3000:]
    assert proxy.counts["slowdown"] > 0 and proxy.counts["reset"] > 0 and proxy.counts["delay"] > 0, proxy.counts
    assert "images 48  classes 4  ok 48  errors 0" in faulty.stdout

    info = json.loads(client.get_object(Bucket=BUCKET, Key="out-faulty/run.json")["Body"].read())
    assert info["counts"]["errors"] == 0 and info["counts"]["ok"] == 48
    assert info["storage"]["read_retries"] > 0  # orchard's own retries, from the rows' read_retries column
    assert info["storage"]["read_retries"] == sum(shard["read_retries"] for shard in info["shards"])
    clean_info = json.loads(client.get_object(Bucket=BUCKET, Key="out-clean/run.json")["Body"].read())
    assert clean_info["storage"]["read_retries"] == 0
    assert "out-faulty/_SUCCESS" in keys_under(client, "out-faulty/")
    assert dataset(client, "out-faulty/errors/").empty

    def by_rel(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.assign(path=frame["path"].str.split("/in/fruits/", n=1).str[1]).sort_values(
            "path", ignore_index=True)

    left, right = by_rel(dataset(client, "out-clean/features/")), by_rel(dataset(client, "out-faulty/features/"))
    assert left["path"].tolist() == right["path"].tolist() and len(left) == 48
    for a, b in zip(left["features"], right["features"], strict=True):
        assert np.array_equal(a, b)
    meta = [by_rel(dataset(client, f"{out}/metadata/"))[["path", "bytes", "sha256", "status"]]
            for out in ("out-clean", "out-faulty")]
    pd.testing.assert_frame_equal(meta[0], meta[1])

    # The Python API takes the endpoint as an argument, for that call only (no AWS_ENDPOINT_URL is set here).
    from orchard.report import write_report
    from orchard.verify import verify

    storage = fs.StorageOptions(endpoint, "eu-west-1")
    assert all(finding.ok for finding in verify(f"s3a://{BUCKET}/out-faulty", storage))
    assert write_report(f"s3a://{BUCKET}/out-faulty", storage=storage) == f"s3a://{BUCKET}/out-faulty/report/index.html"
    assert "out-faulty/report/index.html" in keys_under(client, "out-faulty/report/")
    with pytest.raises(OSError):  # each call uses its own: a dead endpoint fails though the last call's worked
        verify(f"s3a://{BUCKET}/out-faulty", fs.StorageOptions("http://127.0.0.1:9", "eu-west-1"))


@pytest.mark.e2e
def test_a_prefix_the_credentials_may_not_read_ends_the_run_with_one_line(s3, collection, jars):
    endpoint, client = s3
    with fault_proxy(endpoint, Faults(deny_prefix=f"/{BUCKET}/in/")) as proxy:
        result = orchard("run", collection, "--output", f"s3a://{BUCKET}/out-denied",
                         *s3_run_args(proxy.endpoint, jars), env=AWS_ENV, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and proxy.counts["denied"] > 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"orchard: error: cannot list the input {collection}: access denied"), last
    assert [line for line in result.stderr.splitlines() if line.startswith("orchard:")] == [last]
    assert not any(key.endswith("_SUCCESS") for key in keys_under(client, "out-denied/"))
