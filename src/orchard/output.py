"""Where a run's files live, and how readers find the finished ones (no Spark, no heavy imports).

An output is either a single run (`OUT/features/ ... OUT/run.json OUT/_SUCCESS`) or a versioned store made
by `--incremental` runs: `OUT/v=0001/`, `OUT/v=0002/`, ... each a complete single-run output, plus
`OUT/_LATEST` (JSON, written after the version's `_SUCCESS`) naming the newest committed version.
`finished_run()` turns either form into the folder of one finished run; everything that reads outputs
(verify, report, train, predict, notebooks) goes through it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pyarrow.fs as pafs

from orchard import record
from orchard.errors import ConfigError
from orchard.io import fs
from orchard.record import RunRecord

DATASETS = ("features", "pca", "metadata", "errors", "variance")
COMMITTED = (*DATASETS, "model", "changes", "csv", "skipped")  # folders a run builds in staging and moves at commit
VERSION_PATTERN = re.compile(r"^v=(\d{4,})$")
CLASSIFIER_STAGING = "_classifier.tmp"  # where `orchard train` builds classifier/ before swapping it in


@dataclass(frozen=True)
class Layout:
    """Where everything lives under one run's output folder."""

    root: str

    def folder(self, name: str) -> str:
        """The folder `name` (a dataset, `model`, ...) of this run."""
        return fs.join(self.root, name)

    @property
    def features(self) -> str:
        """The 1280-D features of every decoded image (path, label, split, features)."""
        return self.folder("features")

    @property
    def pca(self) -> str:
        """The PCA projection of every decoded image (path, label, split, pca)."""
        return self.folder("pca")

    @property
    def metadata(self) -> str:
        """One row per listed file: size, modification time, status, image facts."""
        return self.folder("metadata")

    @property
    def errors(self) -> str:
        """One row per file that failed, with its stage and error."""
        return self.folder("errors")

    @property
    def variance(self) -> str:
        """Explained variance per principal component."""
        return self.folder("variance")

    @property
    def model(self) -> str:
        """The reloadable PipelineModel (scaler + PCA)."""
        return self.folder("model")

    @property
    def changes(self) -> str:
        """What an incremental run added, changed and removed."""
        return self.folder("changes")

    @property
    def skipped(self) -> str:
        """The files the listing skipped, with reasons (`paths.csv`)."""
        return self.folder("skipped")

    @property
    def classifier(self) -> ClassifierLayout:
        """What `orchard train` wrote: model/, predictor/, metrics.json, confusion/."""
        return ClassifierLayout(self.folder("classifier"))

    @property
    def classifier_staging(self) -> ClassifierLayout:
        """Where `orchard train` builds the classifier before swapping it in (an interrupted train leaves it)."""
        return ClassifierLayout(self.folder(CLASSIFIER_STAGING))

    @property
    def work(self) -> str:
        """Scratch space of an unfinished run (manifest, shard rows, stats); removed at commit."""
        return fs.join(self.root, "_work")

    @property
    def staging(self) -> Layout:
        """Where the run builds its datasets, model and CSV copies before the commit moves them to `root`."""
        return Layout(fs.join(self.work, "commit"))

    @property
    def skipped_list(self) -> str:
        """The files the listing skipped, with reasons (scratch; committed as `skipped/paths.csv`)."""
        return fs.join(self.work, "skipped.parquet")

    @property
    def rows(self) -> str:
        """Featurised rows of every finished shard."""
        return fs.join(self.work, "rows")

    @property
    def stats(self) -> str:
        """Per-shard stats files, each written after its shard's rows (the resume markers)."""
        return fs.join(self.work, "stats")

    def shard_rows(self, shard: int) -> str:
        """Rows of one shard."""
        return fs.join(self.rows, f"shard={shard:05d}")

    def shard_stats(self, shard: int) -> str:
        """Stats file of one shard."""
        return fs.join(self.stats, f"shard-{shard:05d}.json")

    @property
    def run_json(self) -> str:
        """The run's account: config, model, counts, timings, PCA, part checksums."""
        return fs.join(self.root, "run.json")

    @property
    def success(self) -> str:
        """The commit marker: written last, so a folder without it is incomplete."""
        return fs.join(self.root, "_SUCCESS")

    def csv(self, dataset: str) -> str:
        """Where --csv writes the CSV copy of a dataset."""
        return fs.join(self.root, "csv", dataset)


@dataclass(frozen=True)
class ClassifierLayout:
    """Where `orchard train`'s files live under its folder (`classifier/`, or its staging folder)."""

    root: str

    @property
    def model(self) -> str:
        """The Spark PipelineModel: features -> scaler + PCA -> logistic regression -> label."""
        return fs.join(self.root, "model")

    @property
    def predictor(self) -> str:
        """The Spark-free bundle that `predict` and `serve` load."""
        return fs.join(self.root, "predictor")

    @property
    def metrics(self) -> str:
        """metrics.json: accuracy, macro F1, per-class scores."""
        return fs.join(self.root, "metrics.json")

    @property
    def confusion(self) -> str:
        """The confusion counts on the Test split (Parquet)."""
        return fs.join(self.root, "confusion")


def version_name(number: int) -> str:
    """Folder name of a store's version: v=0001, v=0002, ..."""
    return f"v={number:04d}"


def latest_uri(store: str) -> str:
    """The store's pointer file naming its newest committed version."""
    return fs.join(store, "_LATEST")


def versions(store: str) -> list[int]:
    """Version numbers present under a versioned store (committed or not), ascending."""
    filesystem, path = fs.filesystem_and_path(store)
    if filesystem.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=False))
    found = (VERSION_PATTERN.match(info.base_name) for info in infos if info.type == pafs.FileType.Directory)
    return sorted(int(match.group(1)) for match in found if match)


def latest_version(store: str) -> int | None:
    """The newest committed version of a store, from `_LATEST`; None when the store has none."""
    if not fs.exists(latest_uri(store)):
        return None
    return int(fs.read_json(latest_uri(store))["version"])


def finished_run(output: str) -> str:
    """The folder of the finished run that `output` names (itself, or a store's latest version)."""
    if fs.exists(Layout(output).success):
        return output
    latest = latest_version(output)
    if latest is not None:
        return fs.join(output, version_name(latest))
    if versions(output):
        raise ConfigError(f"output {output} has no committed version yet (no _LATEST): rerun the same "
                          "command to finish it")
    if fs.exists(Layout(output).run_json) or fs.is_nonempty_dir(output):
        raise ConfigError(f"output {output} is incomplete (no _SUCCESS): rerun the same command to finish it")
    raise ConfigError(f"no orchard output at {output}: run `orchard run INPUT --output {output}` first")


def read_info(output: str) -> dict:
    """run.json of the finished run `output` names, as plain JSON (for notebooks); ConfigError when there is none."""
    return json.loads(fs.read_bytes(Layout(finished_run(output)).run_json))


def read_record(output: str) -> RunRecord:
    """The typed run.json of the finished run `output` names; raises ConfigError when there is none."""
    return record.read(Layout(finished_run(output)).run_json)
