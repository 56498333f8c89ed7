"""Where a run's files live, and how readers find the finished ones (no Spark, no heavy imports).

An output is either a single run (`OUT/features/ ... OUT/run.json OUT/_SUCCESS`) or a versioned store made
by `--incremental` runs: `OUT/v=0001/`, `OUT/v=0002/`, ... each a complete single-run output, plus
`OUT/_LATEST` (JSON, written after the version's `_SUCCESS`) naming the newest committed version.
`resolve()` turns either form into the folder of one finished run; everything that reads outputs
(verify, report, train, predict, notebooks) goes through it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pyarrow.fs as pafs

from orchard.errors import ConfigError
from orchard.io import fs

DATASETS = ("features", "pca", "metadata", "errors", "variance")
COMMITTED = (*DATASETS, "model", "changes", "csv", "skipped")  # folders a run builds in staging and moves at commit
VERSION_PATTERN = re.compile(r"^v=(\d{4,})$")


@dataclass(frozen=True)
class Layout:
    """Where everything lives under one run's output folder."""

    root: str

    def __getattr__(self, name: str) -> str:
        if name in DATASETS or name in ("model", "changes", "skipped"):
            return fs.join(self.root, name)
        raise AttributeError(name)

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


def version_name(number: int) -> str:
    """Folder name of a store's version: v=0001, v=0002, ..."""
    return f"v={number:04d}"


def latest_uri(store: str) -> str:
    """The store's pointer file naming its newest committed version."""
    return fs.join(store, "_LATEST")


def versions(store: str) -> list[int]:
    """Version numbers present under a versioned store (committed or not), ascending."""
    filesystem, path = fs.resolve(store)
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


def resolve(output: str) -> str:
    """The folder of the finished run that `output` names (itself, or a store's latest version)."""
    if fs.exists(fs.join(output, "_SUCCESS")):
        return output
    latest = latest_version(output)
    if latest is not None:
        return fs.join(output, version_name(latest))
    if versions(output):
        raise ConfigError(f"output {output} has no committed version yet (no _LATEST): rerun the same "
                          "command to finish it")
    if fs.exists(fs.join(output, "run.json")) or fs.is_nonempty_dir(output):
        raise ConfigError(f"output {output} is incomplete (no _SUCCESS): rerun the same command to finish it")
    raise ConfigError(f"no orchard output at {output}: run `orchard run INPUT --output {output}` first")


def read_info(output: str) -> dict:
    """run.json of the finished run `output` names; raises ConfigError when there is none."""
    return json.loads(fs.read_bytes(Layout(resolve(output)).run_json))
