"""Classify photos and find similar ones without Spark: ONNX Runtime for the features, NumPy for the rest.

`orchard train` writes `classifier/predictor/` under a run: the run's ONNX model, the scaler/PCA and the
logistic regression as NumPy arrays (`predictor.npz`), and `predictor.json` (classes, versions, sha256 of
both files). `Predictor` repeats the Spark pipeline's arithmetic exactly (MLlib's StandardScaler, its
uncentred PCA projection, the multinomial softmax), so its probabilities equal the PipelineModel's.

Nearest neighbours are an exact NumPy search over the collection's PCA vectors (float64, 8 bytes per component
per image in memory): one matrix-vector product, 15.7 ms p50 (p95 16.7 ms) for 100,000 images of 100
components on the 2-core AMD EPYC machine (benchmarks/serve_load.py, README), linear in size. An
approximate index (FAISS, ScaNN, HNSW) should take over beyond about a million images, or when search
latency or queries per second matter.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from orchard.errors import ConfigError
from orchard.featurize import runtime
from orchard.featurize.contract import FEATURE_DIM
from orchard.io import fs
from orchard.io.storage import StorageOptions
from orchard.output import finished_run
from orchard.preprocess import ImageError, Limits, prepare

PREDICTOR_FORMAT = 1  # bump when predictor.npz/predictor.json change meaning
PREDICTOR_FILES = ("model.onnx", "predictor.npz")
ImageInput = bytes | str | os.PathLike


class Neighbour(NamedTuple):
    """One image of the collection near the query, by Euclidean distance in PCA space: (path, label, distance)."""

    path: str
    label: str
    distance: float


class Predictor:
    """A trained classifier ready for photos: load once, then `predict` and `similar` many times."""

    def __init__(self, folder: str, manifest: dict, arrays: dict[str, np.ndarray], onnx_bytes: bytes,
                 threads: int | None = None, storage: StorageOptions | None = None):
        self.folder = folder
        self.storage = storage  # where the bundle and the collection's images are (None: the AWS environment)
        self.manifest = manifest
        self.classes: list[str] = [str(name) for name in arrays["classes"]]
        self.limits = Limits(**manifest["limits"])
        self._uses_pca = manifest["features_used"] == "pca"
        self._components = arrays["pca_components"]
        self._mean = arrays.get("scaler_mean")
        std = arrays.get("scaler_std")
        # MLlib's StandardScaler: (x - mean) * (1 / std), and 0 where std is 0
        self._inverse_std = None if std is None else np.divide(1.0, std, out=np.zeros_like(std), where=std != 0)
        self._coefficients, self._intercepts = arrays["coefficients"], arrays["intercepts"]
        self._collection = arrays["collection_pca"].astype(np.float64)
        self._collection_norms = (self._collection**2).sum(axis=1)
        self._paths, self._labels = arrays["collection_paths"], arrays["collection_labels"]
        self._session = runtime.make_session(onnx_bytes, threads or min(os.cpu_count() or 1, 4))

    @classmethod
    def load(cls, location: str, threads: int | None = None, storage: StorageOptions | None = None) -> Predictor:
        """Load from a predictor folder, a `classifier/` folder, or a run output / versioned store."""
        with fs.using_storage(storage):
            folder = find_predictor(location)
        manifest = fs.read_json(fs.join(folder, "predictor.json"), storage)
        if manifest.get("format") != PREDICTOR_FORMAT:
            raise ConfigError(f"{folder} was written by another orchard version (format {manifest.get('format')}, "
                              f"this one reads {PREDICTOR_FORMAT}): run `orchard train` again")
        files = {name: fs.read_bytes(fs.join(folder, name), storage) for name in PREDICTOR_FILES}
        for name, data in files.items():
            if hashlib.sha256(data).hexdigest() != manifest["sha256"][name]:
                raise ConfigError(f"{fs.join(folder, name)} does not match the checksum in predictor.json (a partial "
                                  "copy or an edit): run `orchard train` again")
        with np.load(io.BytesIO(files["predictor.npz"])) as bundle:
            arrays = {name: bundle[name] for name in bundle.files}
        return cls(folder, manifest, arrays, files["model.onnx"], threads, storage)

    @property
    def collection_size(self) -> int:
        """Images of the collection that `similar` searches."""
        return len(self._paths)

    def features(self, images: Sequence[ImageInput]) -> np.ndarray:
        """1280-D float32 features of images given as bytes or paths/URIs; raises ImageError on a bad one."""
        tensors = [prepare(_image_bytes(image), self.limits).tensor for image in images]
        if not tensors:
            return np.zeros((0, FEATURE_DIM), np.float32)
        return runtime.embed(self._session, np.stack(tensors))

    def project(self, features: np.ndarray) -> np.ndarray:
        """Features -> PCA space, as the run's Spark model does it (scaled if it was, never centred)."""
        x = np.asarray(features, np.float64)
        if self._mean is not None:
            x = (x - self._mean) * self._inverse_std
        return x @ self._components

    def probabilities_from_features(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities [N, classes] for 1280-D features (MLlib's multinomial softmax)."""
        x = self.project(features) if self._uses_pca else np.asarray(features, np.float64)
        margins = x @ self._coefficients.T + self._intercepts
        exp = np.exp(margins - margins.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    def probabilities(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Class probabilities [N, classes] for images given as bytes or paths/URIs."""
        return self.probabilities_from_features(self.features(images))

    def predict(self, images: Sequence[ImageInput], top_k: int = 5) -> list[list[tuple[str, float]]]:
        """For each image, the `top_k` (class, probability) pairs, most likely first."""
        return [self._top(row, top_k) for row in self.probabilities(images)]

    def _top(self, row: np.ndarray, top_k: int) -> list[tuple[str, float]]:
        best = np.argsort(-row, kind="stable")[:top_k]
        return [(self.classes[i], float(row[i])) for i in best]

    def similar(self, image: ImageInput, k: int = 5) -> list[Neighbour]:
        """The `k` collection images nearest to `image` in PCA space (exact search), nearest first."""
        return [Neighbour(str(self._paths[i]), label, distance)
                for i, label, distance in self.similar_ids(self.features([image]), k)]

    def similar_ids(self, features: np.ndarray, k: int) -> list[tuple[int, str, float]]:
        """(collection id, label, distance) of the `k` images nearest to one photo's 1280-D `features`."""
        if k < 1:
            return []
        found, distances = nearest(self._collection, self._collection_norms, self.project(features)[0], k)
        return [(int(i), str(self._labels[i]), float(d)) for i, d in zip(found, distances, strict=True)]

    def predict_and_similar(self, image: ImageInput, top_k: int = 5, k: int = 5
                            ) -> tuple[list[tuple[str, float]], list[tuple[int, str, float]]]:
        """One photo's `top_k` classes and its `k` nearest collection images (by id), from one decode."""
        features = self.features([image])
        return self._top(self.probabilities_from_features(features)[0], top_k), self.similar_ids(features, k)

    def collection_bytes(self, index: int) -> bytes:
        """The file content of collection image `index` (0 .. collection_size - 1), local or on S3."""
        return _image_bytes(str(self._paths[index]), self.storage)


def nearest(collection: np.ndarray, squared_norms: np.ndarray, query: np.ndarray, k: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of `collection` to `query` (Euclidean): (row indices, distances), nearest first.

    `squared_norms` is the rows' squared norms, computed once: a search is one matrix-vector product.
    """
    squared = squared_norms - 2 * (collection @ query) + query @ query
    distances = np.sqrt(np.maximum(squared, 0.0))
    k = min(k, len(distances))
    found = np.argpartition(distances, k - 1)[:k] if k < len(distances) else np.arange(len(distances))
    found = found[np.argsort(distances[found], kind="stable")]
    return found, distances[found]


def find_predictor(location: str) -> str:
    """The predictor folder `location` names: itself, its `predictor/`, or a run's `classifier/predictor/`."""
    for candidate in (location, fs.join(location, "predictor")):
        if fs.exists(fs.join(candidate, "predictor.json")):
            return candidate
    folder = fs.join(finished_run(location), "classifier", "predictor")
    if not fs.exists(fs.join(folder, "predictor.json")):
        raise ConfigError(f"no classifier in {location}: run `orchard train {location}` first")
    return folder


def _image_bytes(image: ImageInput, storage: StorageOptions | None = None) -> bytes:
    if isinstance(image, bytes):
        return image
    try:
        return fs.read_bytes(os.fspath(image), storage)
    except OSError as exc:
        raise ImageError("read", f"cannot read {os.fspath(image)}: {exc}") from None
