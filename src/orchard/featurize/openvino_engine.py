"""OpenVINO CPU inference of the same ONNX bytes (bf16 on AMX / AVX512-BF16, int8 QDQ graphs, f32).

Imported only by runs that ask for it: `predict` and `serve` stay on ONNX Runtime fp32 and never load it.
The compiled model is wrapped to answer ONNX Runtime's `run(outputs, feeds)`, so `runtime.embed` serves both.
"""

from __future__ import annotations

import numpy as np
import openvino as ov

from orchard.featurize import cpu
from orchard.featurize.contract import INPUT_NAME, OUTPUT_NAME

HINTS = {"bf16": "bf16", "int8": "f32", "fp32": "f32"}  # int8 comes from the QDQ graph, not from the hint
# No pinning: the JVM and the reader threads share the task's cores, and a pinned thread waits for its core
PIN_THREADS = False
_CORE: ov.Core | None = None


class OpenVinoSession:
    """One compiled model and its infer request, with ONNX Runtime's `run` signature."""

    def __init__(self, compiled: ov.CompiledModel, precision: str) -> None:
        self.compiled = compiled
        self.precision = precision
        self._request = compiled.create_infer_request()

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Infer one inference batch: `outputs` must be [OUTPUT_NAME], `feeds` {INPUT_NAME: uint8 NHWC}."""
        assert outputs == [OUTPUT_NAME], outputs
        result = self._request.infer({0: feeds[INPUT_NAME]})
        return [np.array(result[0], dtype=np.float32)]  # a copy: the request reuses its buffer


def core() -> ov.Core:
    """The process's OpenVINO core (its plugins load once)."""
    global _CORE
    if _CORE is None:
        _CORE = ov.Core()
    return _CORE


def capabilities() -> list[str]:
    """What OpenVINO's CPU plugin says this CPU can do natively (e.g. FP32, BF16, INT8)."""
    return list(core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def make_session(onnx_bytes: bytes, threads: int, precision: str, where: str = "an executor") -> OpenVinoSession:
    """Compile `onnx_bytes` for the CPU at `precision`; bf16 on a CPU without bf16 units raises cpu.UnsupportedCpu
    (OpenVINO would silently run f32 instead).

    One stream and the latency hint: a Python worker runs one inference batch at a time on its task's CPUs.
    """
    if precision == "bf16":
        reason = cpu.bf16_refusal(where)
        if reason is None and "BF16" not in capabilities():
            reason = f"--precision bf16: OpenVINO reports no BF16 support on {where}'s CPU; use fp32 or int8"
        if reason is not None:
            raise cpu.UnsupportedCpu(f"{cpu.REFUSAL_MARK} {reason}")
    model = core().read_model(model=onnx_bytes)
    compiled = core().compile_model(model, "CPU", {
        "INFERENCE_PRECISION_HINT": HINTS[precision],
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "ENABLE_CPU_PINNING": PIN_THREADS,
    })
    return OpenVinoSession(compiled, precision)


def version() -> str:
    """OpenVINO's version, e.g. '2026.4.1-...'."""
    return ov.__version__
