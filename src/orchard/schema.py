"""The columns of a shard's rows, in one place: the listing's keys, then what a Python worker returns.

Shard rows (`_work/rows/shard=N/`) hold ROW_KEYS + RESULT for every listed file; the datasets select from
them (output.py names the datasets). Worker seconds and counts travel as data, per row, so every engine can
sum them (pipeline._shard_stats, then run.json).
"""

from __future__ import annotations

ROW_KEYS = {"path": "string", "label": "string", "split": "string", "modified_us": "bigint"}
RESULT = {"features": "array<float>", "width": "int", "height": "int", "bytes": "bigint", "sha256": "string",
          "stage": "string", "error": "string"}
SECONDS = {"seconds_read": "double", "seconds_preprocess": "double", "seconds_inference": "double"}
COUNTS = {"read_retries": "int"}  # per row: the retries its file's read took (io/reader.py)
WORKER_RESULT = {**RESULT, **COUNTS, **SECONDS}  # what the featurising UDF returns per path
SHARD_ROWS = {**ROW_KEYS, **WORKER_RESULT}


def ddl(columns: dict[str, str]) -> str:
    """Spark's DDL for `columns` ("path string, label string, ...")."""
    return ", ".join(f"{name} {kind}" for name, kind in columns.items())
