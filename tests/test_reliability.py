"""Nothing lost, nothing double-counted: verify, resume after a killed driver, determinism."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import cli_engine_args, orchard
from infra import wait_for

from orchard.config import RunConfig
from orchard.pipeline import run
from orchard.sample import SampleSpec, make_sample
from orchard.verify import verify


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reliability") / "fruits"
    make_sample(root, SampleSpec(classes=5, train_per_class=40, test_per_class=8, seed=3))
    (root / "Training" / "Banana" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    return root


@pytest.fixture(scope="module")
def reference(spark, collection, tmp_path_factory) -> Path:
    """An uninterrupted run: what every other run here must reproduce."""
    output = tmp_path_factory.mktemp("reference") / "out"
    run(RunConfig(input=str(collection), output=str(output), weights="random", k=8, progress=False), spark)
    return output


def frame(output: Path, dataset: str) -> pd.DataFrame:
    return pd.read_parquet(output / dataset).sort_values("path", ignore_index=True)


def assert_identical_runs(a: Path, b: Path) -> None:
    fa, fb = frame(a, "features"), frame(b, "features")
    assert fa["path"].tolist() == fb["path"].tolist()
    assert all(np.array_equal(x, y) for x, y in zip(fa["features"], fb["features"], strict=True))
    pd.testing.assert_frame_equal(frame(a, "errors"), frame(b, "errors"))
    pd.testing.assert_frame_equal(frame(a, "metadata"), frame(b, "metadata"))
    pa_, pb = frame(a, "pca"), frame(b, "pca")
    np.testing.assert_allclose(np.abs(np.stack(pa_["pca"])), np.abs(np.stack(pb["pca"])), rtol=1e-5, atol=1e-5)


@pytest.mark.spark
def test_verify_accepts_a_finished_run_and_catches_damage(reference, tmp_path):
    findings = verify(str(reference))
    assert all(f.ok for f in findings), [f.line() for f in findings]
    assert {f.check for f in findings} >= {"complete", "checksums", "accounting", "unique paths",
                                            "features vectors", "pca vectors", "model"}

    damaged = tmp_path / "damaged"
    shutil.copytree(reference, damaged)
    part = next((damaged / "features").glob("*.parquet"))
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    checks = {f.check: f.ok for f in verify(str(damaged))}
    assert checks["checksums"] is False

    (damaged / "_SUCCESS").unlink()
    [only] = verify(str(damaged))
    assert only.check == "complete" and not only.ok


@pytest.mark.spark
def test_verify_cli_exit_codes(reference, tmp_path):
    good = orchard("verify", str(reference), timeout=120)
    assert good.returncode == 0 and "verified" in good.stdout
    missing = orchard("verify", str(tmp_path / "nothing"), timeout=120)
    assert missing.returncode == 1 and "NOT verified" in missing.stdout


@pytest.mark.pure
def test_verify_tells_an_image_folder_from_an_incomplete_output(collection, tmp_path):
    def verify_cli(folder: Path) -> subprocess.CompletedProcess:
        return orchard("verify", str(folder), timeout=120)

    images = verify_cli(collection)
    assert images.returncode == 2 and "Traceback" not in images.stderr
    assert images.stderr.strip() == (f"orchard: error: {collection} is not an orchard output (no run.json, no "
                                     "features/): point verify at the folder given to --output")
    assert "rerun" not in images.stderr + images.stdout

    incomplete = tmp_path / "incomplete"  # an interrupted run: scratch space, no datasets, no _SUCCESS yet
    (incomplete / "_work" / "stats").mkdir(parents=True)
    (incomplete / "_work" / "config.json").write_text("{}")
    done = verify_cli(incomplete)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "rerun the same command" in done.stdout and "NOT verified" in done.stdout


@pytest.mark.e2e
def test_driver_killed_mid_run_resumes_without_redoing_finished_shards(collection, reference, tmp_path):
    output = tmp_path / "out"
    command = [sys.executable, "-m", "orchard.cli", "run", str(collection), "--output", str(output),
               "--weights", "random", "--k", "8", "--shard-size", "30", "--images-per-task", "10", "--no-progress",
               *cli_engine_args()]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    with open(tmp_path / "first.log", "w") as log:
        driver = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        stats = output / "_work" / "stats"
        wait_for(lambda: stats.is_dir() and len(list(stats.glob("*.json"))) >= 2, 180, "two finished shards")
        os.kill(driver.pid, signal.SIGKILL)  # the driver process itself, no chance to clean up
        driver.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):  # its JVM and workers exit with it; make sure
            os.killpg(driver.pid, signal.SIGKILL)
    done_before = len(list((output / "_work" / "stats").glob("*.json")))
    assert not (output / "_SUCCESS").exists()
    assert [f.ok for f in verify(str(output))] == [False]  # incomplete, and says so

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    info = pd.read_json(output / "run.json", typ="series")
    assert info["resume"]["resumed"] is True
    assert info["resume"]["shards_reused"] == done_before >= 2
    assert info["counts"]["listed"] == info["counts"]["ok"] + info["counts"]["errors"] == 5 * 48 + 1
    assert_identical_runs(reference, output)
    assert all(f.ok for f in verify(str(output)))


@pytest.mark.spark
def test_datasets_appear_only_at_the_commit_and_a_broken_commit_resumes(spark, collection, reference, tmp_path,
                                                                       monkeypatch):
    from orchard import pipeline
    from orchard.io import fs

    output = tmp_path / "out"
    config = RunConfig(input=str(collection), output=str(output), weights="random", k=8, progress=False)
    real_reduce, real_move = pipeline.reduce_features, fs.move_tree

    def reduce_then_crash(*args, **kwargs):
        real_reduce(*args, **kwargs)
        raise RuntimeError("crash after PCA")

    monkeypatch.setattr(pipeline, "reduce_features", reduce_then_crash)
    with pytest.raises(RuntimeError, match="crash after PCA"):
        run(config, spark)
    assert sorted(p.name for p in output.iterdir()) == ["_work"]  # built, but nothing visible yet
    assert {p.name for p in (output / "_work" / "commit").iterdir()} >= {"features", "metadata", "errors", "pca"}

    moved = []

    def move_two_then_crash(source, target, storage=None):
        if len(moved) == 2:
            raise OSError("crash in the middle of the commit")
        real_move(source, target, storage)
        moved.append(Path(target).name)

    monkeypatch.setattr(pipeline, "reduce_features", real_reduce)
    monkeypatch.setattr(fs, "move_tree", move_two_then_crash)
    with pytest.raises(OSError, match="middle of the commit"):
        run(config, spark)
    assert moved == ["features", "pca"] and not (output / "_SUCCESS").exists()
    assert [f.ok for f in verify(str(output))] == [False]

    monkeypatch.setattr(fs, "move_tree", real_move)
    result = run(config, spark)
    assert result.info["resume"] == {"resumed": True, "shards_reused": 1}
    assert sorted(p.name for p in output.iterdir()) == ["_SUCCESS", "errors", "features", "metadata", "model",
                                                        "pca", "run.json", "skipped", "variance"]
    assert_identical_runs(reference, output)
    assert all(f.ok for f in verify(str(output)))


@pytest.mark.spark
def test_same_output_whatever_the_partitioning(spark, collection, reference, tmp_path):
    output = tmp_path / "out"
    config = RunConfig(input=str(collection), output=str(output), weights="random", k=8, shard_size=17,
                       images_per_task=7, batch_size=3, threads=2, progress=False)
    run(config, spark)
    assert_identical_runs(reference, output)


@pytest.mark.spark
def test_bad_input_corpus_every_file_accounted_for(spark, tmp_path, monkeypatch):
    from corpus import make_bad_corpus

    from orchard.io import listing

    root = tmp_path / "corpus"
    expected = make_bad_corpus(root)
    kinds = {Path(rel).name for rel in expected}
    assert len(kinds) >= 25

    real_list = listing.list_images

    def list_then_lose_a_file(spark_session, input_root, **options):
        manifest = real_list(spark_session, input_root, **options)
        (root / "Training/Vanishing/gone-before-reading.jpg").unlink()  # between listing and reading
        return manifest

    monkeypatch.setattr(listing, "list_images", list_then_lose_a_file)
    output = tmp_path / "out"
    result = run(RunConfig(input=str(root), output=str(output), weights="random", k=3, progress=False), spark)

    metadata = frame(output, "metadata").assign(rel=lambda f: f["path"].str.split("/corpus/", n=1).str[1])
    errors = frame(output, "errors").assign(rel=lambda f: f["path"].str.split("/corpus/", n=1).str[1])
    outcome = dict(zip(metadata["rel"], metadata["status"], strict=True))
    stages = dict(zip(errors["rel"], errors["stage"], strict=True))
    for rel, want in expected.items():
        if want == "hidden":
            assert rel not in outcome, f"{rel} should not be listed"
        elif want == "ok":
            assert outcome.get(rel) == "ok", f"{rel}: {outcome.get(rel)} {errors[errors['rel'] == rel]['error']}"
        else:
            assert stages.get(rel) == want, f"{rel}: expected a {want} error, got {stages.get(rel)}"
    reasons = dict(zip(errors["rel"], errors["error"], strict=True))
    assert reasons["Training/Links/loop.jpg"] == "symbolic link loop"
    assert "broken symbolic link" in reasons["Training/Links/dangling.jpg"]
    assert reasons["Training/Vanishing/gone-before-reading.jpg"] == "file vanished between listing and reading"
    assert "decompression-bomb guard" in reasons["Training/Modes/bomb-10000x10000.png"]
    assert not any("back-to-parent" in rel for rel in outcome)  # the cycle is not followed 40 levels deep
    assert result.counts["skipped_cycle_paths"] > 0
    counts = result.counts
    assert counts["listed"] == counts["ok"] + counts["errors"] == len(outcome)
    assert counts["listed"] == sum(v != "hidden" for v in expected.values())
    assert counts["skipped_by_reason"]["hidden (a name starting with '.')"] == sum(
        v == "hidden" for v in expected.values())
    same = metadata[metadata["rel"].str.endswith("/same.jpg")]
    assert same["sha256"].nunique() == 1 and len(same) == 2
    assert all(f.ok for f in verify(str(output)))


@pytest.mark.e2e
def test_ctrl_c_prints_one_line_and_the_rerun_finishes_identically(collection, reference, tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C: exit 130, one orchard line saying how to
    resume, no traceback and nothing that looks complete; the same command then finishes the run."""
    output = tmp_path / "out"
    args = [sys.executable, "-m", "orchard.cli", "run", str(collection), "--output", str(output), "--weights",
            "random", "--k", "8", "--shard-size", "60", *cli_engine_args()]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr, env=env, start_new_session=True)
        try:
            wait_for(lambda: "featurising" in log.read_text(), 180, "featurising to start")
            os.killpg(process.pid, signal.SIGINT)
            assert process.wait(timeout=120) == 130, log.read_text()[-3000:]
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    text = log.read_text()
    assert "Traceback" not in text and "py4j" not in text, text[-3000:]
    assert [line for line in text.splitlines() if line.startswith("orchard")] == [
        "orchard: interrupted; rerun the same command to resume"]
    assert not (output / "_SUCCESS").exists() and not (output / "features").exists()
    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert_identical_runs(reference, output)
