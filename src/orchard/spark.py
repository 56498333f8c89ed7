"""All Spark glue in one place: the session factory, the model broadcast and the pandas UDF.

The ONNX model bytes are read once on the driver and broadcast once (`SparkContext.broadcast`); each
Python worker turns them into an ONNX Runtime session on first use and keeps it (runtime.worker_session),
so a reused worker builds its session once, however many tasks and batches it serves.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from orchard import classdata
from orchard.config import SparkOptions
from orchard.featurize import runtime
from orchard.featurize.batch import StageSeconds, WorkerSettings, featurize_paths
from orchard.featurize.weights import orchard_cache_dir

RESULT_SCHEMA = (
    "features array<float>, width int, height int, bytes bigint, sha256 string, stage string, error string"
)

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


def get_session(options: SparkOptions | None = None, defaults: dict[str, str] | None = None):
    """A SparkSession: `options.master` if given, else spark-submit's choice (local[*] by default).

    Workers run this interpreter unless PYSPARK_PYTHON says otherwise (a venv's packages must be there).
    `defaults` (e.g. S3 settings) sit between orchard's defaults and the user's --conf, which wins.
    """
    from pyspark.sql import SparkSession

    options = options or SparkOptions()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(options.app_name)
    if options.master:  # else spark-submit decides: its --master, spark-defaults.conf, $MASTER, or local[*]
        builder = builder.master(options.master)
    class_data = classdata.plan(orchard_cache_dir(), spark_home())
    quiet = {"spark.driver.extraJavaOptions": " ".join([f"-Dlog4j2.configurationFile={LOG_CONFIG}",
                                                        *class_data.options])}
    for key, value in {**SESSION_DEFAULTS, **quiet, **(defaults or {}), **options.conf}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    class_data.started(spark)
    spark.sparkContext.setLogLevel(os.environ.get("ORCHARD_SPARK_LOG_LEVEL", "ERROR"))
    return spark


def spark_home() -> Path:
    """The Spark distribution the driver JVM runs (SPARK_HOME, else the pyspark package's own jars)."""
    import pyspark

    return Path(os.environ.get("SPARK_HOME") or Path(pyspark.__file__).parent)


def task_cpus(spark) -> int:
    """CPUs per task: orchard gives ONNX Runtime this many threads per Python worker."""
    return int(spark.conf.get("spark.task.cpus", "1"))


def task_slots(spark) -> int:
    """How many tasks run at once: the cluster's cores divided by spark.task.cpus."""
    return max(1, spark.sparkContext.defaultParallelism // task_cpus(spark))


def linear_algebra(spark) -> dict:
    """Which BLAS/LAPACK the driver JVM uses for MLlib (native ones make the PCA fit several times faster)."""
    netlib = spark.sparkContext._jvm.dev.ludovic.netlib
    return {"jvm_blas": str(netlib.blas.BLAS.getInstance().getClass().getSimpleName()),
            "jvm_lapack": str(netlib.lapack.LAPACK.getInstance().getClass().getSimpleName())}


class StageSecondsParam:
    """AccumulatorParam for [read, preprocess, inference] seconds summed over workers."""

    def zero(self, value):
        """The starting value: no seconds in any stage."""
        return [0.0, 0.0, 0.0]

    def addInPlace(self, a, b):
        """Sum two [read, preprocess, inference] lists (a task's update into the total)."""
        return [x + y for x, y in zip(a, b, strict=True)]


def broadcast_model(spark, onnx_bytes: bytes):
    """Broadcast the model bytes once; executors fetch them once and workers read them on first use."""
    return spark.sparkContext.broadcast(onnx_bytes)


def featurize_udf(model_broadcast, model_key: str, settings: WorkerSettings, seconds_accumulator):
    """A Scalar Iterator pandas UDF: path -> struct(features, width, height, bytes, sha256, stage, error)."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf(RESULT_SCHEMA)
    def featurize(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        session = runtime.worker_session(model_key, lambda: model_broadcast.value, settings.threads)
        for paths in batches:
            seconds = StageSeconds()
            try:
                frame = featurize_paths(session, paths.tolist(), settings, seconds)
            except Exception as exc:
                if runtime.is_out_of_memory(exc):
                    raise MemoryError(out_of_memory_message(len(paths), settings.chunk)) from exc
                raise
            yield frame
            seconds_accumulator.add(seconds.as_list())

    return featurize


OUT_OF_MEMORY_MARK = "orchard: Python worker out of memory:"
WORKER_DIED_MARK = "Python worker exited unexpectedly"


def out_of_memory_message(images: int, chunk: int) -> str:
    """What a worker raises when a batch does not fit: the settings involved and their values (one line)."""
    limit = os.environ.get("PYSPARK_EXECUTOR_MEMORY_MB")
    where = f"spark.executor.pyspark.memory={limit}m" if limit else "the executor's memory"
    return (f"{OUT_OF_MEMORY_MARK} {images} images embedded in chunks of --batch-size {chunk} do not fit in "
            f"{where}: lower --batch-size (8 is the default) or raise spark.executor.pyspark.memory")


def explain_job_failure(error: Exception) -> str | None:
    """A one-line reason for a failed featurising job when it is about memory, else None."""
    text = str(error)
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
