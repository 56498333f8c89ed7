"""Inference: one session per Python worker, inference batches of --batch-size images. No Spark here.

fp32 runs on ONNX Runtime (the Keras-parity engine, also used by `predict` and `serve`); `--precision bf16`
and `int8` run on OpenVINO (featurize/openvino_engine.py, imported only then): see ENGINES.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import onnxruntime as ort

from orchard.featurize.contract import FEATURE_DIM, INPUT_NAME, OUTPUT_NAME

# precision -> engine. int8 on OpenVINO: 1.7x ONNX Runtime's QDQ kernels on Sapphire Rapids (VNNI/AMX), and
# on AVX2-only CPUs ONNX Runtime's u8s8 kernels saturate (cosine to fp32 0.88 vs 0.96 on the same graph).
ENGINES = {"fp32": "onnxruntime", "int8": "openvino", "bf16": "openvino"}
_SESSIONS: dict[tuple[str, int, str], object] = {}
BUILD_LOG_ENV = "ORCHARD_MODEL_BUILD_LOG"  # when set, each build appends "pid model python" there (tests)


def make_session(onnx_bytes: bytes, threads: int) -> ort.InferenceSession:
    """An ORT CPU session with all graph optimisations and no spinning (the JVM shares these cores)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 4  # failures surface as exceptions, which orchard reports; no duplicate log
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def make_engine_session(onnx_bytes: bytes, threads: int, precision: str = "fp32", where: str = "an executor"):
    """A session for `precision` on its engine (ENGINES); both answer `run(outputs, feeds)` like ORT's."""
    if ENGINES[precision] == "onnxruntime":
        return make_session(onnx_bytes, threads)
    from orchard.featurize import openvino_engine

    return openvino_engine.make_session(onnx_bytes, threads, precision, where)


def engine_version(precision: str) -> str:
    """'<engine> <version>' that runs `precision` (run.json's `model.engine`)."""
    if ENGINES[precision] == "onnxruntime":
        return f"onnxruntime {ort.__version__}"
    from orchard.featurize import openvino_engine

    return f"openvino {openvino_engine.version()}"


def worker_session(model_key: str, load_bytes, threads: int, precision: str = "fp32"):
    """The session for `model_key` in this process, built on first use only.

    `load_bytes` is called only on a cache miss (e.g. reading a Spark broadcast), so a Python worker
    reused across tasks builds its session exactly once.
    """
    key = (model_key, threads, precision)
    session = _SESSIONS.get(key)
    if session is None:
        session = make_engine_session(load_bytes(), threads, precision)
        _SESSIONS[key] = session
        log = os.environ.get(BUILD_LOG_ENV)
        if log:
            with open(log, "a") as handle:
                handle.write(f"{os.getpid()} {model_key} {sys.executable}\n")
    return session


def embed(session, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """uint8 [N, 224, 224, 3] -> float32 [N, 1280], one inference call per `batch_size` images (--batch-size;
    small inference batches stay in cache: faster)."""
    if len(images) == 0:
        return np.zeros((0, FEATURE_DIM), np.float32)
    parts = [
        session.run([OUTPUT_NAME], {INPUT_NAME: images[start : start + batch_size]})[0]
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts).astype(np.float32, copy=False)


def is_out_of_memory(error: BaseException) -> bool:
    """True for the ways an allocation failure surfaces here: MemoryError, ONNX Runtime's arena, the loader."""
    return isinstance(error, MemoryError) or is_out_of_memory_text(str(error))


def is_out_of_memory_text(text: str) -> bool:
    """True when an error message says an allocation or a memory mapping failed."""
    return any(sign in text for sign in ("MemoryError", "Failed to allocate memory", "bad_alloc",
                                         "Cannot allocate memory", "failed to map segment"))
