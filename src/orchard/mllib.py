"""Write (and read back) Spark MLlib's persistence format for a PipelineModel directly, without the JVM.

A saved MLlib model is a folder: `metadata/part-00000` (one JSON line: class, uid, Spark version, params)
and, for fitted stages, `data/` (one Parquet row whose vector and matrix columns are MLlib's UDTs, described
in the `org.apache.spark.sql.parquet.row.metadata` footer key as Spark itself writes it). A PipelineModel
keeps its stages under `stages/<index>_<uid>/`. Written from Python with pyarrow, the folder is the same on
every engine (classic or Connect, 3.5 or 4.x) and `PipelineModel.load` reads it in any of them; the run
itself reads the arrays back with pyarrow (`read_pipeline_model`) instead of loading it through the JVM.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from orchard.io import fs

ROW_METADATA_KEY = b"org.apache.spark.sql.parquet.row.metadata"


def _array(element: str) -> dict:
    return {"type": "array", "elementType": element, "containsNull": False}


def _field(name: str, kind, nullable: bool = True) -> dict:
    return {"name": name, "type": kind, "nullable": nullable, "metadata": {}}


VECTOR_UDT = {"type": "udt", "class": "org.apache.spark.ml.linalg.VectorUDT", "pyClass": "pyspark.ml.linalg.VectorUDT",
              "sqlType": {"type": "struct", "fields": [
                  _field("type", "byte", False), _field("size", "integer"), _field("indices", _array("integer")),
                  _field("values", _array("double"))]}}
MATRIX_UDT = {"type": "udt", "class": "org.apache.spark.ml.linalg.MatrixUDT", "pyClass": "pyspark.ml.linalg.MatrixUDT",
              "sqlType": {"type": "struct", "fields": [
                  _field("type", "byte", False), _field("numRows", "integer", False),
                  _field("numCols", "integer", False), _field("colPtrs", _array("integer")),
                  _field("rowIndices", _array("integer")), _field("values", _array("double")),
                  _field("isTransposed", "boolean", False)]}}
_INTS, _DOUBLES = pa.list_(pa.field("element", pa.int32(), False)), pa.list_(pa.field("element", pa.float64(), False))
VECTOR_ARROW = pa.struct([pa.field("type", pa.int8(), False), ("size", pa.int32()), ("indices", _INTS),
                          ("values", _DOUBLES)])
MATRIX_ARROW = pa.struct([pa.field("type", pa.int8(), False), pa.field("numRows", pa.int32(), False),
                          pa.field("numCols", pa.int32(), False), ("colPtrs", _INTS), ("rowIndices", _INTS),
                          ("values", _DOUBLES), pa.field("isTransposed", pa.bool_(), False)])


def dense_vector(values: np.ndarray) -> tuple[dict, dict, pa.DataType]:
    """A DenseVector cell: (value, Spark type, Arrow type)."""
    cell = {"type": 1, "size": None, "indices": None, "values": np.asarray(values, np.float64).tolist()}
    return cell, VECTOR_UDT, VECTOR_ARROW


def dense_matrix(matrix: np.ndarray) -> tuple[dict, dict, pa.DataType]:
    """A DenseMatrix cell (column-major values, as MLlib stores them): (value, Spark type, Arrow type)."""
    rows, cols = matrix.shape
    cell = {"type": 1, "numRows": rows, "numCols": cols, "colPtrs": None, "rowIndices": None,
            "values": np.asarray(matrix, np.float64).flatten(order="F").tolist(), "isTransposed": False}
    return cell, MATRIX_UDT, MATRIX_ARROW


@dataclass(frozen=True)
class Stage:
    """One fitted stage: its MLlib class, uid prefix, set and default params, and its data row's cells."""

    java_class: str
    uid_prefix: str
    params: dict
    defaults: dict
    data: dict  # column -> (value, Spark type, Arrow type), as dense_vector/dense_matrix give

    def uid(self) -> str:
        """A fresh uid in MLlib's form (prefix_12 hex digits)."""
        return f"{self.uid_prefix}_{uuid.uuid4().hex[:12]}"


def write_pipeline_model(uri: str, stages: list[Stage], spark_version: str) -> None:
    """A PipelineModel folder at `uri` (replacing what is there) that `PipelineModel.load` reads."""
    fs.remove_tree(uri)
    uids = [stage.uid() for stage in stages]
    _write_metadata(uri, "org.apache.spark.ml.PipelineModel", f"PipelineModel_{uuid.uuid4().hex[:12]}",
                    spark_version, {"stageUids": uids}, {})
    digits = len(str(len(stages)))
    for index, (stage, uid) in enumerate(zip(stages, uids, strict=True)):
        folder = fs.join(uri, "stages", f"{index:0{digits}d}_{uid}")
        defaults = {**stage.defaults, "outputCol": f"{uid}__output"}
        _write_metadata(folder, stage.java_class, uid, spark_version, stage.params, defaults)
        _write_data(fs.join(folder, "data"), stage.data, spark_version)


def _write_metadata(folder: str, java_class: str, uid: str, spark_version: str, params: dict,
                    defaults: dict) -> None:
    line = json.dumps({"class": java_class, "timestamp": int(time.time() * 1000), "sparkVersion": spark_version,
                       "uid": uid, "paramMap": params, "defaultParamMap": defaults}, separators=(",", ":"))
    fs.write_bytes(fs.join(folder, "metadata", "part-00000"), (line + "\n").encode())


def _write_data(folder: str, cells: dict, spark_version: str) -> None:
    spark_schema = {"type": "struct", "fields": [_field(name, kind) for name, (_, kind, _) in cells.items()]}
    table = pa.table({name: pa.array([value], arrow) for name, (value, _, arrow) in cells.items()})
    table = table.replace_schema_metadata({ROW_METADATA_KEY: json.dumps(spark_schema, separators=(",", ":")),
                                           b"org.apache.spark.version": spark_version})
    fs.write_parquet(fs.join(folder, "part-00000.snappy.parquet"), table)


def read_pipeline_model(uri: str) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The fitted stages of the PipelineModel folder at `uri`, without the JVM: (MLlib class, {column: array})
    per stage, in order; vectors become 1-D arrays and matrices 2-D ones."""
    uids = fs.read_json(fs.join(uri, "metadata", "part-00000"))["paramMap"]["stageUids"]
    digits = len(str(len(uids)))
    stages = []
    for index, uid in enumerate(uids):
        folder = fs.join(uri, "stages", f"{index:0{digits}d}_{uid}")
        java_class = fs.read_json(fs.join(folder, "metadata", "part-00000"))["class"]
        row = fs.read_columns(fs.join(folder, "data")).to_pylist()[0]
        stages.append((java_class, {name: _cell_array(cell) for name, cell in row.items() if isinstance(cell, dict)}))
    return stages


def _cell_array(cell: dict) -> np.ndarray:
    """A dense VectorUDT or MatrixUDT cell as a NumPy array."""
    values = np.asarray(cell["values"], np.float64)
    if "numRows" not in cell:
        return values
    return values.reshape((cell["numRows"], cell["numCols"]), order="C" if cell["isTransposed"] else "F")
