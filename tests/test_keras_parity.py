"""orchard's ONNX graph equals Keras' MobileNetV2(include_top=False, pooling='avg') for the same weights.

TensorFlow is a test-only dependency: Keras writes the weights file in the legacy HDF5 layout of the
ImageNet files, orchard reads it, and both models embed the same images.
"""

from __future__ import annotations

import numpy as np
import pytest

from orchard.featurize import runtime, weights

pytestmark = pytest.mark.pure


def test_features_match_keras_reference(tmp_path, monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")  # read when TensorFlow loads: here, not at collection
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    layer_weights = weights.random_weights(seed=3)  # calibrated: features vary by image
    model = keras.applications.MobileNetV2(weights=None, include_top=False, pooling="avg",
                                           input_shape=(224, 224, 3))
    for layer in model.layers:
        if layer.name in layer_weights:
            values = layer_weights[layer.name]
            names = [v.path.split("/")[-1] for v in layer.weights]
            layer.set_weights([values.get(n, values.get("depthwise_kernel")) for n in names])
    path = tmp_path / "keras_written.h5"
    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)

    source = weights.model_source(str(path))
    session = runtime.make_session(source.onnx_bytes, 2)
    images = weights.calibration_images(seed=99, count=8)
    ours = runtime.embed(session, images)
    reference = model.predict(images.astype(np.float32) / 127.5 - 1.0, verbose=0)

    assert ours.shape == reference.shape == (8, 1280)
    assert np.abs(ours - reference).max() <= 1e-4
    assert reference.std(axis=0).mean() > 0.01  # the comparison is not between constant vectors
