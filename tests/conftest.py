"""Shared fixtures and helpers: one real local Spark session for the whole run, one pipeline run, generated image
trees, the `orchard` command in a subprocess, and the test tiers (`pure`, `spark`, `e2e`; see `scripts/test`)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from orchard.featurize.runtime import BUILD_LOG_ENV
from orchard.sample import SampleSpec, make_sample

# `scripts/test --fast` sets this: no JVM can start (in this process or any child), so a test in the pure tier that
# starts Spark fails with "/nonexistent/no-jvm-in-the-pure-tier/bin/java: No such file" instead of passing slowly.
NO_JVM_ENV = "ORCHARD_TEST_NO_JVM"
if os.environ.get(NO_JVM_ENV) == "1":
    os.environ["JAVA_HOME"] = "/nonexistent/no-jvm-in-the-pure-tier"

TIERS = ("pure", "spark", "e2e")  # cheapest first; registered in pyproject.toml
# Fixtures that put a test in a tier at least this high, whatever it is marked: a real Spark session, or
# processes beyond one Spark (moto servers, a standalone cluster, a second pyspark, an executed notebook).
SPARK_FIXTURES = frozenset({"spark_env"})  # every Spark fixture (spark, connect_url, sample runs) depends on it
E2E_FIXTURES = frozenset({"cluster", "s3", "endpoint", "jars", "executed", "runs", "other", "browser"})
# Modules other people keep, tiered here instead of marked in the file: the tier of a test that no fixture
# places higher, by test name first, then by module. A test in any other unmarked module is `spark` (slow tier).
NAMED_TIERS = {"test_bench.py::test_render_rewrites_the_table_from_a_results_file": "pure"}
MODULE_TIERS = {"test_listing.py": "pure", "test_bench.py": "e2e", "test_engines.py": "e2e"}


def _floor(item: pytest.Item) -> str:
    """The lowest tier the test's fixtures allow."""
    fixtures = set(getattr(item, "fixturenames", ()))
    return "e2e" if fixtures & E2E_FIXTURES else "spark" if fixtures & SPARK_FIXTURES else "pure"


def _marked(item: pytest.Item) -> set[str]:
    """The tiers the test is marked with, at any level (test, class, module): `-m` selects on all of them."""
    return {mark.name for mark in item.iter_markers() if mark.name in TIERS}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give every test exactly one tier; refuse two tiers, or a tier lower than the test's fixtures allow."""
    wrong = []
    for item in items:
        floor, marked = _floor(item), _marked(item)
        if not marked:
            module = Path(str(item.path)).name
            name = f"{module}::{getattr(item, 'originalname', item.name)}"
            default = NAMED_TIERS.get(name, MODULE_TIERS.get(module, "spark"))
            item.add_marker(max(floor, default, key=TIERS.index))
        elif len(marked) > 1:
            wrong.append(f"{item.nodeid} is marked {' and '.join(sorted(marked))}: give it one tier")
        elif TIERS.index(tier := marked.pop()) < TIERS.index(floor):
            wrong.append(f"{item.nodeid} is marked {tier} but its fixtures need {floor}")
    if wrong:
        raise pytest.UsageError("mis-tiered tests:\n  " + "\n  ".join(wrong))


def orchard(*args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`orchard ARGS` in a subprocess of this interpreter (Python workers on it too), output captured; `env`
    adds to the environment, `timeout` only bounds a hung process (a cluster run takes minutes)."""
    environment = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "orchard.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=environment)


@pytest.fixture(scope="session")
def build_log(tmp_path_factory) -> Path:
    """File where every ONNX Runtime session build in any Python worker appends 'pid model'."""
    return tmp_path_factory.mktemp("builds") / "builds.log"


ENGINE_ENV = "ORCHARD_TEST_ENGINE"  # "classic" (default) or "connect": the engine the suite runs on


def on_connect() -> bool:
    """True when the suite runs on Spark Connect."""
    return os.environ.get(ENGINE_ENV, "classic") == "connect"


def cli_engine_args() -> list[str]:
    """`orchard run` options that put a CLI subprocess on the engine under test (on Connect, a server of its
    own inside the process, so that killing the process stops its jobs too)."""
    return ["--remote", "local[2]"] if on_connect() else []


@pytest.fixture(scope="session")
def spark_env(build_log) -> None:
    """What every Spark process of the run inherits: this interpreter for Python workers, the build log."""
    os.environ[BUILD_LOG_ENV] = str(build_log)  # inherited by the JVM and its Python workers
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


@pytest.fixture(scope="session")
def connect_url(tmp_path_factory, spark_env):
    """The sc:// URL of a real Spark Connect server started for the session (None on classic)."""
    if not on_connect():
        yield None
        return
    from infra import connect_server

    with connect_server(tmp_path_factory.mktemp("connect") / "server.log") as url:
        yield url


@pytest.fixture(scope="session")
def spark(spark_env, connect_url):
    from orchard.config import SparkOptions
    from orchard.spark import get_session

    options = (SparkOptions(remote=connect_url, app_name="orchard-tests") if connect_url
               else SparkOptions(master="local[2]", app_name="orchard-tests"))
    session = get_session(options)
    yield session
    session.stop()


PIPELINE_SEED = 20261122  # the `finished` run's seed: no other run in the suite uses it


@pytest.fixture(scope="session")
def finished(spark, sample_tree, tmp_path_factory):
    """One pipeline run over `sample_tree`, shared by the pipeline and PCA tests: (RunResult, output, planted)."""
    from orchard.config import RunConfig
    from orchard.pipeline import run

    root, planted = sample_tree
    output = tmp_path_factory.mktemp("runs") / "main"
    # a seed no other test uses: its model key marks this run's lines in the shared build log, and Python
    # workers reused from earlier tests have not built this model yet
    config = RunConfig(input=str(root), output=str(output), weights="random", seed=PIPELINE_SEED, shard_size=40,
                       images_per_task=16, progress=False)
    return run(config, spark), output, planted


@pytest.fixture(scope="session", autouse=True)
def isolated_caches(tmp_path_factory):
    """Model caches go to a temporary folder, never to the user's ~/.cache or ~/.keras."""
    cache = tmp_path_factory.mktemp("cache")
    os.environ["ORCHARD_CACHE"] = str(cache / "orchard")
    os.environ["KERAS_HOME"] = str(cache / "keras")
    os.environ["ORCHARD_WEIGHTS_URL"] = "http://127.0.0.1:9/unreachable.h5"  # never the real internet


def jpeg_bytes(array: np.ndarray, **save_args) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=95, **save_args)
    return buffer.getvalue()


def textured(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A non-symmetric RGB test picture, so rotations and flips are visible."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                      (x * y) % 256], axis=2).astype(np.int16)
    image[: height // 3, : width // 4] = [250, 10, 10]
    image += rng.integers(-5, 6, image.shape, dtype=np.int16)
    return image.clip(0, 255).astype(np.uint8)


def plant_bad_files(root: Path) -> dict[str, str | None]:
    """Add odd and broken files under root/Training/...; returns rel path -> expected error stage (None = ok)."""
    odd = root / "Training" / "Odd Fruit é"
    odd.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str | None] = {}

    def put(name: str, data: bytes, stage: str | None) -> None:
        (odd / name).write_bytes(data)
        expected[f"Training/Odd Fruit é/{name}"] = stage

    picture = textured(80, 120)
    good = jpeg_bytes(picture)
    put("zero bytes.jpg", b"", "decode")
    put("truncated.jpg", good[: len(good) // 2], "decode")
    put("text.jpg", b"this is not an image\n" * 20, "decode")
    put("page.JPG", b"<html><body>404 not found</body></html>", "decode")
    rgba = np.dstack([picture, np.full(picture.shape[:2], 128, np.uint8)])
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, "PNG")
    put("alpha.png", buffer.getvalue(), None)
    buffer = io.BytesIO()
    Image.fromarray(picture).convert("CMYK").save(buffer, "JPEG")
    put("cmyk.jpeg", buffer.getvalue(), None)
    put("grayscale.jpg", jpeg_bytes(picture[:, :, 0]), None)
    exif = Image.Exif()
    exif[0x0112] = 6
    put("rotated exif.jpg", jpeg_bytes(picture, exif=exif), None)
    put("quote's \"name\".jpg", good, None)
    return expected


@pytest.fixture(scope="session")
def sample_tree(tmp_path_factory) -> tuple[Path, dict[str, str | None]]:
    """A Fruits-360-shaped tree (4 classes, 12 train + 4 test each) plus planted bad files."""
    root = tmp_path_factory.mktemp("collection") / "fruits"
    make_sample(root, SampleSpec(classes=4, train_per_class=12, test_per_class=4, seed=1))
    (root / "Training" / "README.txt").write_text("not an image, not listed")
    return root, plant_bad_files(root)
