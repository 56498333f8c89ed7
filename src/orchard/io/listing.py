"""List an image collection with Spark's binaryFile source and select what a run processes.

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
from contextlib import contextmanager
from functools import lru_cache
from urllib.parse import unquote

import pandas as pd

from orchard.config import IMAGE_EXTENSIONS, RunConfig
from orchard.engine import engine_for
from orchard.errors import ConfigError, OrchardError
from orchard.io import fs

MANIFEST_COLUMNS = ["path", "rel", "label", "split", "size", "modified_us"]  # + list_error for local fixes
# The listing reads no file content, so a file costs nothing to "open": plan partitions by the files' bytes
# (one per core, at most 128 MB each) instead of one per 32 files (Spark's default 4 MB open cost): e.g. 3
# tasks instead of ~2,100 for Fruits-360's 67,692 files.
LISTING_CONF = {"spark.sql.files.openCostInBytes": "1"}
# Local folders are listed faster by the driver itself than by a Spark job (which S3 prefixes need).
LOCAL_LISTING_CONF = {"spark.sql.sources.parallelPartitionDiscovery.threshold": str(2**31 - 1)}


def extension_glob(extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> str:
    """A case-insensitive Hadoop glob for the extensions: *.{[jJ][pP][gG],...}."""
    def insensitive(ext: str) -> str:
        return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in ext)

    return "*.{" + ",".join(insensitive(ext) for ext in extensions) + "}"


def list_images(spark, root: str, exclude: tuple[str, ...] = (),
                storage: fs.StorageOptions | None = None) -> pd.DataFrame:
    """Every image file under `root` (recursive), as a manifest: path, rel, label, split, size, modified_us
    (modification time, microseconds since the epoch: an instant, whatever the time zone).

    Every other file under `root` is accounted for in `manifest.attrs["skipped"]` (path -> reason): see
    `account_for_every_file`. Zero-byte files are listed (with size 0) so that they end up in errors/.
    Folders in `exclude` (e.g. the run's own output, when it lies inside the input) are skipped.
    """
    qualified_root = engine_for(spark).qualify(root)
    local = qualified_root.startswith("file:")
    with _session_conf(spark, {**LISTING_CONF, **(LOCAL_LISTING_CONF if local else {})}):
        paths, sizes, mtimes = _list(spark, root)
    manifest = build_manifest(paths, sizes, mtimes, qualified_root)
    excluded = tuple(engine_for(spark).qualify(folder) for folder in exclude)
    return account_for_every_file(manifest, qualified_root, excluded, storage)


def account_for_every_file(manifest: pd.DataFrame, root: str, exclude: tuple[str, ...] = (),
                           storage: fs.StorageOptions | None = None) -> pd.DataFrame:
    """Walk every regular file under `root` and put right what Hadoop's listing hides or gets wrong.

    - Names starting with '_' (camera files such as _DSC0001.jpg) are hidden by Hadoop: they are added.
    - Names starting with '.' (.DS_Store, ._IMG.jpg resource forks, .git/) are skipped as hidden.
    - Files without an image extension are skipped, naming the extension.
    - Everything inside an orchard output folder (the run's own output, or any folder holding `_SUCCESS`
      and `run.json`, `_LATEST` or `_work/config.json`) is skipped, images included.
    - Local trees: see `reconcile_local` (links, cycles, unreadable files).
    The skipped files are `attrs["skipped"]`, a dict path -> reason.
    """
    files = list(_walk(root, storage))
    outputs = {folder.rstrip("/") for folder in exclude} | _orchard_outputs(path for path, _, _ in files)
    inside = [folder + "/" for folder in sorted(outputs)]

    def in_output(path: str) -> str | None:
        return next((folder[:-1] for folder in inside if path.startswith(folder)), None)

    output_of = manifest["path"].map(in_output)
    skipped = {path: skip_reason(relative(path, root), folder)
               for path, folder in zip(manifest["path"][output_of.notna()], output_of.dropna(), strict=True)}
    manifest = manifest[output_of.isna()]
    listed = set(manifest["path"])
    unlisted = []
    for path, size, modified in files:
        if path not in listed:
            reason = skip_reason(relative(path, root), in_output(path))
            if reason is None:
                unlisted.append((path, size, modified))
            else:
                skipped[path] = reason
    if root.startswith("file:"):
        manifest = reconcile_local(manifest, root[len("file:"):], unlisted)
    elif unlisted:  # on object stores only Hadoop's hidden names go unlisted: those are images to read
        paths, sizes, mtimes = zip(*unlisted, strict=True)
        extra = build_manifest(list(paths), list(sizes), list(mtimes), root)
        manifest = pd.concat([manifest, extra], ignore_index=True).sort_values("path", ignore_index=True)
    manifest = manifest.reset_index(drop=True)
    manifest.attrs["cycle_paths"] = int(manifest.attrs.get("cycle_paths", 0))
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


def _walk(root: str, storage: fs.StorageOptions | None):
    """(path in the listing's form, size, modified_us) of every file under `root`, links included."""
    if root.startswith("file:"):
        for directory, _, names in os.walk(root[len("file:"):]):
            for name in names:
                path = f"{directory}/{name}"
                try:
                    status = os.stat(path)  # a link's target
                except OSError:
                    try:
                        status = os.lstat(path)  # a broken link or a loop: reconcile_local names it
                    except OSError:
                        continue
                if stat.S_ISREG(status.st_mode) or stat.S_ISLNK(status.st_mode):
                    yield f"file:{path}", status.st_size, status.st_mtime_ns // 1000
        return
    scheme = root.split("://", 1)[0]
    for path, size, modified in fs.walk_files(root, storage):
        yield f"{scheme}://{path}", size, modified


def _list(spark, root: str) -> tuple[list[str], list[int], list]:
    """Paths, sizes and modification times (microseconds) of the image files under `root`."""
    from pyspark.errors import AnalysisException

    try:
        source = (
            spark.read.format("binaryFile")
            .option("recursiveFileLookup", "true")
            .option("pathGlobFilter", extension_glob())
            .load(root)
        )
        if "path" not in source.columns:  # nothing matched (no file with an image extension): no schema
            return [], [], []
        # content pruned: not read
        frame = source.selectExpr("path", "length", "unix_micros(modificationTime) AS modified").toPandas()
    except AnalysisException as exc:
        if "PATH_NOT_FOUND" in str(exc) or "does not exist" in str(exc):
            raise OrchardError(f"input {root} does not exist: give an existing folder or URI") from None
        raise
    paths, sizes, mtimes = frame["path"].tolist(), frame["length"].tolist(), frame["modified"].tolist()
    # Spark's scan drops zero-byte files; the file index still has them, and they must be accounted for.
    index = source.inputFiles()
    if len(index) != len(paths):
        listed = set(paths)
        empty = sorted({_hadoop_path_string(uri) for uri in index} - listed)
        paths, sizes = paths + empty, sizes + [0] * len(empty)
        mtimes = mtimes + [fs.modified_us(path) for path in empty]
    return paths, sizes, mtimes


@contextmanager
def _session_conf(spark, values: dict[str, str]):
    """Apply SQL settings for the `with` block, except those the session already sets (e.g. by --conf)."""
    applied = [key for key in values if spark.conf.get(key, None) is None]
    for key in applied:
        spark.conf.set(key, values[key])
    try:
        yield
    finally:
        for key in applied:
            spark.conf.unset(key)


def reconcile_local(manifest: pd.DataFrame, root: str, unlisted: list[tuple[str, int, int | None]]) -> pd.DataFrame:
    """Local trees: what Hadoop's listing gets wrong, put right, given the image files it did not list.

    Hadoop silently drops broken links, links to themselves and names starting with '_', and follows a
    directory link back to an ancestor until the path is too long, listing the same files again under
    ever-longer paths. Readable '_' files are added; other unlisted files come back as `list` errors;
    paths through a directory cycle are removed (their files are listed once through the real path) and
    counted in `manifest.attrs["cycle_paths"]`.
    """
    real_root = os.path.realpath(root)
    cyclic = {d for d in {p.rsplit("/", 1)[0] for p in manifest["path"]}
              if _through_cycle(d[len("file:"):], root, real_root)}
    in_cycle = manifest["path"].map(lambda p: p.rsplit("/", 1)[0] in cyclic).astype(bool)  # bool when empty too
    kept = manifest[~in_cycle]
    if unlisted:
        paths, sizes, mtimes = zip(*unlisted, strict=True)
        extra = build_manifest(list(paths), list(sizes), list(mtimes), "file:" + root)
        reasons = extra["path"].map(lambda path: _unlisted_reason(path[len("file:"):]))
        extra["list_error"] = reasons
        extra.loc[reasons.notna(), ["size", "modified_us"]] = [0, None]
        kept = pd.concat([kept, extra], ignore_index=True).sort_values("path", ignore_index=True)
    kept.attrs["cycle_paths"] = int(in_cycle.sum())
    return kept


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


def _unlisted_reason(path: str) -> str | None:
    if os.path.islink(path):
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return "symbolic link loop"
            return "broken symbolic link (its target does not exist)"
    if not os.access(path, os.R_OK):
        return "permission denied"
    if any(part.startswith("_") for part in path.split("/")):
        return None  # hidden from Hadoop by its name, but a readable image: featurised
    return "not listed by Spark (unreadable or special file)"


def _hadoop_path_string(uri: str) -> str:
    """file:///a%20b -> file:/a b: the form of binaryFile's `path` column (Hadoop Path.toString)."""
    decoded = unquote(uri)
    return "file:" + decoded[len("file://"):] if decoded.startswith("file:///") else decoded


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
