"""Real processes for the tests: an S3-compatible server (moto), the s3a jars, a standalone Spark cluster.

Everything listens on 127.0.0.1, every wait is bounded, and every process started here is stopped.
"""

from __future__ import annotations

import collections
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


SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")
ACCESS_DENIED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
                 b"<Message>Access Denied</Message></Error>")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "content-length"}


@dataclass
class Faults:
    """What a FaultProxy does to requests, deterministically: request `key` (method, path with query, Range,
    the client's kind from its User-Agent) gets a streak of failing attempts from a hash of (seed, key);
    attempt n fails while n <= its streak, so a client that retries long enough always gets through. The
    fault of each failing attempt (503 SlowDown or a reset connection) comes from a hash of (seed, key, n).

    A stubborn streak must outlast a client's own retries to reach the code above it: curl silently resends
    a request once when a reused connection turns out reset, so give it twice the client's attempts."""

    share: float = 0.0  # of the requests: their first attempt fails once
    reset_share: float = 0.3  # of the failing attempts: a reset connection (the rest: 503 SlowDown)
    stubborn_share: float = 0.0  # of the object requests whose key ends with `stubborn_suffix`: fail longer
    stubborn_streak: int = 0  # consecutive failing attempts of a stubborn request
    stubborn_suffix: tuple[str, ...] = (".jpg",)
    stubborn_agent: str = ""  # only requests whose User-Agent starts with this (aws-sdk-cpp: pyarrow's) are stubborn
    delay_share: float = 0.0  # of the requests: the first attempt waits 0.2-1 s before it is forwarded
    delay: tuple[float, float] = (0.2, 1.0)
    always: tuple[str, ...] = ()  # object paths (/bucket/key) answered 503 SlowDown on every attempt
    deny_prefix: str | None = None  # "/bucket/prefix": objects under it and listings of it get 403 AccessDenied
    methods: tuple[str, ...] = ("GET", "HEAD")  # only these are faulted (the deny applies to every method)
    seed: int = 0


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of an S3 server (moto) that injects Faults; counts what it did."""

    def __init__(self, upstream: str, faults: Faults, lifetime: float = 900.0):
        import http.server
        import threading
        from collections import Counter
        from urllib.parse import urlparse

        self.faults, self.upstream = faults, urlparse(upstream)
        self.counts: Counter = Counter()
        self.log: collections.deque = collections.deque(maxlen=20_000)  # (seconds, method, path, attempt, what)
        self._started = time.monotonic()
        self._attempts: Counter = Counter()
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 60  # an idle keep-alive connection ends after this

            def log_message(self, *args) -> None:
                pass

            def do_GET(self):
                proxy._handle(self)

            do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                        daemon=True)
        self._deadline = threading.Timer(lifetime, self.server.shutdown)  # never outlives a stuck test
        self._deadline.daemon = True

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self._deadline.start()
        return self

    def __exit__(self, *exc) -> None:
        self._deadline.cancel()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)

    def _count(self, what: str, handler=None, attempt: int = 0) -> None:
        with self._lock:
            self.counts[what] += 1
            if handler is not None:
                self.log.append((round(time.monotonic() - self._started, 3), handler.command, handler.path, attempt,
                                 what))

    def _share(self, *parts) -> float:
        import hashlib

        digest = hashlib.sha256("|".join(map(str, (self.faults.seed, *parts))).encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def streak(self, method: str, path: str, key: str, agent: str) -> int:
        """How many first attempts of request `key` fail."""
        faults = self.faults
        if method not in faults.methods:
            return 0
        stubborn = "?" not in path and path.endswith(faults.stubborn_suffix) and agent.startswith(faults.stubborn_agent)
        if stubborn and self._share("streak", key) < faults.stubborn_share:
            return faults.stubborn_streak
        return 1 if self._share("once", key) < faults.share else 0

    def denied(self, path: str) -> bool:
        from urllib.parse import parse_qs, unquote, urlparse

        prefix = self.faults.deny_prefix
        if prefix is None:
            return False
        parsed = urlparse(path)
        if unquote(parsed.path).startswith(prefix):
            return True
        bucket, _, key_prefix = prefix.lstrip("/").partition("/")
        listed = parse_qs(parsed.query).get("prefix", [None])[0]
        return unquote(parsed.path).strip("/") == bucket and listed is not None and (
            listed.startswith(key_prefix) or key_prefix.startswith(listed.rstrip("/") + "/"))

    def _body(self, handler) -> bytes:
        if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            for _ in range(1_000_000):  # bounded: a chunked body ends with a zero-size chunk
                size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while handler.rfile.readline().strip():  # trailers, then the blank line
                        pass
                    break
                chunks.append(handler.rfile.read(size))
                handler.rfile.readline()
            return b"".join(chunks)
        return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))

    def _reply(self, handler, status: int, body: bytes) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/xml")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)

    def _handle(self, handler) -> None:
        import http.client
        import random
        import struct

        method, path = handler.command, handler.path
        body = self._body(handler)
        agent = handler.headers.get("User-Agent", "")
        key = f"{method} {path} {handler.headers.get('Range', '')} {agent.split('/', 1)[0]}"  # pyarrow apart from S3A
        with self._lock:
            self._attempts[key] += 1
            attempt = self._attempts[key]
        self._count("requests")
        faults = self.faults
        if self.denied(path):
            self._count("denied", handler, attempt)
            return self._reply(handler, 403, ACCESS_DENIED)
        object_path = path.split("?", 1)[0]
        if method in faults.methods and object_path in faults.always:
            self._count("slowdown", handler, attempt)
            return self._reply(handler, 503, SLOW_DOWN)
        if attempt <= self.streak(method, path, key, agent):
            if self._share("kind", key, attempt) < faults.reset_share:
                self._count("reset", handler, attempt)
                handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                handler.close_connection = True
                handler.connection.close()  # RST, no response: "connection reset by peer"
                return None
            self._count("slowdown", handler, attempt)
            return self._reply(handler, 503, SLOW_DOWN)
        if attempt == 1 and self._share("delay", key) < faults.delay_share:
            self._count("delay", handler, attempt)
            time.sleep(random.Random(key).uniform(*faults.delay))
        headers = {name: value for name, value in handler.headers.items() if name.lower() not in HOP_BY_HOP}
        if body or method in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=120)
        try:
            upstream.request(method, path, body=body or None, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            handler.send_response_only(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in HOP_BY_HOP:
                    handler.send_header(name, value)
            length = response.getheader("Content-Length") if method == "HEAD" else None
            handler.send_header("Content-Length", length or str(len(data)))
            handler.end_headers()
            if method != "HEAD":
                handler.wfile.write(data)
            self._count("forwarded", handler, attempt)
        finally:
            upstream.close()
        return None


def fault_proxy(upstream: str, faults: Faults, lifetime: float = 900.0) -> FaultProxy:
    """`with fault_proxy(moto_endpoint, Faults(...)) as proxy:` point clients at `proxy.endpoint`."""
    return FaultProxy(upstream, faults, lifetime)
