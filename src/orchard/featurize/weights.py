"""Where model weights come from: the standard Keras ImageNet file, a user's file, or seeded random weights.

The ONNX graph built from a weights file is cached per file content (sha256), so the conversion happens
once per weights file on the driver and never on executors. The graph builder (and the `onnx` package,
~1.5 s to import) is loaded only when a model has to be built.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from orchard.errors import WeightsError
from orchard.featurize.contract import GRAPH_VERSION, INPUT_NAME

if TYPE_CHECKING:
    from orchard.featurize.mobilenet import Weights

KERAS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
KERAS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/" + KERAS_FILE
CALIBRATION_IMAGES = 32


@dataclass(frozen=True)
class ModelSource:
    """The resolved weights and the ONNX bytes built from them."""

    kind: str  # "imagenet", "file" or "random"
    description: str  # printed in run.json and summaries
    weights_path: str | None
    weights_sha256: str | None
    onnx_bytes: bytes
    precision: str = "fp32"
    quantization: dict | None = None  # for int8: calibration size and cosine similarity to fp32

    @property
    def onnx_sha256(self) -> str:
        """sha256 of the ONNX bytes: identifies the exact model in run.json and in workers' session cache."""
        return hashlib.sha256(self.onnx_bytes).hexdigest()

    @property
    def meaningful(self) -> bool:
        """False for random weights, whose features say nothing about the images."""
        return self.kind != "random"


def keras_cache_dir() -> Path:
    """Keras' own cache folder for application weights (honours KERAS_HOME)."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def orchard_cache_dir() -> Path:
    """orchard's cache folder for built ONNX models (`ORCHARD_CACHE`, default ~/.cache/orchard)."""
    return Path(os.environ.get("ORCHARD_CACHE", Path.home() / ".cache" / "orchard"))


def model_source(weights: str, seed: int = 0, *, download: bool = True) -> ModelSource:
    """Resolve --weights ('imagenet', 'random' or a path) into a ModelSource with ONNX bytes."""
    if weights == "random":
        return _cached_model(f"random-seed{seed}", lambda: random_weights(seed), "random", None, None,
                             f"RANDOM weights (seed {seed}): features are NOT meaningful")
    if weights == "imagenet":
        path = locate_imagenet_file(download=download)
        kind, description = "imagenet", f"ImageNet weights ({path})"
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"--weights {weights}: no such file; give a Keras MobileNetV2 .h5 weights file")
        kind, description = "file", f"weights file {path}"
    digest = sha256_file(path)
    return _cached_model(digest[:16], lambda: load_keras_h5(path), kind, str(path), digest, description)


def locate_imagenet_file(*, download: bool = True) -> Path:
    """The Keras ImageNet weights file: from the Keras cache, else downloaded there if the network allows."""
    target = keras_cache_dir() / KERAS_FILE
    if target.is_file():
        return target
    url = os.environ.get("ORCHARD_WEIGHTS_URL", KERAS_URL)
    if download:
        try:
            _download(url, target)
            return target
        except OSError:
            pass
    raise WeightsError(
        f"ImageNet weights file {KERAS_FILE} not found in {target.parent} and could not be downloaded; "
        "copy it there, or pass --weights PATH (or --weights random for a smoke run)"
    )


def _download(url: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=30) as response, tempfile.NamedTemporaryFile(
        dir=target.parent, delete=False, suffix=".part"
    ) as tmp:
        while chunk := response.read(1 << 20):
            tmp.write(chunk)
    os.replace(tmp.name, target)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _cached_model(key, make_weights, kind, path, digest, description) -> ModelSource:
    cache = orchard_cache_dir() / "models" / f"mobilenet_v2-{key}-b{GRAPH_VERSION}.onnx"
    if cache.is_file():
        onnx_bytes = cache.read_bytes()
    else:
        from orchard.featurize import mobilenet

        try:
            onnx_bytes = mobilenet.build_model(make_weights()).SerializeToString()
        except ValueError as exc:
            raise WeightsError(f"--weights {path}: not MobileNetV2 1.0/224 no-top weights ({exc})") from None
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache.parent, delete=False, suffix=".part") as tmp:
            tmp.write(onnx_bytes)
        os.replace(tmp.name, cache)
    return ModelSource(kind, description, path, digest, onnx_bytes)


def load_keras_h5(path: Path | str) -> Weights:
    """Read layer weights from a Keras HDF5 weights file (legacy format, as the ImageNet files are)."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            root = handle.get("model_weights", handle)
            weights: Weights = {}
            for layer in _names(root.attrs.get("layer_names", list(root.keys()))):
                group = root[layer]
                for weight_name in _names(group.attrs.get("weight_names", [])):
                    key = weight_name.split("/")[-1].split(":")[0]
                    weights.setdefault(layer, {})[key] = np.asarray(group[weight_name])
    except OSError as exc:
        raise WeightsError(f"--weights {path}: cannot read it as a Keras HDF5 weights file ({exc})") from None
    return weights


def _names(values) -> list[str]:
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def random_weights(seed: int) -> Weights:
    """Seeded random weights whose features depend on the image.

    Keras' default init gives every image nearly the same 1280-D vector (spread ~1e-9): the BatchNorm
    moving statistics (0 and 1) do not match the activations, which saturate. Here every BatchNorm's
    moving mean/variance is calibrated on a fixed batch of synthetic images, so activations stay in range.
    """
    from orchard.featurize import mobilenet

    rng = np.random.default_rng(seed)
    weights: Weights = {}
    for spec in mobilenet.conv_specs():
        fan_in = spec.kernel * spec.kernel * (1 if spec.depthwise else spec.in_channels)
        kernel = rng.normal(0.0, np.sqrt(2.0 / fan_in), spec.kernel_shape).astype(np.float32)
        weights[spec.conv] = {mobilenet.kernel_key(spec): kernel}
        channels = spec.out_channels
        weights[spec.bn] = {
            "gamma": rng.uniform(0.5, 1.5, channels).astype(np.float32),
            "beta": rng.normal(0.0, 0.2, channels).astype(np.float32),
            "moving_mean": np.zeros(channels, np.float32),
            "moving_variance": np.ones(channels, np.float32),
        }
    return calibrate_batchnorm(weights, calibration_images(seed))


def calibration_images(seed: int, count: int = CALIBRATION_IMAGES) -> np.ndarray:
    """Deterministic synthetic images: smooth colour fields plus noise, uint8 [count, 224, 224, 3]."""
    import cv2

    rng = np.random.default_rng(seed + 7919)
    images = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (rng.integers(2, 12), rng.integers(2, 12), 3), dtype=np.uint8)
        field = cv2.resize(coarse, (224, 224), interpolation=cv2.INTER_CUBIC).astype(np.int16)
        field += rng.normal(0, 12, field.shape).astype(np.int16)
        images.append(field.clip(0, 255).astype(np.uint8))
    return np.stack(images)


def calibrate_batchnorm(weights: Weights, images: np.ndarray) -> Weights:
    """Set each BatchNorm's moving mean/variance to its input statistics on `images` (one ONNX pass)."""
    import onnxruntime as ort

    from orchard.featurize import mobilenet

    model = mobilenet.build_model(weights, calibrate=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    results = dict(zip(names, session.run(names, {INPUT_NAME: images}), strict=True))
    calibrated = {layer: dict(values) for layer, values in weights.items()}
    for spec in mobilenet.conv_specs():
        calibrated[spec.bn]["moving_mean"] = results[f"{spec.bn}/mean"].reshape(-1).astype(np.float32)
        calibrated[spec.bn]["moving_variance"] = results[f"{spec.bn}/var"].reshape(-1).astype(np.float32)
    return calibrated
