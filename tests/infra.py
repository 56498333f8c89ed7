"""Real processes for the tests: an S3-compatible server (moto), the s3a jars, a standalone Spark cluster.

Everything listens on 127.0.0.1, every wait is bounded, and every process started here is stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pyspark

SPARK_HOME = Path(pyspark.__file__).resolve().parent
S3A_JARS = ("hadoop-aws-3.3.1.jar", "aws-java-sdk-bundle-1.11.901.jar")
# Spark 4's Hadoop 3.4 names AWS SDK v2 classes as its default s3a credential providers; hadoop-aws 3.3.1 has
# SDK v1, so with these jars the environment provider is named explicitly (a real cluster uses matching jars).
S3A_JARS_CONF = {} if pyspark.__version__.startswith("3.") else {
    "spark.hadoop.fs.s3a.aws.credentials.provider": "com.amazonaws.auth.EnvironmentVariableCredentialsProvider"}
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "orchard-test-key",
    "AWS_SECRET_ACCESS_KEY": "orchard-test-secret-never-printed",
    "AWS_DEFAULT_REGION": "eu-west-1",
    "AWS_REGION": "eu-west-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout: float, what: str, interval: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def stop(process: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)


@contextlib.contextmanager
def moto_server(log: Path):
    """moto's S3 server on a free loopback port; yields its endpoint URL."""
    port = free_port()
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: port_open(port), 60, "moto server")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


@contextlib.contextmanager
def connect_server(log: Path, master: str = "local[2]", conf: dict[str, str] | None = None):
    """A real Spark Connect server (pyspark 4.x bundles it) on a free loopback port; yields its sc:// URL."""
    port = free_port()
    settings = {"spark.connect.grpc.binding.address": "127.0.0.1", "spark.connect.grpc.binding.port": str(port),
                **(conf or {})}
    command = [str(SPARK_HOME / "bin" / "spark-submit"), "--class",
               "org.apache.spark.sql.connect.service.SparkConnectServer", "--master", master,
               *[part for key, value in settings.items() for part in ("--conf", f"{key}={value}")], "spark-internal"]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "SPARK_HOME": str(SPARK_HOME)})
    try:
        wait_for(lambda: "Spark Connect server started" in log.read_text() or process.poll() is not None, 120,
                 "the Spark Connect server")
        if process.poll() is not None:
            raise RuntimeError(f"the Spark Connect server exited: {log.read_text()[-2000:]}")
        yield f"sc://127.0.0.1:{port}"
    finally:
        stop(process)


def other_pyspark(cache: Path) -> tuple[Path, str]:
    """The pyspark of the other supported major (3.5 beside 4.x, 4.x beside 3.5), installed once into the cache
    without dependencies (both use py4j 0.10.9.9 and this venv's pandas/pyarrow); returns (folder to put first
    on PYTHONPATH, its version)."""
    spec = "pyspark>=3.5,<3.6" if pyspark.__version__.startswith("4.") else "pyspark>=4,<5"
    folder = cache / ("pyspark-3.5" if spec.endswith("3.6") else "pyspark-4")
    if not folder.is_dir():  # installed beside it, then renamed: an interrupted install is never used
        partial = folder.with_name(folder.name + f".{os.getpid()}.part")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(partial), spec],
                       check=True, timeout=900)
        partial.rename(folder)
    version = subprocess.run([sys.executable, "-c", "import pyspark; print(pyspark.__version__)"], check=True,
                             capture_output=True, text=True, env=with_pyspark(folder), timeout=60).stdout.strip()
    return folder, version


def with_pyspark(folder: Path) -> dict[str, str]:
    """This environment with `folder`'s pyspark first on the path (for the driver and its Python workers)."""
    env = {key: value for key, value in os.environ.items() if key != "SPARK_HOME"}
    env["PYTHONPATH"] = os.pathsep.join([str(folder), *filter(None, [env.get("PYTHONPATH")])])
    return env


def s3a_jars(cache: Path) -> list[Path]:
    """hadoop-aws and the AWS SDK bundle, taken once from the sagemaker-pyspark sdist on PyPI."""
    jars = [cache / name for name in S3A_JARS]
    if all(jar.is_file() for jar in jars):
        return jars
    cache.mkdir(parents=True, exist_ok=True)
    download = cache / "download"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                    "sagemaker-pyspark==1.4.5", "-d", str(download)], check=True, timeout=600)
    archive = next(download.glob("sagemaker_pyspark-*.tar.gz"))
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if Path(member.name).name in S3A_JARS:
                member.name = Path(member.name).name
                tar.extract(member, cache, filter="data")
    archive.unlink()
    return jars


@dataclass
class Cluster:
    """A standalone master and its workers, all JVMs started with spark-class."""

    master_url: str
    ui_port: int
    master: subprocess.Popen
    workers: list[subprocess.Popen] = field(default_factory=list)

    def state(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=5) as response:
            return json.load(response)

    def alive_workers(self) -> int:
        try:
            return sum(worker["state"] == "ALIVE" for worker in self.state()["workers"])
        except OSError:
            return 0


def process_children(pid: int) -> list[int]:
    """Direct children of a process (the executors a worker JVM launched)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    children.append(int(entry.name))
    return children


def python_workers() -> list[int]:
    """PIDs of forked PySpark Python workers (children of a pyspark.daemon, not the daemon itself)."""
    def command(pid: int) -> str:
        with contextlib.suppress(OSError):
            return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        return ""

    workers = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and "pyspark.daemon" in command(int(entry.name)):
            with contextlib.suppress(OSError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if "pyspark.daemon" in command(parent):
                    workers.append(int(entry.name))
    return workers


@contextlib.contextmanager
def standalone_cluster(workdir: Path, workers: int = 2, cores: int = 1, memory: str = "2g"):
    """A real multi-process Spark standalone cluster on 127.0.0.1 (pip pyspark has no start-master.sh)."""
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "SPARK_HOME": str(SPARK_HOME)}
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    port, ui_port = free_port(), free_port()
    workdir.mkdir(parents=True, exist_ok=True)

    def start(args: list[str], name: str) -> subprocess.Popen:
        with open(workdir / f"{name}.log", "w") as out:
            return subprocess.Popen([spark_class, *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    master = start(["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                    "--webui-port", str(ui_port)], "master")
    cluster = Cluster(f"spark://127.0.0.1:{port}", ui_port, master)
    try:
        wait_for(lambda: port_open(port) and port_open(ui_port), 90, "the Spark master")
        for index in range(workers):
            cluster.workers.append(start([
                "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", str(cores),
                "--memory", memory, "--webui-port", str(free_port()), "--work-dir", str(workdir / f"w{index}"),
                cluster.master_url], f"worker{index}"))
        wait_for(lambda: cluster.alive_workers() == workers, 90, f"{workers} Spark workers")
        yield cluster
    finally:
        for process in [*cluster.workers, master]:
            stop(process)
