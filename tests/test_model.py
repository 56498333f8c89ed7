"""The ONNX MobileNetV2: weights sources, random weights that vary by image, inference, clear errors."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from orchard.errors import WeightsError
from orchard.featurize import mobilenet, runtime, weights

pytestmark = pytest.mark.pure


def write_keras_h5(layer_weights: mobilenet.Weights, path: Path) -> None:
    """Write weights in the legacy Keras HDF5 layout of the ImageNet files ('layer/kernel:0' names)."""
    with h5py.File(path, "w") as handle:
        handle.attrs["layer_names"] = [name.encode() for name in layer_weights]
        for layer, values in layer_weights.items():
            group = handle.create_group(layer)
            names = [f"{layer}/{key}:0" for key in values]
            group.attrs["weight_names"] = [n.encode() for n in names]
            for name, value in zip(names, values.values(), strict=True):
                group.create_dataset(name, data=value)


@pytest.fixture(scope="module")
def random_source():
    return weights.model_source("random", seed=0)


def spread(features: np.ndarray) -> float:
    """Mean over dimensions of the standard deviation across images."""
    return float(features.std(axis=0).mean())


def test_random_weights_give_features_that_depend_on_the_image(random_source):
    session = runtime.make_session(random_source.onnx_bytes, 2)
    images = weights.calibration_images(seed=12345, count=16)  # not the calibration batch itself
    features = runtime.embed(session, images, batch_size=8)
    assert features.shape == (16, mobilenet.FEATURE_DIM) and features.dtype == np.float32
    assert np.isfinite(features).all()
    # Keras' default init gives a spread ~1e-9 (every image the same vector); calibrated BN must not.
    assert spread(features) > 0.05 * np.abs(features).mean()
    assert spread(features) > 0.01


def test_random_weights_are_seeded(random_source):
    again = weights.random_weights(0)
    other = weights.random_weights(1)
    first = weights.random_weights(0)
    assert all(np.array_equal(first[layer][key], again[layer][key]) for layer in first for key in first[layer])
    assert not np.array_equal(first["Conv1"]["kernel"], other["Conv1"]["kernel"])
    assert random_source.kind == "random" and not random_source.meaningful
    assert "NOT meaningful" in random_source.description


def test_inference_batch_size_does_not_change_features(random_source):
    session = runtime.make_session(random_source.onnx_bytes, 1)
    images = weights.calibration_images(seed=3, count=10)
    np.testing.assert_allclose(runtime.embed(session, images, batch_size=3),
                               runtime.embed(session, images, batch_size=32), atol=1e-5)


def test_weights_file_roundtrip_and_onnx_cache(tmp_path):
    layer_weights = weights.random_weights(5)
    path = tmp_path / "mine.h5"
    write_keras_h5(layer_weights, path)
    loaded = weights.load_keras_h5(path)
    assert np.array_equal(loaded["block_3_depthwise"]["depthwise_kernel"],
                          layer_weights["block_3_depthwise"]["depthwise_kernel"])
    source = weights.model_source(str(path))
    assert source.kind == "file" and source.weights_sha256 == weights.sha256_file(path)
    assert weights.model_source(str(path)).onnx_bytes == source.onnx_bytes
    cached = list((weights.orchard_cache_dir() / "models").glob(f"*{source.weights_sha256[:16]}*.onnx"))
    assert len(cached) == 1


def test_missing_imagenet_file_names_file_cache_and_flag():
    with pytest.raises(WeightsError) as caught:
        weights.model_source("imagenet")
    message = str(caught.value)
    assert weights.KERAS_FILE in message
    assert str(weights.keras_cache_dir()) in message
    assert "--weights" in message
    assert "\n" not in message


def test_missing_or_wrong_user_file(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        weights.model_source(str(tmp_path / "absent.h5"))
    (tmp_path / "garbage.h5").write_bytes(b"not hdf5")
    with pytest.raises(WeightsError, match="cannot read"):
        weights.model_source(str(tmp_path / "garbage.h5"))
    incomplete = weights.random_weights(0)
    del incomplete["Conv_1"]
    write_keras_h5(incomplete, tmp_path / "partial.h5")
    with pytest.raises(WeightsError, match="Conv_1"):
        weights.model_source(str(tmp_path / "partial.h5"))


def test_imagenet_file_is_downloaded_into_the_keras_cache(tmp_path, monkeypatch):
    """The download path, against a server on 127.0.0.1 standing in for Keras' storage."""
    served = tmp_path / "served"
    served.mkdir()
    write_keras_h5(weights.random_weights(9), served / weights.KERAS_FILE)
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
        monkeypatch.setenv("ORCHARD_WEIGHTS_URL",
                           f"http://127.0.0.1:{server.server_address[1]}/{weights.KERAS_FILE}")
        source = weights.model_source("imagenet")
    finally:
        server.shutdown()
        thread.join(timeout=10)
    target = tmp_path / "keras" / "models" / weights.KERAS_FILE
    assert target.is_file()
    assert source.kind == "imagenet" and source.meaningful
    assert source.weights_sha256 == weights.sha256_file(served / weights.KERAS_FILE)
