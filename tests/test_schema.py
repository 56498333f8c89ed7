"""One schema for shard rows (schema.py): Spark's DDL is derived from it, and a worker's rows fit it."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from orchard import schema
from orchard.featurize import runtime, weights
from orchard.featurize.batch import WorkerSettings, featurize_paths

pytestmark = pytest.mark.pure


def test_spark_ddl_is_derived_from_the_arrow_schemas():
    assert schema.ddl(schema.ROW_KEYS) == "path string, label string, split string, modified_us bigint"
    assert schema.ddl(schema.FEATURES) == "path string, label string, split string, features array<float>"
    assert schema.SHARD_ROWS.names == [*schema.ROW_KEYS.names, *schema.RESULT.names, *schema.COUNTS.names,
                                       *schema.SECONDS.names]
    assert schema.ddl(schema.SHARD_ROWS).count(",") == len(schema.SHARD_ROWS) - 1


def test_a_workers_rows_cast_safely_to_the_result_schema(tmp_path):
    """featurize_paths' frame has the RESULT + COUNTS columns in order, and its values cast to their types without
    loss (what the UDF's Arrow conversion does): an image row and an error row."""
    image = tmp_path / "apple.jpg"
    Image.fromarray(np.full((100, 100, 3), (200, 40, 30), np.uint8)).save(image)
    session = runtime.make_session(weights.model_source("random", seed=0).onnx_bytes, 1)
    frame = featurize_paths(session, [str(image), str(tmp_path / "missing.jpg")], WorkerSettings())
    expected = pa.unify_schemas([schema.RESULT, schema.COUNTS])
    table = pa.Table.from_pandas(frame, preserve_index=False)
    assert table.schema.names == expected.names
    converted = table.cast(expected)  # safe: raises on a lossy or impossible cast
    assert converted["features"][0].values.type == pa.float32() and len(converted["features"][0]) == 1280
    assert converted["stage"].to_pylist() == [None, "read"] and converted["width"].to_pylist() == [100, None]
