"""The run, stage by stage: list -> select -> featurise shards -> write datasets -> PCA -> commit.

Work is cut into shards of `shard_size` images (sorted by path). Each shard is one Spark job that writes
its rows to `_work/rows/shard=N/`; then the driver writes `_work/stats/shard-N.json` LAST. Those stats
files are the single source of truth for progress, the summary, and resume: a restarted run with the same
command skips every shard that has a stats file. The datasets, model and CSV copies are built in
`_work/commit/`; the commit moves them into the output folder, then writes `run.json` and `_SUCCESS` last
of all, so an output without `_SUCCESS` is incomplete and an interrupted run shows no dataset folders.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa

from orchard import __version__, incremental, output, record, reduce, s3a, schema
from orchard import spark as sparkglue
from orchard.config import RunConfig, effective_k_rule
from orchard.engine import engine_for
from orchard.errors import AccountingError, ConfigError, InputError, ResourceError, StorageError, access_denied
from orchard.featurize import cpu, runtime, weights
from orchard.featurize.batch import WorkerSettings
from orchard.featurize.quantize import COSINE_TARGETS
from orchard.interrupt import interrupts_recorded
from orchard.io import fs, listing
from orchard.output import COMMITTED, DATASETS, Layout
from orchard.preprocess import Limits
from orchard.progress import Progress
from orchard.record import Counts, ModelRecord, RunRecord
from orchard.verify import part_checksums

TARGET_PART_BYTES = 128 * 1024 * 1024
FEATURE_ROW_BYTES = 5200  # a features/ row in Parquet, about
# Schemas given to Spark's Parquet reads of orchard's own files: no job to read a footer for them.
FEATURES_DDL = schema.ddl(schema.FEATURES)


@dataclass
class RunResult:
    """What a finished run reports; `info` is the content of run.json."""

    output: str
    info: dict = field(default_factory=dict)

    @property
    def counts(self) -> dict:
        """Listed, ok and error counts (run.json's "counts")."""
        return self.info["counts"]

    def summary(self) -> str:
        """A few lines for the terminal: counts, speed, PCA, warnings, where the output is."""
        counts, timings, pca = self.info["counts"], self.info["timings"], self.info["pca"]
        # images featurised by this run: not those of resumed shards, nor an incremental run's unchanged rows
        featurized = sum(shard["count"] for shard in self.info["shards"] if not shard.get("reused"))
        rate = f", {featurized / timings['featurize']:.1f} featurising" if featurized and timings["featurize"] else ""
        lines = [
            f"images {counts['listed']}  classes {counts['classes']}  ok {counts['ok']}  "
            f"errors {counts['errors']}",
            f"seconds {timings['total']:.1f}  images/s {timings['images_per_second']:.1f} end to end{rate}  "
            f"(featurise {timings['featurize']:.1f}s, PCA {timings['pca']:.1f}s, write {timings['write']:.1f}s)",
            f"PCA k={pca['k']} keeps {100 * pca['kept_variance']:.1f}% of the variance",
            f"output {self.output}",
        ]
        skipped = counts.get("skipped_by_reason", {})
        if skipped:
            reasons = ", ".join(f"{reason} {count}" for reason, count in skipped.items())
            lines.insert(1, f"skipped {counts['skipped']} files ({reasons}): listed in "
                         f"{fs.join(self.output, 'skipped', 'paths.csv')}")
        if any(reason.startswith("inside the orchard output") for reason in skipped):
            lines.insert(0, "WARNING: an orchard output lies inside the input; its files were left out")
        if not self.info["model"]["meaningful"]:
            lines.insert(0, "WARNING: " + self.info["model"]["description"])
        quantization = self.info["model"].get("quantization")
        if quantization:
            target = COSINE_TARGETS[quantization["mode"]]
            note = (f"{quantization['mode']}: median cosine similarity to fp32 {quantization['cosine_median']:.4f} "
                    f"on {quantization['validation_images']} held-out images")
            if quantization["cosine_median"] < target:
                note = f"WARNING: {note}, below {target}: prefer --precision fp32"
            lines.insert(len(lines) - 1, note)
        change = self.info.get("incremental")
        if self.info.get("up_to_date"):
            lines = [f"nothing added, changed or removed since {self.output}: no new version", *lines[-1:]]
        elif change:
            lines.insert(len(lines) - 1, f"version {change['version']} (base {change['base_version']}): added "
                         f"{change['added']}, changed {change['changed']}, removed {change['removed']}, unchanged "
                         f"{change['unchanged']}; PCA {change['pca']}")
        return "\n".join(lines)


class Timings(dict):
    """Wall seconds per stage."""

    @contextmanager
    def stage(self, name: str):
        """Add the wall time of the `with` block to stage `name`."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self[name] = self.get(name, 0.0) + time.perf_counter() - started


def run(config: RunConfig, spark=None) -> RunResult:
    """Run the whole pipeline for `config`; returns the run's summary (also written to run.json).

    With `config.incremental`, `config.output` is a versioned store: the run writes the next version,
    featurising only what changed since the latest one (nothing new: the latest version is returned as is).
    """
    started = time.perf_counter()
    # the storage for every fs call of the run, and no longer; Ctrl-C stops it even if Python swallowed it
    with fs.using_storage(config.storage), interrupts_recorded() as interrupted:
        try:
            return _run(config, spark, started, interrupted)
        except Exception:
            interrupted()  # a job that Ctrl-C cancelled fails as a Spark error: report the interrupt instead
            raise


def _run(config: RunConfig, spark, started: float, interrupted: Callable[[], None]) -> RunResult:
    """The body of `run`: `interrupted()` raises KeyboardInterrupt once Ctrl-C has arrived."""
    target = plan_target(config)  # read-only: nothing is written before input and weights check out
    if config.precision == "bf16":
        cpu.check_bf16("the driver")  # before Spark starts; executors check again (openvino_engine)
    layout = target.layout
    timings = Timings()
    if spark is None:
        spark = sparkglue.get_session(config.spark, s3a.spark_conf(config.storage, config.input, config.output))

    with timings.stage("model"):
        source = weights.model_source(config.weights, config.seed)
    base_info = check_base(config, target, source)
    with timings.stage("listing"):
        manifest, found = _load_or_list(spark, config, layout, target.state)
    work, changes = manifest, None
    if target.base is not None:
        with timings.stage("compare"):
            changes = incremental.diff(manifest, incremental.recorded_state(target.base))
            if changes.empty and not config.refit_pca:
                fs.remove_tree(layout.root)
                return RunResult(target.base.root, {**base_info.to_dict(), "up_to_date": True})
            work = changes.todo
            _carry(spark, target.base, changes, layout)
    if config.precision != "fp32":
        with timings.stage("quantize"):
            source = reduced_precision(source, manifest, config)
    with timings.stage("featurize"):
        shard_stats = featurize_shards(spark, work, source, config, layout, interrupted)
    staging = layout.staging  # nothing appears under the output folder before the commit
    with timings.stage("write"):
        written = write_datasets(spark, layout.rows, staging, manifest)
    with timings.stage("pca"):
        reuse = target.base if target.base is not None and not config.refit_pca else None
        pca_summary = reduce_features(spark, config, staging, written["ok"], reuse, base_info)
    if config.csv:
        with timings.stage("csv"):
            write_csv(spark, staging, pca_summary.k)
    skipped = write_skipped(layout)

    info = run_record(config, spark, source, manifest, found, shard_stats, written, pca_summary, timings, started)
    info.counts.skipped, info.counts.skipped_by_reason = sum(skipped.values()), skipped
    info.outputs = {name: getattr(layout, name) for name in (*DATASETS, "model")}
    if config.incremental:
        info.incremental = incremental_info(target, changes, len(work), reuse)
        if changes is not None:
            incremental.write_changes(changes, staging.changes)
    info.parts = part_checksums(staging.root)
    info.resume = {"resumed": target.state == "resume",
                   "shards_reused": sum(s.get("reused", False) for s in shard_stats)}
    check_accounting(info.counts)
    interrupted()  # the last moment a Ctrl-C that Python swallowed can keep the run from looking complete
    commit(layout, info)
    if target.version is not None:
        publish(config.output, target.version)
    return RunResult(layout.root, info.to_dict())


def commit(layout: Layout, info: RunRecord) -> None:
    """Move the staged folders into place, then write run.json and `_SUCCESS` (last) and drop `_work/`.

    A crash part-way leaves `_work/` and no `_SUCCESS`: the rerun resumes, rebuilds the staging from the
    finished shards and commits again, replacing whatever this commit had already moved.
    """
    started = time.perf_counter()
    for name in COMMITTED:
        staged = fs.join(layout.staging.root, name)
        if fs.exists(staged):
            fs.move_tree(staged, fs.join(layout.root, name))
    timings = info.timings
    timings["commit"] = time.perf_counter() - started
    timings["total"] += timings["commit"]
    timings["images_per_second"] = info.counts.listed / timings["total"]
    record.write(layout.run_json, info)
    fs.write_bytes(layout.success, b"")  # the commit: the folder is now a finished run
    fs.remove_tree(layout.work)


@dataclass(frozen=True)
class Target:
    """Where this run writes (`layout`), in which state, and the version it builds on (incremental)."""

    layout: Layout
    state: str  # "new", "resume" or "replace"
    version: int | None = None  # the version number, for incremental runs
    base: Layout | None = None  # the store's latest committed version, if any


def plan_target(config: RunConfig) -> Target:
    """The folder this run writes; refuses outputs it must not touch (read-only)."""
    if fs.is_file(config.output):
        raise ConfigError(f"--output {config.output} is a file: give a folder (new, or one orchard wrote)")
    if fs.is_local(config.output):
        check_writable(config.output)
    if not config.incremental:
        layout = Layout(config.output)
        return Target(layout, output_state(config, layout))
    store = config.output
    if fs.exists(fs.join(store, "_SUCCESS")):
        raise ConfigError(f"output {store} holds a single (not incremental) run: --incremental needs a store of "
                          "versions; choose a new folder for it")
    committed = [v for v in output.versions(store) if fs.exists(fs.join(store, output.version_name(v), "_SUCCESS"))]
    if committed and output.latest_version(store) != committed[-1]:
        publish(store, committed[-1])  # an earlier run stopped between its commit and the pointer update
    base = Layout(fs.join(store, output.version_name(committed[-1]))) if committed else None
    unfinished = [v for v in output.versions(store) if v not in committed and v > (committed or [0])[-1]]
    if unfinished:
        layout = Layout(fs.join(store, output.version_name(unfinished[-1])))
        if output_state(config, layout) == "resume":
            return Target(layout, "resume", unfinished[-1], base)
    number = max(output.versions(store) or [0]) + 1
    return Target(Layout(fs.join(store, output.version_name(number))), "new", number, base)


def check_writable(folder: str) -> None:
    """A one-line ConfigError, before any work, when a local output folder cannot be made or written.

    The probe is a real one (a folder made and removed in the nearest existing ancestor): permission bits
    do not tell for root, read-only mounts or /sys.
    """
    import os
    import tempfile

    path = os.path.abspath(folder.removeprefix("file:"))
    ancestor = path
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ConfigError(f"--output {folder} cannot be made: {ancestor} is a file; give a folder path")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".orchard-probe-", dir=ancestor))
    except OSError as error:
        raise ConfigError(f"--output {folder} cannot be written ({error.strerror} in {ancestor}): choose a folder "
                          "you may write to") from None


def publish(store: str, version: int) -> None:
    """Point the store's `_LATEST` at a committed version (written after the version's `_SUCCESS`)."""
    fs.write_json(output.latest_uri(store), {"version": version, "path": output.version_name(version),
                                             "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def check_base(config: RunConfig, target: Target, source: weights.ModelSource) -> RunRecord | None:
    """The record of the base version, once checked that its rows and PCA model may be reused; None if none."""
    if target.base is None:
        return None
    info = record.read(target.base.run_json)
    name = target.base.root.rsplit("/", 1)[-1]
    if info.feature_fingerprint != config.feature_fingerprint() or info.model.onnx_sha256 != source.onnx_sha256:
        raise ConfigError(f"{name} of {config.output} was made with other weights or image guards: rerun with its "
                          "--weights/--seed/--max-pixels/--max-bytes, or write a new output")
    pca = info.pca
    rule, target_value = effective_k_rule(config)
    if not config.refit_pca and ((rule, target_value, config.standardize)
                                 != (pca["rule"], pca["target"], pca["standardized"])):
        raise ConfigError(f"the PCA options differ from {name}'s model (k rule {pca['rule']} {pca['target']}, "
                          f"standardize {pca['standardized']}): add --refit-pca to fit a new one")
    return info


def _carry(spark, base: Layout, changes: incremental.Changes, layout: Layout) -> None:
    """Copy the unchanged rows of the base version into this version's shard rows (once, even on resume)."""
    marker = fs.join(layout.stats, "carried.json")
    if changes.carried and not fs.exists(marker):
        incremental.carry_rows(spark, base, changes.carried, fs.join(layout.rows, "shard=carried"))
        fs.write_json(marker, {"rows": len(changes.carried)})  # written last, like a shard's stats


def incremental_info(target: Target, changes: incremental.Changes | None, featurized: int,
                     reused: Layout | None) -> dict:
    """run.json's account of what this version changed relative to its base."""
    base = target.base.root.rsplit("/", 1)[-1] if target.base is not None else None
    counts = changes.counts() if changes is not None else {"added": featurized, "changed": 0, "removed": 0,
                                                            "unchanged": 0}
    return {"version": target.version, "base_version": base, **counts, "featurized": featurized,
            "pca": f"reused from {base}" if reused is not None else "fitted on this version",
            "changes": "changes/" if changes is not None else None}


def output_state(config: RunConfig, layout: Layout) -> str:
    """'new', 'resume' (an interrupted run of the same config) or 'replace' (--overwrite); refuses the rest."""
    if not (fs.exists(layout.success) or fs.is_nonempty_dir(layout.root)):
        return "new"
    if config.overwrite:
        return "replace"
    if fs.exists(layout.success):
        raise ConfigError(f"output {layout.root} already holds a finished run: pass --overwrite to replace it")
    config_uri = fs.join(layout.work, "config.json")
    if fs.exists(config_uri) and fs.read_json(config_uri).get("fingerprint") == config.fingerprint():
        return "resume"
    if config.incremental:
        raise ConfigError(f"{layout.root} is an unfinished version made by another command: rerun that command "
                          "to finish it, or delete that folder")
    raise ConfigError(f"output {layout.root} exists and is not an interrupted run of this command: "
                      "pass --overwrite to replace it, or choose another folder")


def _load_or_list(spark, config: RunConfig, layout: Layout, state: str) -> tuple[pd.DataFrame, dict]:
    """The selected images; a resumed run reuses the manifest it wrote, so shards stay the same."""
    manifest_uri = fs.join(layout.work, "manifest.parquet")
    if state == "resume" and fs.exists(manifest_uri):
        table = fs.read_columns(manifest_uri)
        facts = {key.decode(): int(value) for key, value in table.schema.metadata.items() if key != b"pandas"}
        return table.to_pandas(), facts
    try:
        found = listing.list_images(spark, config.input, exclude=(config.output,), storage=config.storage)
    except Exception as error:
        if not access_denied(error):
            raise
        raise InputError(f"cannot list the input {config.input}: access denied (403): the credentials in use may "
                         "not read that prefix; grant them s3:ListBucket and s3:GetObject on it") from None
    cycle_paths, skipped = found.attrs.get("cycle_paths", 0), found.attrs.get("skipped", {})
    selected = listing.select(found, config)
    if state == "replace":
        fs.remove_tree(layout.root)
    fs.write_json(fs.join(layout.work, "config.json"),
                  {"fingerprint": config.fingerprint(), "config": config.to_dict()})
    fs.write_parquet(layout.skipped_list, pa.table({"path": list(skipped), "reason": list(skipped.values())},
                                                   schema=SKIPPED_SCHEMA))
    fs.write_parquet(manifest_uri, pa.Table.from_pandas(selected, preserve_index=False).replace_schema_metadata(
        {"found": str(len(found)), "cycle_paths": str(cycle_paths)}))
    return selected, {"found": len(found), "cycle_paths": cycle_paths}


SKIPPED_SCHEMA = pa.schema([("path", pa.string()), ("reason", pa.string())])


def write_skipped(layout: Layout) -> dict[str, int]:
    """The listing's skipped files as `skipped/paths.csv` in the staging; returns their counts by reason."""
    empty = SKIPPED_SCHEMA.empty_table()  # a run resumed from an older orchard's _work/ has no list
    frame = (fs.read_columns(layout.skipped_list) if fs.exists(layout.skipped_list) else empty).to_pandas()
    fs.write_bytes(fs.join(layout.staging.skipped, "paths.csv"), frame.to_csv(index=False).encode())
    return listing.skipped_summary(dict(zip(frame["path"], frame["reason"], strict=True)))


def worker_settings(config: RunConfig, threads: int) -> WorkerSettings:
    """What Python workers need from the config (small and picklable)."""
    return WorkerSettings(threads=threads, batch_size=config.batch_size, io_threads=config.io_threads,
                          limits=Limits(config.max_pixels, config.max_bytes), storage=config.storage,
                          precision=config.precision)


CALIBRATION_IMAGES, VALIDATION_IMAGES = 64, 32


def reduced_precision(source: weights.ModelSource, manifest: pd.DataFrame, config: RunConfig
                      ) -> weights.ModelSource:
    """The int8 or bf16 model, checked against fp32 on a class-stratified sample of this run's images (int8:
    calibrated on every other image of the sample, checked on the rest)."""
    import dataclasses

    import numpy as np

    from orchard.featurize import quantize
    from orchard.featurize.batch import prepare_paths

    sample = listing.stratified_sample(manifest, CALIBRATION_IMAGES + VALIDATION_IMAGES).sort_values("path")
    _, tensors, _ = prepare_paths(sample["path"].tolist(), worker_settings(config, threads=1))
    if len(tensors) < 16:
        raise ConfigError(f"--precision {config.precision} needs at least 16 decodable images to check it against "
                          f"fp32, found {len(tensors)}: use fp32")
    images = np.stack(tensors)
    # every other image calibrates, the rest validate: both sets span the classes
    calibration, validation = images[::2][:CALIBRATION_IMAGES], images[1::2][:VALIDATION_IMAGES]
    if config.precision == "int8":
        model = quantize.quantize_int8(source.onnx_bytes, calibration, weights.orchard_cache_dir() / "models")
        how = "int8 (static QDQ)"
    else:
        model, calibration, how = source.onnx_bytes, calibration[:0], "bf16 (inference precision hint)"
    report = quantize.compare(source.onnx_bytes, model, validation, len(calibration), config.precision)
    return dataclasses.replace(source, onnx_bytes=model, precision=config.precision, quantization=report.to_dict(),
                               description=f"{source.description}; {how} on {runtime.ENGINES[config.precision]}")


def shard_count(images: int, shard_size: int) -> int:
    """How many shards `images` images make."""
    return math.ceil(images / shard_size)


def featurize_shards(spark, manifest: pd.DataFrame, source, config: RunConfig, layout: Layout,
                     interrupted: Callable[[], None]) -> list[dict]:
    """Featurise every shard that has no stats file yet; returns the stats of all shards. `interrupted()` is
    called after each shard (it raises KeyboardInterrupt once Ctrl-C arrived)."""
    shards = shard_count(len(manifest), config.shard_size)
    done = {name for name in fs.list_files(layout.stats) if name.endswith(".json")}
    todo = [s for s in range(shards) if layout.shard_stats(s).rsplit("/", 1)[-1] not in done]
    finished = [{**fs.read_json(layout.shard_stats(s)), "reused": True} for s in range(shards) if s not in todo]
    progress = Progress(len(manifest), sum(s["count"] for s in finished), enabled=config.progress)
    if todo:
        engine, model_key = engine_for(spark), source.onnx_sha256[:16]
        model = engine.ship_model(source.onnx_bytes, model_key)
        settings = worker_settings(config, threads=config.threads or engine.task_cpus())
        udf = sparkglue.featurize_udf(model, model_key, settings)
        slots = engine.task_slots()
        for shard in todo:
            rows = manifest.iloc[shard * config.shard_size : (shard + 1) * config.shard_size]
            done_before = sum(s["count"] for s in finished)

            def report(share: float, done_before: int = done_before, images: int = len(rows)) -> None:
                # an estimate from finished tasks; the shard counts in full only once its stats are written
                progress.update(done_before + min(int(share * images), images - 1))

            with engine.watch(f"orchard-shard-{shard}", report):
                started = time.perf_counter()
                _run_shard(spark, udf, rows, layout.shard_rows(shard), slots, config.images_per_task)
                elapsed = time.perf_counter() - started
            stats = _shard_stats(shard, layout.shard_rows(shard), elapsed)
            fs.write_json(layout.shard_stats(shard), stats)  # written last: the shard is now done
            finished.append(stats)
            progress.update(done_before + len(rows))
            interrupted()
        model.release()
    progress.close(sum(s["count"] for s in finished))
    return sorted(finished, key=lambda s: s["shard"])


def _run_shard(spark, udf, rows: pd.DataFrame, target: str, slots: int, images_per_task: int) -> None:
    """One Spark job: featurise the shard's files; files the listing already failed become error rows."""
    from pyspark.sql import functions as F

    keys = schema.ROW_KEYS.names
    failed = rows["list_error"].notna() if "list_error" in rows else pd.Series(False, index=rows.index)
    todo = rows[~failed]
    parts = []
    if len(todo):
        tasks = max(slots, math.ceil(len(todo) / images_per_task))
        frame = spark.createDataFrame(todo[keys], schema.ddl(schema.ROW_KEYS)).repartition(tasks)
        parts.append(frame.select(*keys, udf(F.col("path")).alias("r")).select(*keys, "r.*"))
    if failed.any():
        listed = rows[failed]
        errors = pd.DataFrame({**{key: listed[key] for key in keys},
                               **{name: None for name in schema.WORKER_RESULT.names}})
        errors = errors.assign(stage="list", error=listed["list_error"])
        parts.append(spark.createDataFrame(errors, schema.ddl(schema.SHARD_ROWS)))
    result = parts[0] if len(parts) == 1 else parts[0].unionByName(parts[1])
    try:
        result.write.mode("overwrite").parquet(target)
    except Exception as error:
        transient = sparkglue.transient_failure(error)
        if transient is not None:  # never image errors: the run stops, a rerun resumes
            raise StorageError(f"{transient} (finished shards are kept)") from None
        reason = sparkglue.explain_job_failure(error)
        if reason is None:
            raise
        raise ResourceError(f"{reason} (finished shards are kept: rerun to resume)") from None


def _shard_stats(shard: int, rows_uri: str, elapsed: float) -> dict:
    """A shard's stats file: counts, wall seconds, and the worker seconds and counts (schema.COUNTS) its rows
    carry."""
    import pyarrow.compute as pc

    table = fs.read_columns(rows_uri, ["error", *schema.SECONDS.names, *schema.COUNTS.names])
    count, ok = table.num_rows, table["error"].null_count  # a null error means the image was featurised
    worker = {name.removeprefix("seconds_"): float(pc.sum(table[name]).as_py() or 0.0) for name in schema.SECONDS.names}
    tallies = {name: int(pc.sum(table[name]).as_py() or 0) for name in schema.COUNTS.names}
    return {"shard": shard, "count": count, "ok": ok, "errors": count - ok, "seconds": elapsed,
            "worker_seconds": worker, **tallies}


def part_count(rows: int, bytes_per_row: int) -> int:
    """Enough Parquet parts to keep each near TARGET_PART_BYTES, and no more."""
    return max(1, math.ceil(rows * bytes_per_row / TARGET_PART_BYTES))


def _write_sorted(frame, uri: str, parts: int, small_input: bool = True, key: str = "path",
                  csv: bool = False) -> None:
    """Write sorted by `key` in `parts` files (Parquet, or CSV with a header). One part from a `small_input`
    (what one task reads and computes quickly) is one job with no shuffle; one part otherwise is a shuffle
    to one task, more a range shuffle."""
    if parts == 1:
        spread = frame.coalesce(1) if small_input else frame.repartition(1)
    else:
        spread = frame.repartitionByRange(parts, key)
    writer = spread.sortWithinPartitions(key).write.mode("overwrite")
    if csv:
        writer.option("header", "true").csv(uri)
    else:
        writer.parquet(uri)


def write_datasets(spark, rows_uri: str, layout: Layout, manifest: pd.DataFrame) -> dict:
    """features/, metadata/ and errors/ of `layout` from the shard rows, sorted by path. Returns row counts."""
    from pyspark.sql import functions as F

    rows = spark.read.schema(schema.ddl(schema.SHARD_ROWS)).parquet(rows_uri).drop("shard")
    ok = rows.where(F.col("error").isNull())
    n_rows = len(manifest)
    metadata = rows.select("path", "label", "split", "bytes", "width", "height", "sha256",
                           F.timestamp_micros("modified_us").alias("modified"),
                           F.when(F.col("error").isNull(), "ok").otherwise("error").alias("status"))
    errors = rows.where(F.col("error").isNotNull()).select("path", "label", "split", "stage", "error")
    writes = [(ok.select("path", "label", "split", "features"), layout.features, part_count(n_rows, FEATURE_ROW_BYTES)),
              (metadata, layout.metadata, part_count(n_rows, 200)), (errors, layout.errors, 1)]
    # Three independent jobs at once: each one's fixed costs (planning, task start, commit) overlap the others'.
    with ThreadPoolExecutor(len(writes)) as pool:
        for done in [pool.submit(_write_sorted, *write) for write in writes]:
            done.result()
    # The counts come from what was written, read back by the driver (small columns, no Spark job).
    written = fs.read_columns(layout.metadata, ["path", "status"])
    paths, statuses = written["path"], written["status"].to_pylist()
    stages = fs.read_columns(layout.errors, ["stage"])["stage"].to_pylist()
    return {"rows": len(paths), "ok": statuses.count("ok"), "errors": statuses.count("error"),
            "distinct_paths": len(set(paths.to_pylist())),
            "errors_by_stage": {stage: stages.count(stage) for stage in sorted(set(stages))},
            "classes": int(manifest["label"].nunique())}


def reduce_features(spark, config: RunConfig, layout: Layout, n_ok: int, reuse: Layout | None = None,
                    base_info: RunRecord | None = None) -> reduce.PcaSummary:
    """Fit PCA on features/ (or reuse the model of version `reuse`); write pca/, variance/ and model/."""
    if n_ok < 2:
        raise ConfigError(f"only {n_ok} image(s) could be featurised: PCA needs at least 2 (see errors/)")
    features = spark.read.schema(FEATURES_DDL).parquet(layout.features)
    if reuse is None:
        projection, summary = reduce.fit(features, config, layout.model)
    else:
        fs.copy_tree(reuse.model, layout.model)
        projection, summary = reduce.Projection.read(layout.model), reduce.PcaSummary.from_dict(base_info.pca)
    _write_sorted(reduce.transform(projection, features), layout.pca, part_count(n_ok, 4 * summary.k + 200),
                  small_input=part_count(n_ok, FEATURE_ROW_BYTES) == 1)
    variance = pa.table({
        "component": pa.array(range(1, len(summary.explained) + 1), pa.int32()),
        "explained_variance": summary.explained,
        "cumulative_variance": summary.cumulative,
        "kept": [i < summary.k for i in range(len(summary.explained))],
    })
    fs.write_parquet(fs.join(layout.variance, "part-00000.parquet"), variance)  # a few KB: no Spark job
    return summary


def write_csv(spark, layout: Layout, k: int) -> None:
    """CSV copies of every dataset; vectors become one column per value (f_0000.., pc_001..)."""
    from pyspark.sql import functions as F

    def widen(frame, column: str, width: int, name) -> object:
        keep = [c for c in frame.columns if c != column]
        return frame.select(*keep, *[F.col(column)[i].alias(name(i)) for i in range(width)])

    frames = {
        "features": widen(spark.read.parquet(layout.features), "features", 1280, lambda i: f"f_{i:04d}"),
        "pca": widen(spark.read.parquet(layout.pca), "pca", k, lambda i: f"pc_{i + 1:03d}"),
        "metadata": spark.read.parquet(layout.metadata),
        "errors": spark.read.parquet(layout.errors),
        "variance": spark.read.parquet(layout.variance),
    }
    for name, frame in frames.items():  # as many parts as the Parquet dataset: already in order, no sampling
        parts = len([f for f in fs.list_files(getattr(layout, name)) if f.endswith(".parquet")])
        _write_sorted(frame, layout.csv(name), max(parts, 1), key="path" if "path" in frame.columns else "component",
                      csv=True)


def run_record(config, spark, source, manifest, found, shard_stats, written, pca_summary, timings, started
               ) -> RunRecord:
    """The run's record (run.json): config, versions, model, counts, timings, explained variance."""
    import numpy
    import onnxruntime
    import pyspark

    total = time.perf_counter() - started
    worker = {key: sum(s["worker_seconds"][key] for s in shard_stats) for key in ("read", "preprocess",
                                                                                   "inference")}
    timings = dict(timings, total=total, images_per_second=len(manifest) / total if total else 0.0,
                   worker_seconds=worker)
    return RunRecord(
        orchard_version=__version__,
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        fingerprint=config.fingerprint(),
        feature_fingerprint=config.feature_fingerprint(),
        config=config.to_dict(),
        versions={"python": platform.python_version(), "pyspark": pyspark.__version__,
                  "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__},
        spark=engine_for(spark).facts(),
        model=ModelRecord(weights=source.kind, description=source.description, meaningful=source.meaningful,
                          onnx_sha256=source.onnx_sha256, precision=source.precision,
                          quantization=source.quantization, runtime=runtime.ENGINES[source.precision],
                          engine=runtime.engine_version(source.precision), cpu=cpu.features(),
                          weights_path=source.weights_path, weights_sha256=source.weights_sha256),
        counts=Counts(listed=len(manifest), ok=written["ok"], errors=written["errors"], rows=written["rows"],
                      distinct_paths=written["distinct_paths"], classes=written["classes"],
                      errors_by_stage=written["errors_by_stage"], found=found["found"],
                      skipped_cycle_paths=found["cycle_paths"]),
        shards=shard_stats,
        storage=storage_info(shard_stats),
        timings=timings,
        pca=pca_summary.to_dict(),
    )


def storage_info(shard_stats: list[dict]) -> dict:
    """run.json's "storage": the image reads retried after a passing failure (throttling, resets) and the
    retry policy; a shard of an older orchard counts none."""
    from orchard.io.reader import DEFAULT_POLICY

    return {"read_retries": sum(s.get("read_retries", 0) for s in shard_stats),
            "read_attempts_per_file": DEFAULT_POLICY.attempts, "s3_attempts_per_request": fs.S3_REQUEST_ATTEMPTS}


def check_accounting(counts: Counts) -> None:
    """listed = ok + errors, one row per path; otherwise the run fails and never gets _SUCCESS."""
    if counts.ok + counts.errors != counts.listed or counts.distinct_paths != counts.rows:
        raise AccountingError(
            f"accounting does not add up: listed {counts.listed}, ok {counts.ok}, errors "
            f"{counts.errors}, rows {counts.rows}, distinct paths {counts.distinct_paths}"
        )
