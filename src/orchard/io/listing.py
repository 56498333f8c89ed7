"""List an image collection (by the driver: no Spark job) and select what a run processes.

Labels and splits come from the folder layout: label = parent folder, split = first-level folder when
the file is at least two folders deep (Fruits-360: Training/<class>/<image>). Selection (--classes,
--splits, --limit) is pure pandas, deterministic and testable without Spark.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import math
import os
import stat
from functools import lru_cache

import pandas as pd

from orchard.config import IMAGE_EXTENSIONS, RunConfig
from orchard.engine import engine_for
from orchard.errors import ConfigError, OrchardError
from orchard.io import fs

MANIFEST_COLUMNS = ["path", "rel", "label", "split", "size", "modified_us"]  # + list_error for local fixes


def list_images(spark, root: str, exclude: tuple[str, ...] = (),
                storage: fs.StorageOptions | None = None) -> pd.DataFrame:
    """Every image file under `root` (recursive), as a manifest: path, rel, label, split, size, modified_us
    (modification time, microseconds since the epoch, to the millisecond as Hadoop gives it: an instant,
    whatever the time zone). Paths are spelled as Spark spells them (file:/abs/dir/..., s3a://bucket/...).

    The driver lists: `os.walk` on a local tree, one recursive pyarrow listing elsewhere (S3, HDFS); Spark
    only qualifies the root. Every other file under `root` is accounted for in `manifest.attrs["skipped"]`
    (path -> reason): see `account_for_every_file`. Zero-byte files are listed (with size 0) so that they end
    up in errors/. Folders in `exclude` (e.g. the run's own output, when it lies inside the input) are skipped.
    """
    engine = engine_for(spark)
    excluded = tuple(engine.qualify(folder) for folder in exclude)
    return account_for_every_file(engine.qualify(root), excluded, storage)


def account_for_every_file(root: str, exclude: tuple[str, ...] = (),
                           storage: fs.StorageOptions | None = None) -> pd.DataFrame:
    """The manifest of the image files under `root` (qualified), from one walk of every file under it.

    - Names starting with '_' (camera files such as _DSC0001.jpg), which Hadoop hides, are images.
    - Names starting with '.' (.DS_Store, ._IMG.jpg resource forks, .git/) are skipped as hidden.
    - Files without an image extension (any case) are skipped, naming the extension.
    - Everything inside an orchard output folder (the run's own output, or any folder holding `_SUCCESS`
      and `run.json`, `_LATEST` or `_work/config.json`) is skipped, images included.
    - Local trees: directory links are followed, except back into a folder on the way (a cycle: its paths
      are counted in `attrs["cycle_paths"]`); broken links and link loops are `list` errors
      (`reconcile_local`).
    The skipped files are `attrs["skipped"]`, a dict path -> reason.
    """
    files, cycle_paths, link_errors = _walk(root, storage)
    outputs = {folder.rstrip("/") for folder in exclude} | _orchard_outputs(path for path, _, _ in files)
    inside = [folder + "/" for folder in sorted(outputs)]

    def in_output(path: str) -> str | None:
        return next((folder[:-1] for folder in inside if path.startswith(folder)), None)

    images, skipped = [], {}
    for path, size, modified in files:
        reason = skip_reason(relative(path, root), in_output(path))
        if reason is None:
            images.append((path, size, modified))
        else:
            skipped[path] = reason
    paths, sizes, mtimes = (list(column) for column in zip(*images, strict=True)) if images else ([], [], [])
    manifest = build_manifest(paths, sizes, mtimes, root)
    if link_errors:
        manifest = with_link_errors(manifest, link_errors)
    manifest.attrs["cycle_paths"] = cycle_paths
    manifest.attrs["skipped"] = dict(sorted(skipped.items()))
    return manifest


def skip_reason(rel: str, output_folder: str | None) -> str | None:
    """Why a file orchard will not featurise is skipped; None for an image it reads (hidden by Hadoop or not)."""
    if output_folder is not None:
        return f"inside the orchard output {output_folder}"
    parts = rel.split("/")
    if any(part.startswith(".") for part in parts):
        return "hidden (a name starting with '.')"
    name = parts[-1]
    extension = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if extension not in IMAGE_EXTENSIONS:
        return f"not an image format orchard reads (.{extension})" if extension else "no file extension"
    return None


def skipped_summary(skipped: dict[str, str]) -> dict[str, int]:
    """Skipped files counted by reason, most common first."""
    counts = pd.Series(list(skipped.values()), dtype="object").value_counts()
    return {str(reason): int(count) for reason, count in counts.items()}


def _orchard_outputs(paths) -> set[str]:
    """Folders that are orchard outputs, from the files found under them."""
    markers: dict[str, set[str]] = {}
    for path in paths:
        folder, name = path.rsplit("/", 1)
        markers.setdefault(folder, set()).add(name)
    outputs = {folder for folder, names in markers.items()
               if {"_SUCCESS", "run.json"} <= names or "_LATEST" in names}
    outputs |= {folder.rsplit("/", 1)[0] for folder, names in markers.items()
                if folder.endswith("/_work") and "config.json" in names}
    return outputs


Walk = tuple[list[tuple[str, int, int | None]], int, dict[str, str]]


def _walk(root: str, storage: fs.StorageOptions | None) -> Walk:
    """(path in Spark's form, size, modified_us to the millisecond) of every file under `root`, links
    included; how many paths directory cycles would have added; the broken links' reasons (path -> reason).
    A one-line error if `root` is missing."""
    if root.startswith("file:"):
        return _walk_local(root[len("file:"):])
    if not fs.exists(root, storage):
        raise OrchardError(f"input {root} does not exist: give an existing folder or URI")
    scheme = root.split("://", 1)[0]
    return [(f"{scheme}://{path}", size, _to_millisecond(modified))
            for path, size, modified in fs.walk_files(root, storage)], 0, {}


def _walk_local(root: str) -> Walk:
    if not os.path.isdir(root):
        raise OrchardError(f"input {root} does not exist: give an existing folder or URI")
    files, cycle_paths, link_errors, real_root = [], 0, {}, os.path.realpath(root)
    for directory, folders, names in os.walk(root, followlinks=True):
        for folder in list(folders):
            if _through_cycle(f"{directory}/{folder}", root, real_root):
                folders.remove(folder)  # listed once, through its real path
                cycle_paths += sum(len(found) for _, _, found in os.walk(f"{directory}/{folder}"))
        for name in names:
            path = f"{directory}/{name}"
            try:
                status = os.stat(path)  # a link's target
            except OSError as error:
                if not os.path.islink(path):
                    continue  # vanished while walking
                link_errors[f"file:{path}"] = ("symbolic link loop" if error.errno == errno.ELOOP
                                               else "broken symbolic link (its target does not exist)")
                files.append((f"file:{path}", 0, None))
                continue
            if stat.S_ISREG(status.st_mode):
                files.append((f"file:{path}", status.st_size, _to_millisecond(status.st_mtime_ns // 1000)))
    return files, cycle_paths, link_errors


def _to_millisecond(modified_us: int | None) -> int | None:
    """A modification time as Hadoop's listing gives it (milliseconds), in microseconds."""
    return None if modified_us is None else modified_us // 1000 * 1000


def with_link_errors(manifest: pd.DataFrame, link_errors: dict[str, str]) -> pd.DataFrame:
    """Broken links and link loops as `list` errors (`list_error`; size 0, no time): rows of errors/."""
    return manifest.assign(list_error=manifest["path"].map(link_errors))


def _through_cycle(directory: str, root: str, real_root: str) -> bool:
    """True when some folder on the way from `root` to `directory` resolves to one already passed."""
    seen, current = {real_root}, root.rstrip("/")
    for part in os.path.relpath(directory, root).split(os.sep):
        if part == ".":
            continue
        current = f"{current}/{part}"
        real = _realpath(current)
        if real in seen:
            return True
        seen.add(real)
    return False


@lru_cache(maxsize=65536)
def _realpath(path: str) -> str:
    return os.path.realpath(path)


def build_manifest(paths: list[str], sizes: list[int], mtimes: list, root: str) -> pd.DataFrame:
    """Manifest rows from listed paths: label and split parsed from the path relative to `root`."""
    rels = [relative(path, root) for path in paths]
    labels, splits = zip(*(label_and_split(rel) for rel in rels), strict=True) if rels else ((), ())
    manifest = pd.DataFrame({
        "path": paths, "rel": rels, "label": list(labels), "split": list(splits),
        "size": pd.Series(sizes, dtype="int64"), "modified_us": pd.Series(mtimes, dtype="Int64"),
    }, columns=MANIFEST_COLUMNS)
    return manifest.sort_values("path", ignore_index=True)


def relative(path: str, root: str) -> str:
    """`path` relative to `root` (its base name if it is not under `root`)."""
    prefix = root.rstrip("/") + "/"
    return path[len(prefix):] if path.startswith(prefix) else path.rsplit("/", 1)[-1]


def label_and_split(rel: str) -> tuple[str, str]:
    """('Apple', 'Training') for Training/Apple/1.jpg; ('Apple', '') for Apple/1.jpg; ('', '') for 1.jpg."""
    parts = rel.split("/")
    label = parts[-2] if len(parts) >= 2 else ""
    split = parts[0] if len(parts) >= 3 else ""
    return label, split


def select(manifest: pd.DataFrame, config: RunConfig) -> pd.DataFrame:
    """Apply --classes, --splits and --limit; an empty result is a one-line error saying what exists."""
    if manifest.empty:
        skipped = skipped_summary(manifest.attrs.get("skipped", {}))
        shown = "; ".join(f"{reason}: {count}" for reason, count in list(skipped.items())[:3])
        raise ConfigError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {config.input}"
                          + (f" (skipped {sum(skipped.values())} files: {shown})" if skipped else "")
                          + ": check the path")
    selected = manifest
    if config.splits:
        selected = selected[selected["split"].isin(config.splits)]
        if selected.empty:
            found = sorted(set(manifest["split"]) - {""}) or ["none (no first-level folders)"]
            raise ConfigError(f"--splits {','.join(config.splits)} matches no images; splits found: "
                              f"{', '.join(found)}")
    if config.classes:
        keep = selected["label"].map(lambda label: any(fnmatch.fnmatchcase(label, p) for p in config.classes))
        if not keep.any():
            found = sorted(set(selected["label"]))
            shown = ", ".join(found[:10]) + (f" ... ({len(found)} in all)" if len(found) > 10 else "")
            raise ConfigError(f"--classes {','.join(config.classes)} matches no class; classes found: {shown}")
        selected = selected[keep]
    if config.limit is not None:
        selected = stratified_sample(selected, config.limit)
    return selected.sort_values("path", ignore_index=True)


def stratified_sample(manifest: pd.DataFrame, limit: int) -> pd.DataFrame:
    """`limit` images, split across classes in proportion to their size (largest remainder), chosen
    by a hash of the relative path: the same N gives the same images on every run and machine."""
    if limit >= len(manifest):
        return manifest
    counts = manifest.groupby("label").size().sort_index()
    exact = counts * (limit / counts.sum())
    quota = exact.map(math.floor)
    remainder = (exact - quota).sort_values(ascending=False, kind="stable")
    for label in remainder.index[: limit - int(quota.sum())]:
        quota[label] += 1
    ranked = manifest.assign(_key=manifest["rel"].map(_stable_hash)).sort_values(["label", "_key"])
    ranked = ranked[ranked.groupby("label").cumcount() < ranked["label"].map(quota)]
    return ranked.drop(columns="_key")


def _stable_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf8")).hexdigest()
