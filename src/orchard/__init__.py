"""orchard: turn large image collections into compact, reusable feature sets on Apache Spark.

The Python API the CLI is built on:

    from orchard import RunConfig, run, make_sample
    make_sample("data/fruits")
    result = run(RunConfig(input="data/fruits", output="out", weights="random"))
    print(result.summary())
"""

__version__ = "0.1.0"

import importlib

_EXPORTS = {
    "OrchardError": "orchard.errors", "RunConfig": "orchard.config", "RunResult": "orchard.pipeline",
    "SampleSpec": "orchard.sample", "SparkOptions": "orchard.config", "get_session": "orchard.spark",
    "make_sample": "orchard.sample", "read_info": "orchard.output", "run": "orchard.pipeline",
}
__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str):
    """Import the API on first use, so `orchard predict` and `orchard serve` start without Spark or onnx."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'orchard' has no attribute {name!r}")
