"""Shared fixtures: one real local Spark session for the whole run, generated image trees."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from orchard.featurize.runtime import BUILD_LOG_ENV
from orchard.sample import SampleSpec, make_sample


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
