"""Reduced precision: the int8 model (ONNX Runtime's static QDQ quantisation, per-channel weights, calibrated
on real input) and the check of int8 or bf16 features against fp32 on held-out images.

Static QDQ ran ~1.5x faster than fp32 on the 2-core reference machine; dynamic quantisation (ConvInteger)
was ~4x slower, so it is not offered. fp32 stays the default: int8 and bf16 change the features a little,
and the run measures by how much (cosine similarity to fp32 on held-out images) and writes it to run.json.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchard.featurize import runtime
from orchard.featurize.contract import INPUT_NAME

QUANTIZER_VERSION = "1"

# Below these median cosines to fp32 the run warns. Measured (2 vCPU AMD EPYC Zen 3, 2026-12-04, 200 sample
# images, random weights, README "Precision"): what users read off the features - nearest neighbours in
# centred feature space, a PCA + logistic-regression classifier - already moves at cosine 0.99 (error of
# that size keeps 58% of top-1 neighbours, 83% of top-10), and int8's 0.96 keeps only 2% / 23%; at 0.999
# 87% / 95% stay. So int8 keeps the 0.99 and warns on these weights (cheaper, measurably different
# answers), and bf16 (8 mantissa bits; 0.995 measured on Sapphire Rapids, random weights) warns under 0.999.
COSINE_TARGETS = {"int8": 0.99, "bf16": 0.999}


@dataclass(frozen=True)
class QuantizationReport:
    """How close int8 or bf16 features are to fp32 on images that were not used for calibration."""

    mode: str  # "int8" or "bf16"
    calibration_images: int  # 0 for bf16: nothing is calibrated
    validation_images: int
    cosine_median: float
    cosine_min: float
    neighbour_agreement: float  # share of validation images whose nearest other image is the same as in fp32

    def to_dict(self) -> dict:
        """The report as run.json's `model.quantization` entry."""
        return {"mode": self.mode, "calibration_images": self.calibration_images,
                "validation_images": self.validation_images, "cosine_median": self.cosine_median,
                "cosine_min": self.cosine_min, "cosine_target": COSINE_TARGETS[self.mode],
                "neighbour_agreement": self.neighbour_agreement}


def quantize_int8(onnx_bytes: bytes, calibration: np.ndarray, cache_dir: Path) -> bytes:
    """Static QDQ int8 model calibrated on `calibration` (uint8 [N, 224, 224, 3]); cached by content."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    key = hashlib.sha256(onnx_bytes + calibration.tobytes() + QUANTIZER_VERSION.encode()).hexdigest()[:16]
    cached = cache_dir / f"mobilenet_v2-int8-{key}.onnx"
    if cached.is_file():
        return cached.read_bytes()

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(np.array_split(calibration, max(1, len(calibration) // 8)))

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        fp32, prepared, int8 = (Path(work) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        fp32.write_bytes(onnx_bytes)
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(int8), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        data = int8.read_bytes()
    with tempfile.NamedTemporaryFile(dir=cache_dir, delete=False, suffix=".part") as tmp:
        tmp.write(data)
    os.replace(tmp.name, cached)
    return data


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [N, D] arrays."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-12)


def neighbour_agreement(reference: np.ndarray, reduced: np.ndarray) -> float:
    """Share of rows whose nearest other row (cosine, centred on the reference mean, as PCA space is) is the
    same in `reduced` as in `reference`: the answer `similar` gives, measured directly."""
    def nearest(features: np.ndarray) -> np.ndarray:
        centred = features - reference.mean(axis=0)
        unit = centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)
        similarity = unit @ unit.T
        np.fill_diagonal(similarity, -np.inf)
        return similarity.argmax(axis=1)

    return float(np.mean(nearest(reference) == nearest(reduced))) if len(reference) > 1 else 1.0


def compare(fp32_bytes: bytes, reduced_bytes: bytes, validation: np.ndarray, calibration_count: int,
            precision: str = "int8") -> QuantizationReport:
    """Embed `validation` with fp32 (ONNX Runtime) and with `reduced_bytes` on `precision`'s engine, exactly as
    the executors will (runtime.ENGINES), and summarise their agreement."""
    reference = runtime.embed(runtime.make_session(fp32_bytes, 2), validation)
    session = runtime.make_engine_session(reduced_bytes, 2, precision, where="the driver")
    reduced = runtime.embed(session, validation)
    similarity = cosine_similarity(reference, reduced)
    return QuantizationReport(precision, calibration_count, len(validation), float(np.median(similarity)),
                              float(similarity.min()), neighbour_agreement(reference, reduced))
