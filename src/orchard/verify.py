"""Check a finished output without Spark: marker, part checksums, accounting, uniqueness, vector sizes, model.

Reads through orchard's filesystem layer (pyarrow), so it works on local folders and S3 alike.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow.compute as pc

from orchard import record
from orchard.errors import ConfigError
from orchard.featurize.contract import FEATURE_DIM
from orchard.io import fs
from orchard.io.storage import StorageOptions
from orchard.output import DATASETS, Layout, finished_run, versions

MARKERS = ("_SUCCESS", "run.json", "_work", "_LATEST", *DATASETS, "model")  # what any orchard output has


@dataclass(frozen=True)
class Finding:
    """One check's outcome."""

    check: str
    ok: bool
    detail: str

    def line(self) -> str:
        """The finding as printed by `orchard verify`."""
        return f"{'ok  ' if self.ok else 'FAIL'} {self.check}: {self.detail}"


def data_files(folder: str) -> list[str]:
    """The data files of a dataset folder (Spark's and orchard's hidden files excluded)."""
    return [name for name in fs.list_files(folder) if not name.startswith((".", "_"))]


def part_checksums(output: str) -> dict[str, dict[str, dict]]:
    """dataset -> file -> {bytes, sha256}, recorded in run.json at commit time."""
    recorded: dict[str, dict[str, dict]] = {}
    for dataset in DATASETS:
        folder = fs.join(output, dataset)
        recorded[dataset] = {}
        for name in data_files(folder):
            data = fs.read_bytes(fs.join(folder, name))
            recorded[dataset][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return recorded


def verify(location: str, storage: StorageOptions | None = None) -> list[Finding]:
    """Every check on the finished run `location` names (a store: its latest version); stops early if none.

    `storage` sets the S3 endpoint/region for s3:// outputs (default: the AWS environment); it applies to
    this call only. Raises ConfigError when `location` holds files but none orchard writes (the input
    folder, say).
    """
    with fs.using_storage(storage):
        return _verify(location)


def _verify(location: str) -> list[Finding]:
    if fs.is_nonempty_dir(location) and not versions(location) and not any(
            fs.exists(fs.join(location, marker)) for marker in MARKERS):
        raise ConfigError(f"{location} is not an orchard output (no run.json, no features/): point verify at the "
                          "folder given to --output")
    try:
        output = finished_run(location)
    except ConfigError as error:
        return [Finding("complete", False, str(error))]
    layout = Layout(output)
    if not fs.exists(layout.run_json):
        return [Finding("complete", False, "no run.json: the run did not finish (rerun it to resume)")]
    info = record.read(layout.run_json)
    where = "" if output == location else f" ({output.rsplit('/', 1)[-1]}, the latest version)"
    findings = [Finding("complete", True, f"_SUCCESS and run.json present{where}")]
    findings.append(_check_parts(output, info.parts))
    counts = info.counts
    metadata = fs.read_columns(layout.metadata, ["path", "status"])
    features = fs.read_columns(layout.features, ["path", "features"])
    errors = fs.read_columns(layout.errors, ["path"])
    pca = fs.read_columns(layout.pca, ["path", "pca"])
    adds_up = (counts.listed == counts.ok + counts.errors == metadata.num_rows
               and features.num_rows == pca.num_rows == counts.ok and errors.num_rows == counts.errors)
    findings.append(Finding(
        "accounting", adds_up,
        f"listed {counts.listed} = ok {counts.ok} + errors {counts.errors}; rows: metadata "
        f"{metadata.num_rows}, features {features.num_rows}, pca {pca.num_rows}, errors {errors.num_rows}"))
    paths = metadata["path"].to_pylist()
    ok_paths, error_paths = set(features["path"].to_pylist()), set(errors["path"].to_pylist())
    findings.append(Finding(
        "unique paths", len(set(paths)) == len(paths) and not ok_paths & error_paths
        and ok_paths | error_paths == set(paths),
        f"{len(set(paths))} distinct of {len(paths)}; features and errors partition the listed files"))
    k = info.pca["k"]
    findings.append(_check_lengths("features", features["features"], FEATURE_DIM))
    findings.append(_check_lengths("pca", pca["pca"], k))
    model_parts = [fs.join(layout.model, "metadata"), fs.join(layout.model, "stages")]
    findings.append(Finding("model", all(fs.exists(p) for p in model_parts), "model/metadata and model/stages"))
    return findings


def _check_parts(output: str, recorded: dict) -> Finding:
    if not recorded:
        return Finding("checksums", False, "run.json records no part checksums")
    actual = part_checksums(output)
    bad = [f"{dataset}/{name}" for dataset in DATASETS
           for name in set(recorded.get(dataset, {})) | set(actual.get(dataset, {}))
           if recorded.get(dataset, {}).get(name) != actual.get(dataset, {}).get(name)]
    total = sum(len(files) for files in recorded.values())
    return Finding("checksums", not bad, f"{total} parts match run.json" if not bad else f"differ: {bad[:5]}")


def _check_lengths(dataset: str, column, expected: int) -> Finding:
    lengths = pc.list_value_length(column)
    low, high = pc.min(lengths).as_py(), pc.max(lengths).as_py()
    ok = len(column) == 0 or (low == high == expected and column.null_count == 0)
    return Finding(f"{dataset} vectors", ok, f"lengths {low}..{high}, expected {expected}")
