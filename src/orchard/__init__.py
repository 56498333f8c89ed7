"""orchard: turn large image collections into compact, reusable feature sets on Apache Spark.

The Python API the CLI is built on:

    from orchard import RunConfig, run, make_sample
    make_sample("data/fruits")
    result = run(RunConfig(input="data/fruits", output="out", weights="random"))
    print(result.summary())
"""

__version__ = "0.1.0"

from orchard.config import RunConfig, SparkOptions
from orchard.errors import OrchardError
from orchard.output import read_info
from orchard.pipeline import RunResult, run
from orchard.sample import SampleSpec, make_sample
from orchard.spark import get_session

__all__ = [
    "OrchardError", "RunConfig", "RunResult", "SampleSpec", "SparkOptions", "__version__", "get_session",
    "make_sample", "read_info", "run",
]
