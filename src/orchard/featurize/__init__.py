"""Featurisation: MobileNetV2 as ONNX (mobilenet), weights (weights), inference (runtime)."""

from orchard.featurize.mobilenet import FEATURE_DIM
from orchard.featurize.runtime import embed, make_session
from orchard.featurize.weights import ModelSource, resolve

__all__ = ["FEATURE_DIM", "ModelSource", "embed", "make_session", "resolve"]
