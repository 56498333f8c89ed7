"""Incremental runs: a store of versions, only added/changed images featurised, removed ones gone."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from orchard.cli import main
from orchard.config import RunConfig
from orchard.errors import ConfigError
from orchard.output import finished_run, read_info
from orchard.pipeline import run
from orchard.sample import SampleSpec, make_sample
from orchard.verify import verify

pytestmark = pytest.mark.spark


def config(data: Path, store: Path, **changes) -> RunConfig:
    values = dict(input=str(data), output=str(store), weights="random", seed=0, k=4, shard_size=8,
                  images_per_task=8, progress=False, incremental=True)
    return RunConfig(**{**values, **changes})


def features_by_path(folder: str | Path) -> dict[str, np.ndarray]:
    frame = pd.read_parquet(Path(folder) / "features")
    return {path: np.asarray(vector) for path, vector in zip(frame["path"], frame["features"], strict=True)}


def pca_by_path(folder: str | Path) -> dict[str, np.ndarray]:
    frame = pd.read_parquet(Path(folder) / "pca")
    return {path: np.asarray(vector) for path, vector in zip(frame["path"], frame["pca"], strict=True)}


@pytest.fixture(scope="module")
def store(spark, tmp_path_factory):
    """v=0001 from a collection with a corrupt file, then the collection changes and v=0002 is written."""
    root = tmp_path_factory.mktemp("incremental")
    data, store = root / "data", root / "store"
    make_sample(data, SampleSpec(classes=3, train_per_class=6, test_per_class=2, seed=4))
    (next((data / "Training").iterdir()) / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    first = run(config(data, store), spark)
    files = sorted((data / "Training").rglob("*_100.jpg"))
    removed, changed, copied = files[0], files[3], files[5]
    removed.unlink()
    changed.write_bytes(files[10].read_bytes())  # new content, new size or at least a new mtime
    os.utime(changed, (changed.stat().st_mtime + 10,) * 2)
    added = copied.parent / "added_100.jpg"
    shutil.copy(copied, added)
    second = run(config(data, store), spark)
    paths = {name: f"file:{path}" for name, path in (("removed", removed), ("changed", changed), ("added", added))}
    return {"data": data, "store": store, "first": first, "second": second, "paths": paths}


def test_versions_are_kept_and_latest_points_to_the_newest(store):
    root = store["store"]
    assert sorted(p.name for p in root.iterdir()) == ["_LATEST", "v=0001", "v=0002"]
    assert json.loads((root / "_LATEST").read_text())["version"] == 2
    assert finished_run(str(root)) == str(root / "v=0002")
    assert read_info(str(root))["incremental"]["version"] == 2
    for version in ("v=0001", "v=0002"):
        assert all(finding.ok for finding in verify(str(root / version))), version
    assert all(finding.ok for finding in verify(str(root)))


def test_only_added_and_changed_images_are_featurised(store):
    change = store["second"].info["incremental"]
    total = store["first"].counts["listed"]
    assert change == {**change, "version": 2, "base_version": "v=0001", "added": 1, "changed": 1, "removed": 1,
                      "unchanged": total - 2, "featurized": 2, "pca": "reused from v=0001"}
    assert sum(shard["count"] for shard in store["second"].info["shards"]) == 2
    changes = pd.read_parquet(store["store"] / "v=0002" / "changes")
    assert dict(zip(changes["path"], changes["change"], strict=True)) == {
        store["paths"]["added"]: "added", store["paths"]["changed"]: "changed", store["paths"]["removed"]: "removed"}


def test_new_version_has_every_current_image_once_and_no_removed_one(store):
    second = store["second"]
    metadata = pd.read_parquet(store["store"] / "v=0002" / "metadata")
    assert store["paths"]["removed"] not in set(metadata["path"])
    assert {store["paths"]["added"], store["paths"]["changed"]} <= set(metadata["path"])
    assert second.counts["listed"] == store["first"].counts["listed"] == len(metadata) == metadata["path"].nunique()
    assert metadata["modified"].notna().all()
    errors = pd.read_parquet(store["store"] / "v=0002" / "errors")
    assert errors["path"].str.endswith("corrupt.jpg").tolist() == [True]  # an unchanged error is carried


def test_carried_rows_are_bit_for_bit_and_new_rows_equal_a_full_run(spark, store, tmp_path):
    old, new = features_by_path(store["store"] / "v=0001"), features_by_path(store["store"] / "v=0002")
    for path in set(old) & set(new) - {store["paths"]["changed"]}:
        assert np.array_equal(old[path], new[path])
    full = run(RunConfig(input=str(store["data"]), output=str(tmp_path / "full"), weights="random", seed=0, k=4,
                         progress=False), spark)
    reference = features_by_path(full.output)
    assert reference.keys() == new.keys()
    assert all(np.array_equal(reference[path], new[path]) for path in new)
    spread = np.stack(list(new.values())).std(axis=0).mean()
    assert spread > 1e-3  # random weights still give image-dependent features


def test_pca_model_is_reused_so_unchanged_images_keep_their_coordinates(store):
    old, new = pca_by_path(store["store"] / "v=0001"), pca_by_path(store["store"] / "v=0002")
    shared = set(old) & set(new) - {store["paths"]["changed"]}
    assert shared and all(np.array_equal(old[path], new[path]) for path in shared)
    assert store["second"].info["pca"] == store["first"].info["pca"]


def test_nothing_changed_writes_no_version(spark, store):
    again = run(config(store["data"], store["store"]), spark)
    assert again.info["up_to_date"] and again.output == str(store["store"] / "v=0002")
    assert "no new version" in again.summary()
    assert not (store["store"] / "v=0003").exists()


def test_refit_pca_writes_a_version_with_a_new_fit(spark, store, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(store["store"], copy)
    refit = run(config(store["data"], copy, refit_pca=True, k=None, variance=0.9), spark)
    assert refit.info["incremental"]["pca"] == "fitted on this version"
    assert refit.info["incremental"]["featurized"] == 0
    assert refit.info["pca"]["rule"] == "variance" and refit.info["pca"]["target"] == 0.9
    assert finished_run(str(copy)) == str(copy / "v=0003")


def test_a_commit_without_pointer_update_is_healed(spark, store, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(store["store"], copy)
    (copy / "_LATEST").write_text(json.dumps({"version": 1, "path": "v=0001"}))  # died before publishing v=0002
    result = run(config(store["data"], copy), spark)
    assert result.info["up_to_date"]
    assert json.loads((copy / "_LATEST").read_text())["version"] == 2


def test_incompatible_reruns_are_refused_with_one_line(spark, store, tmp_path, capsys):
    with pytest.raises(ConfigError, match="other weights"):
        run(config(store["data"], store["store"], seed=1), spark)
    with pytest.raises(ConfigError, match="--refit-pca"):
        run(config(store["data"], store["store"], k=5), spark)
    with pytest.raises(ConfigError, match="drop --overwrite"):
        config(store["data"], store["store"], overwrite=True)
    with pytest.raises(ConfigError, match="single"):
        run(config(store["data"], store["store"] / "v=0001"), spark)
    code = main(["run", str(store["data"]), "-o", str(tmp_path / "x"), "--refit-pca", "--weights", "random"])
    assert code == 2 and "--refit-pca only applies" in capsys.readouterr().err
    assert sorted(p.name for p in store["store"].iterdir()) == ["_LATEST", "v=0001", "v=0002"]


def test_carried_and_featurised_shard_rows_have_one_schema(spark, store, tmp_path):
    """Shard rows are read back without mergeSchema: carried rows must have the columns and types of featurised
    ones (schema.SHARD_ROWS), or a missed column would silently turn into nulls under --incremental."""
    import pyarrow.dataset as pads

    from orchard import incremental, schema
    from orchard import spark as sparkglue
    from orchard.engine import engine_for
    from orchard.featurize import weights
    from orchard.io import listing
    from orchard.output import Layout
    from orchard.pipeline import _run_shard, worker_settings

    manifest = listing.list_images(spark, str(store["data"])).head(4)
    incremental.carry_rows(spark, Layout(str(store["store"] / "v=0001")), manifest["path"].tolist(),
                           str(tmp_path / "carried"))
    source = weights.model_source("random", 0)
    model = engine_for(spark).ship_model(source.onnx_bytes, source.onnx_sha256[:16])
    udf = sparkglue.featurize_udf(model, source.onnx_sha256[:16], worker_settings(config(store["data"], tmp_path), 1))
    _run_shard(spark, udf, manifest, str(tmp_path / "featurised"), slots=1, images_per_task=8)
    carried, featurised = (pads.dataset(tmp_path / name, format="parquet").schema.remove_metadata()
                           for name in ("carried", "featurised"))
    assert carried.names == featurised.names == schema.SHARD_ROWS.names
    assert [field.type for field in carried] == [field.type for field in featurised] == schema.SHARD_ROWS.types
    rows = pads.dataset(tmp_path / "carried", format="parquet").to_table()
    assert rows.num_rows == 4 and rows["features"].null_count < 4  # real rows came across, not nulls
