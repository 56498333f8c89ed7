"""Spark glue: the session factory (classic or Spark Connect) and the featurising pandas UDF.

The model bytes reach the executors once (engine.py: a broadcast on classic, a session artifact on
Connect); each Python worker turns them into an ONNX Runtime session on first use and keeps it
(runtime.worker_session), so a reused worker builds its session once, however many tasks and batches it
serves. Stage seconds come back as columns of the result (schema.SECONDS): no accumulator, any engine.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from orchard import classdata, schema
from orchard.config import SparkOptions
from orchard.errors import TRANSIENT_MARK, ConfigError
from orchard.featurize import runtime
from orchard.featurize.batch import StageSeconds, WorkerSettings, featurize_paths
from orchard.featurize.cpu import REFUSAL_MARK
from orchard.featurize.weights import orchard_cache_dir

LOG_CONFIG = Path(__file__).with_name("log4j2.properties")
SESSION_DEFAULTS = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.maxRecordsPerBatch": "128",  # bounds a Python worker's memory per batch
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "8",
    "spark.sql.parquet.compression.codec": "snappy",
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    "spark.sql.sources.parallelPartitionDiscovery.parallelism": "16",
    "spark.driver.memory": "2g",  # enough for 67,692 images; a larger heap only grows lazily (benchmarks/)
    "spark.python.worker.reuse": "true",
}
RUNTIME_PREFIXES = ("spark.sql.", "spark.hadoop.")  # what a session of a running Connect server may set
CONNECT_PORT = 15002
SUPPORTED = ((3, 5), (4, 99))  # pyspark 3.5.x and every 4.x


def get_session(options: SparkOptions | None = None, defaults: dict[str, str] | None = None):
    """A SparkSession: classic, or Spark Connect when `options.remote`, SPARK_REMOTE or
    `spark.api.mode=connect` asks for it.

    Classic sessions use `options.master` if given, else spark-submit's choice (local[*] by default).
    Workers run this interpreter unless PYSPARK_PYTHON says otherwise (a venv's packages must be there).
    `defaults` (e.g. S3 settings) sit between orchard's defaults and the user's --conf, which wins.
    """
    options = options or SparkOptions()
    remote = remote_url(options)
    builder = _builder(remote is not None)
    builder = builder.appName(options.app_name)
    values = {**SESSION_DEFAULTS, **(defaults or {})}
    class_data = classdata.ClassData()
    if remote is None:
        if options.master:  # else spark-submit decides: its --master, spark-defaults.conf, $MASTER, or local[*]
            builder = builder.master(options.master)
        class_data = classdata.plan(orchard_cache_dir(), spark_home())
        values["spark.driver.extraJavaOptions"] = " ".join([f"-Dlog4j2.configurationFile={LOG_CONFIG}",
                                                            *class_data.options])
    elif remote.startswith("sc://"):
        check_reachable(remote)
        values = {key: value for key, value in values.items() if key.startswith(RUNTIME_PREFIXES)}
    for key, value in {**values, **options.conf}.items():
        if key not in ("spark.remote", "spark.api.mode"):
            builder = builder.config(key, value)
    if remote is not None:
        builder = builder.remote(remote)
    with _workers_run_this_python():
        spark = builder.getOrCreate()
    if remote is None:
        class_data.started(spark)
        spark.sparkContext.setLogLevel(os.environ.get("ORCHARD_SPARK_LOG_LEVEL", "ERROR"))
    return spark


@contextmanager
def _workers_run_this_python() -> Iterator[None]:
    """PYSPARK_PYTHON = this interpreter while a session starts, unless it is set: pyspark has no other way to
    name the workers' Python (the driver reads it when its context starts, the JVM it launches inherits it, and
    an in-process Connect server reads it there). The process's environment is left as it was."""
    if "PYSPARK_PYTHON" in os.environ:
        yield
        return
    os.environ["PYSPARK_PYTHON"] = sys.executable
    try:
        yield
    finally:
        os.environ.pop("PYSPARK_PYTHON", None)


def remote_url(options: SparkOptions) -> str | None:
    """The Spark Connect URL asked for, as pyspark spells it: --remote, spark.remote, SPARK_REMOTE, or
    spark.api.mode=connect (then the master, e.g. local[2], runs a Connect server in-process). None: classic."""
    remote = options.remote or options.conf.get("spark.remote") or os.environ.get("SPARK_REMOTE")
    if remote is None and options.conf.get("spark.api.mode", "").lower() == "connect":
        remote = options.master or "local[*]"
    return remote


def _builder(connect: bool):
    """SparkSession.builder, once the installed pyspark is known to support the engine asked for."""
    import pyspark

    version = tuple(int(part) for part in re.findall(r"\d+", pyspark.__version__)[:2])
    if not SUPPORTED[0] <= version <= SUPPORTED[1]:
        raise ConfigError(f"pyspark {pyspark.__version__} is not supported: install 3.5.x or 4.x "
                          "(pip install 'pyspark>=3.5,<5')")
    if connect and version < (4, 0):
        raise ConfigError(f"Spark Connect needs pyspark 4.x, this is {pyspark.__version__}: "
                          "pip install 'orchard[connect]' (or drop --remote / SPARK_REMOTE)")
    from pyspark.sql import SparkSession

    if connect:
        try:
            import pyspark.sql.connect.session  # checks grpcio, zstandard, ... on import
        except ImportError as exc:
            raise ConfigError(f"Spark Connect needs its client libraries ({exc}): "
                              "pip install 'orchard[connect]'") from None
    return SparkSession.builder


def check_reachable(remote: str, timeout: float = 5.0) -> None:
    """A one-line error, naming the server, when nothing listens at a Connect URL (instead of long retries)."""
    host, _, port = remote[len("sc://"):].split("/", 1)[0].partition(":")
    where = f"sc://{host}:{port or CONNECT_PORT}"
    try:
        socket.create_connection((host, int(port or CONNECT_PORT)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise ConfigError(f"cannot reach the Spark Connect server at {where} ({reason}): start it, or fix "
                          "--remote / SPARK_REMOTE") from None


def spark_home() -> Path:
    """The Spark distribution the driver JVM runs (SPARK_HOME, else the pyspark package's own jars)."""
    import pyspark

    return Path(os.environ.get("SPARK_HOME") or Path(pyspark.__file__).parent)


def featurize_udf(model, model_key: str, settings: WorkerSettings):
    """A Scalar Iterator pandas UDF: path -> struct(schema.WORKER_RESULT). `model` is an engine's model
    handle: its `load()` runs on a worker only when that worker has no session for `model_key` yet."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf(schema.ddl(schema.WORKER_RESULT))
    def featurize(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        session = runtime.worker_session(model_key, model.load, settings.threads, settings.precision)
        for paths in batches:
            seconds = StageSeconds()
            try:
                frame = featurize_paths(session, paths.tolist(), settings, seconds)
            except Exception as exc:
                if runtime.is_out_of_memory(exc):
                    raise MemoryError(out_of_memory_message(len(paths), settings.batch_size)) from exc
                raise
            yield frame.assign(**seconds.per_row(len(frame)))

    return featurize


OUT_OF_MEMORY_MARK = "orchard: Python worker out of memory:"
WORKER_DIED_MARK = "Python worker exited unexpectedly"


def out_of_memory_message(images: int, batch_size: int) -> str:
    """What a worker raises when a batch does not fit: the settings involved and their values (one line)."""
    limit = os.environ.get("PYSPARK_EXECUTOR_MEMORY_MB")
    where = f"spark.executor.pyspark.memory={limit}m" if limit else "the executor's memory"
    return (f"{OUT_OF_MEMORY_MARK} {images} images embedded in inference batches of --batch-size {batch_size} "
            f"do not fit in {where}: lower --batch-size (8 is the default) or raise spark.executor.pyspark.memory")


def transient_failure(error: Exception) -> str | None:
    """The one-line reason of a featurising job that failed because storage reads kept failing (throttling,
    resets: io/reader.TransientReadError on every task attempt), else None."""
    text = str(error)
    if TRANSIENT_MARK not in text:
        return None
    return TRANSIENT_MARK.split(": ", 1)[1] + text.split(TRANSIENT_MARK, 1)[1].split("\n", 1)[0]


def explain_job_failure(error: Exception) -> str | None:
    """A one-line reason for a failed featurising job when it is about memory, else None."""
    text = str(error)
    if REFUSAL_MARK in text:  # an executor's CPU cannot run the precision (featurize/cpu.py)
        return text.split(REFUSAL_MARK, 1)[1].split("\n", 1)[0].strip()
    if OUT_OF_MEMORY_MARK in text:
        return OUT_OF_MEMORY_MARK.split(": ", 1)[1] + text.split(OUT_OF_MEMORY_MARK, 1)[1].split("\n", 1)[0]
    if runtime.is_out_of_memory_text(text):
        return ("a Python worker ran out of memory (its limit is spark.executor.pyspark.memory when set): raise "
                "that setting or the executor's memory, or lower --batch-size")
    if WORKER_DIED_MARK in text:
        return ("a Python worker died on every attempt (crashed or killed, e.g. by the out-of-memory killer): "
                "lower --batch-size or --images-per-task, or give executors more memory "
                "(spark.executor.memoryOverhead)")
    return None
