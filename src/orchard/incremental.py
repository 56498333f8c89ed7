"""Incremental runs: what changed since the store's latest version, and the rows a new version carries over.

A file is unchanged when its path, size and modification time equal those recorded in the base version's
metadata/ (`bytes`, `modified`); its row (features, or its error) is carried into the new version as is.
Everything else in the selection is featurised: new paths are `added`, others `changed`. Paths of the base
that are no longer selected are `removed` and simply absent from the new version. A file with no recorded
size or time (a read or list error) is always tried again.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from orchard import schema
from orchard.io import fs
from orchard.output import Layout

CHANGE_KINDS = ("added", "changed", "removed")


@dataclass(frozen=True)
class Changes:
    """The difference between a selection and a base version."""

    todo: pd.DataFrame  # manifest rows to featurise (added or changed)
    carried: list[str]  # paths whose rows come unchanged from the base version
    table: pd.DataFrame  # path, label, split, change: one row per added, changed or removed path

    def counts(self) -> dict[str, int]:
        """Paths added, changed, removed and unchanged."""
        counts = self.table["change"].value_counts()
        return {**{kind: int(counts.get(kind, 0)) for kind in CHANGE_KINDS}, "unchanged": len(self.carried)}

    @property
    def empty(self) -> bool:
        """True when nothing was added, changed or removed."""
        return self.table.empty


def recorded_state(base: Layout) -> pd.DataFrame:
    """path, bytes, modified_us of every row of a version's metadata (driver-side, no Spark)."""
    table = fs.read_columns(base.metadata, ["path", "label", "split", "bytes", "modified"])
    frame = table.to_pandas(timestamp_as_object=False)
    modified = frame["modified"]
    if modified.dt.tz is not None:
        modified = modified.dt.tz_convert("UTC").dt.tz_localize(None)
    frame["modified_us"] = (modified.astype("datetime64[us]").astype("int64")).where(modified.notna())
    return frame.drop(columns="modified")


def diff(manifest: pd.DataFrame, recorded: pd.DataFrame) -> Changes:
    """Split the selection into rows to featurise and paths to carry over; list what changed."""
    merged = manifest.merge(recorded[["path", "bytes", "modified_us"]], on="path", how="left",
                            suffixes=("", "_base"), indicator=True)
    known = merged["_merge"] == "both"
    same = (known & merged["bytes"].notna() & merged["modified_us_base"].notna()
            & merged["modified_us"].notna()
            & (merged["size"] == merged["bytes"])
            & (merged["modified_us"].astype("float64") == merged["modified_us_base"].astype("float64")))
    if "list_error" in merged:
        same &= merged["list_error"].isna()
    same = same.fillna(False).astype(bool)
    todo = manifest[~same.to_numpy()].reset_index(drop=True)
    changed = merged[~same & known][["path", "label", "split"]].assign(change="changed")
    added = merged[~known][["path", "label", "split"]].assign(change="added")
    removed = recorded[~recorded["path"].isin(manifest["path"])][["path", "label", "split"]].assign(
        change="removed")
    table = pd.concat([added, changed, removed], ignore_index=True).sort_values("path", ignore_index=True)
    return Changes(todo=todo, carried=merged.loc[same, "path"].tolist(), table=table)


def write_changes(changes: Changes, uri: str) -> None:
    """The `changes/` dataset of a version: path, label, split, change."""
    table = pa.Table.from_pandas(changes.table[["path", "label", "split", "change"]], preserve_index=False)
    fs.write_parquet(fs.join(uri, "part-00000.parquet"), table)


def carry_rows(spark, base: Layout, paths: list[str], target: str) -> None:
    """Write the base version's rows of `paths` (features or errors) in the shard-rows format to `target`."""
    from pyspark.sql import functions as F

    keep = spark.createDataFrame(pd.DataFrame({"path": pd.Series(paths, dtype="string")}), "path string")
    metadata = spark.read.parquet(base.metadata).select(
        "path", "label", "split", F.unix_micros("modified").alias("modified_us"), "width", "height", "bytes",
        "sha256")
    features = spark.read.parquet(base.features).select("path", "features")
    errors = spark.read.parquet(base.errors).select("path", "stage", "error")
    rows = (metadata.join(F.broadcast(keep), "path")
            .join(features, "path", "left")
            .join(errors, "path", "left"))
    carried = [F.col(field.name) if field.name in rows.columns
               else F.lit(None).cast(schema.spark_type(field.type)).alias(field.name)
               for field in schema.SHARD_ROWS]  # no worker seconds: nothing was featurised
    rows.select(*carried).write.mode("overwrite").parquet(target)
