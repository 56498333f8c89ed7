"""The one seam between orchard and the kind of Spark it runs on: classic (py4j, 3.5 and 4.x) or Spark Connect.

Everything engine-specific lives here, behind `engine_for(spark)`: how the model reaches the executors
(classic: `SparkContext.broadcast`; Connect: one session artifact), how many tasks run at once, how a job's
progress is watched, how a root folder is written in listed paths, and what run.json records of the engine.
The rest of orchard uses only the DataFrame API and pyspark.ml, which both engines share.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

ProgressCallback = Callable[[float], None]  # called with the share (0..1) of a job's tasks finished


def is_connect(spark) -> bool:
    """True for a Spark Connect session (its class lives in pyspark.sql.connect; no import needed to tell)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def engine_for(spark) -> Engine:
    """The engine of a session."""
    return ConnectEngine(spark) if is_connect(spark) else ClassicEngine(spark)


@dataclass(frozen=True)
class BroadcastModel:
    """Model bytes in a classic Spark broadcast: each executor fetches them once, workers read them locally."""

    broadcast: object

    def load(self) -> bytes:
        """The model bytes (on a Python worker)."""
        return self.broadcast.value

    def release(self) -> None:
        """Free the broadcast on the executors and the driver."""
        self.broadcast.destroy()


@dataclass(frozen=True)
class ArtifactModel:
    """Model bytes shipped once as a Spark Connect session file artifact (the server copies it to executors)."""

    name: str

    def load(self) -> bytes:
        """The model bytes (on a Python worker), from the session's files."""
        from pyspark import SparkFiles

        return Path(SparkFiles.get(self.name)).read_bytes()

    def release(self) -> None:
        """Nothing to do: artifacts live as long as the session."""


class Engine:
    """What differs between engines; one instance per session in use."""

    kind = ""

    def __init__(self, spark) -> None:
        self.spark = spark

    def task_cpus(self) -> int:
        """CPUs per task: orchard gives ONNX Runtime this many threads per Python worker."""
        return int(self.spark.conf.get("spark.task.cpus", "1"))

    def task_slots(self) -> int:
        """How many tasks run at once: the cluster's cores divided by spark.task.cpus."""
        return max(1, self.cores() // self.task_cpus())

    def cores(self) -> int:
        """The cluster's cores (Spark's default parallelism)."""
        raise NotImplementedError

    def ship_model(self, onnx_bytes: bytes, key: str):
        """Send the model bytes to the executors once; returns a picklable handle with `load()` and `release()`."""
        raise NotImplementedError

    def watch(self, group: str, report: ProgressCallback):
        """A context manager: while its block runs Spark jobs, `report` gets the share of the tasks done in the
        stage after their first shuffle (orchard's UDF runs there; the stage before it only spreads the paths).

        With adaptive execution that first stage is a job of its own, whose tasks all finish before any UDF
        task starts: counting it would report a shard all done at once, then half done, then done again.
        """
        raise NotImplementedError

    def qualify(self, root: str) -> str:
        """`root` as Spark writes it in listed paths (e.g. file:/abs/dir, s3a://bucket/dir)."""
        raise NotImplementedError

    def facts(self) -> dict:
        """What run.json records of the engine (no secrets)."""
        return {"engine": self.kind, "version": self.spark.version, "task_slots": self.task_slots(),
                "task_cpus": self.task_cpus()}


class ClassicEngine(Engine):
    """A classic session: the driver JVM is reachable through py4j."""

    kind = "classic"

    @property
    def context(self):
        """The SparkContext."""
        return self.spark.sparkContext

    def cores(self) -> int:
        """The default parallelism of the SparkContext."""
        return self.context.defaultParallelism

    def ship_model(self, onnx_bytes: bytes, key: str) -> BroadcastModel:
        """`SparkContext.broadcast`, once per run."""
        return BroadcastModel(self.context.broadcast(onnx_bytes))

    @contextmanager
    def watch(self, group: str, report: ProgressCallback) -> Iterator[None]:
        """Run the block under a job group while a thread reads the status tracker every half second."""
        context = self.context
        context.setJobGroup(group, group)
        stop = threading.Event()

        def poll() -> None:
            tracker = context.statusTracker()
            while not stop.wait(0.5):
                tasks = completed = 0
                for job_id in tracker.getJobIdsForGroup(group):
                    job = tracker.getJobInfo(job_id)
                    # the last stage of a job that reads a shuffle (so has earlier stages) runs the UDF
                    stage = tracker.getStageInfo(max(job.stageIds)) if job and len(job.stageIds) > 1 else None
                    if stage:
                        tasks, completed = tasks + stage.numTasks, completed + stage.numCompletedTasks
                report(completed / tasks if tasks else 0.0)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            context.setLocalProperty("spark.jobGroup.id", None)

    def qualify(self, root: str) -> str:
        """Qualified by the root's Hadoop FileSystem (a scheme-less path takes the default file system)."""
        jvm = self.context._jvm
        path = jvm.org.apache.hadoop.fs.Path(root)
        filesystem = path.getFileSystem(self.context._jsc.hadoopConfiguration())
        return str(filesystem.makeQualified(path).toString()).rstrip("/")

    def facts(self) -> dict:
        """Also the master, the JVM's BLAS/LAPACK (native ones make MLlib faster) and its class-data state."""
        from orchard import classdata

        netlib = self.context._jvm.dev.ludovic.netlib
        java_options = self.context.getConf().get("spark.driver.extraJavaOptions", "")
        return {**super().facts(), "master": self.context.master,
                "jvm_blas": str(netlib.blas.BLAS.getInstance().getClass().getSimpleName()),
                "jvm_lapack": str(netlib.lapack.LAPACK.getInstance().getClass().getSimpleName()),
                "jvm_class_data": classdata.state(java_options)}


class ConnectEngine(Engine):
    """A Spark Connect session: only the DataFrame API, no SparkContext, no py4j."""

    kind = "connect"
    shipped: ClassVar[dict[str, set[str]]] = {}  # session id -> artifact names already added
    known_cores: ClassVar[dict[str, int]] = {}  # session id -> cores

    def cores(self) -> int:
        """Partitions of a plain `range`, which Spark cuts by its default parallelism (one small job, once)."""
        session = self.spark.session_id
        if session not in self.known_cores:
            from pyspark.sql import functions as F

            partitions = self.spark.range(0, 1 << 20).select(F.spark_partition_id().alias("p")).distinct()
            self.known_cores[session] = max(1, partitions.count())
        return self.known_cores[session]

    def ship_model(self, onnx_bytes: bytes, key: str) -> ArtifactModel:
        """One file artifact per session and model (a second run in the same session reuses it)."""
        name = f"orchard-model-{key}.onnx"
        shipped = self.shipped.setdefault(self.spark.session_id, set())
        if name not in shipped:
            with tempfile.TemporaryDirectory(prefix="orchard-model-") as folder:
                path = Path(folder) / name
                path.write_bytes(onnx_bytes)
                self.spark.addArtifacts(str(path), file=True)
            shipped.add(name)
        return ArtifactModel(name)

    @contextmanager
    def watch(self, group: str, report: ProgressCallback) -> Iterator[None]:
        """Progress handlers: the server streams each operation's stages with their finished tasks."""

        def handler(stages, inflight_tasks, operation_id, done) -> None:
            stages = list(stages or [])
            if len(stages) > 1 and not done:  # the first stage alone only spreads the path list
                last = max(stages, key=lambda stage: stage.stage_id)  # the stage that runs the UDF
                report(last.num_completed_tasks / last.num_tasks if last.num_tasks else 0.0)

        self.spark.addTag(group)
        self.spark.registerProgressHandler(handler)
        try:
            yield
        finally:
            self.spark.removeProgressHandler(handler)
            self.spark.removeTag(group)

    def qualify(self, root: str) -> str:
        """A URI stays as it is; a plain path is a local one (file:/abs), as `local` Connect servers read it."""
        if urlsplit(root).scheme:
            return root.rstrip("/")
        return "file:" + str(Path(root).absolute()).rstrip("/")

    def facts(self) -> dict:
        """Also where the server is (without the token or other parameters of the URL)."""
        return {**super().facts(), "remote": f"sc://{self.spark.client._builder.endpoint}"}
