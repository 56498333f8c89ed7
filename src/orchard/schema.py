"""The columns of a shard's rows, in one place, as pyarrow schemas: the listing's keys, then what a Python
worker returns. Spark's DDL and the column lists are derived from them (`ddl`, `.names`).

Shard rows (`_work/rows/shard=N/`) hold ROW_KEYS + RESULT for every listed file; the datasets select from
them (output.py names the datasets). Worker seconds and counts travel as data, per row, so every engine can
sum them (pipeline._shard_stats, then run.json).
"""

from __future__ import annotations

import pyarrow as pa

ROW_KEYS = pa.schema([("path", pa.string()), ("label", pa.string()), ("split", pa.string()),
                      ("modified_us", pa.int64())])
RESULT = pa.schema([("features", pa.list_(pa.float32())), ("width", pa.int32()), ("height", pa.int32()),
                    ("bytes", pa.int64()), ("sha256", pa.string()), ("stage", pa.string()),
                    ("error", pa.string())])
SECONDS = pa.schema([("seconds_read", pa.float64()), ("seconds_preprocess", pa.float64()),
                     ("seconds_inference", pa.float64())])
COUNTS = pa.schema([("read_retries", pa.int32())])  # per row: the retries its file's read took (io/reader.py)
WORKER_RESULT = pa.unify_schemas([RESULT, COUNTS, SECONDS])  # what the featurising UDF returns per path
SHARD_ROWS = pa.unify_schemas([ROW_KEYS, WORKER_RESULT])
FEATURES = pa.schema([*(ROW_KEYS.field(name) for name in ("path", "label", "split")), RESULT.field("features")])

_SPARK_TYPES = {pa.string(): "string", pa.int32(): "int", pa.int64(): "bigint", pa.float32(): "float",
                pa.float64(): "double"}


def spark_type(kind: pa.DataType) -> str:
    """Spark's DDL name of a pyarrow type used in these schemas (lists of them included)."""
    if pa.types.is_list(kind):
        return f"array<{spark_type(kind.value_type)}>"
    return _SPARK_TYPES[kind]


def ddl(columns: pa.Schema) -> str:
    """Spark's DDL for `columns` ("path string, label string, ...")."""
    return ", ".join(f"{field.name} {spark_type(field.type)}" for field in columns)
