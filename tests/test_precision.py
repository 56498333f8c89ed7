"""Reduced precision: CPU features, the OpenVINO engine (f32 machinery here, bf16 where the CPU has the units),
int8 on OpenVINO through the real pipeline, bf16 refused on the driver and on executors of CPUs without them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import orchard

from orchard.config import RunConfig
from orchard.errors import ConfigError
from orchard.featurize import cpu, openvino_engine, quantize, runtime, weights
from orchard.featurize.batch import WorkerSettings

SAPPHIRE_RAPIDS = "fpu sse2 avx avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8"
ZEN3 = "fpu sse2 avx avx2 fma"
HERE_HAS_BF16 = cpu.bf16_refusal("the driver") is None


def cpuinfo(tmp_path: Path, flags: str, name: str = "Test CPU") -> Path:
    """A /proc/cpuinfo-shaped file with one processor."""
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: {name}\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    return path


@pytest.fixture(scope="module")
def model() -> bytes:
    """fp32 ONNX bytes of seeded random (BatchNorm-calibrated) weights."""
    return weights.model_source("random", 1604).onnx_bytes


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Nine varied uint8 224x224 RGB images (smooth gradients plus noise, like photos more than static)."""
    rng = np.random.default_rng(7)
    ramp = np.linspace(0, 1, 224, dtype=np.float32)
    out = []
    for index in range(9):
        base = np.stack([np.outer(ramp, ramp ** (index % 3 + 1)), np.outer(ramp[::-1], ramp),
                         np.full((224, 224), index / 9, np.float32)], axis=-1)
        out.append(np.clip(base * 255 + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))
    return np.stack(out)


@pytest.mark.pure
def test_cpu_features_come_from_cpuinfo_and_bf16_needs_avx512_bf16_or_amx(tmp_path):
    spr = cpuinfo(tmp_path, SAPPHIRE_RAPIDS, "Intel(R) Xeon(R) Platinum 8488C")
    assert cpu.features(spr) == dict.fromkeys(cpu.FEATURES, True)
    assert cpu.bf16_refusal("the driver", spr) is None
    cpu.check_bf16("the driver", spr)

    zen3 = cpuinfo(tmp_path, ZEN3, "AMD EPYC 7R13 Processor")
    assert cpu.features(zen3) == {"avx2": True, "avx512f": False, "avx512_vnni": False, "avx512_bf16": False,
                                  "amx_bf16": False, "amx_int8": False}
    with pytest.raises(ConfigError) as refused:
        cpu.check_bf16("the driver", zen3)
    message = str(refused.value)
    assert "\n" not in message and "AMD EPYC 7R13" in message and "the driver" in message
    assert "avx512_bf16 or amx_bf16" in message and "--precision fp32 or int8" in message
    assert cpu.features(tmp_path / "absent") == dict.fromkeys(cpu.FEATURES, False)  # no cpuinfo: nothing claimed


@pytest.mark.pure
def test_openvino_f32_matches_onnx_runtime_fp32_in_chunks(model, images):
    reference = runtime.embed(runtime.make_session(model, 2), images)
    session = openvino_engine.make_session(model, 2, "fp32")
    assert session.compiled.get_property("INFERENCE_PRECISION_HINT") == openvino_engine.ov.Type.f32
    assert session.compiled.get_property("INFERENCE_NUM_THREADS") == 2
    for batch_size in (8, 4, 32):  # last inference batches of 1 and 9 images: dynamic batch
        features = runtime.embed(session, images, batch_size)
        assert features.shape == (9, 1280) and features.dtype == np.float32
        cosine = quantize.cosine_similarity(reference, features)
        assert cosine.min() > 0.9999, cosine
        np.testing.assert_allclose(features, reference, rtol=1e-3, atol=1e-3 * np.abs(reference).max())
    assert runtime.embed(session, images[:0]).shape == (0, 1280)
    assert runtime.engine_version("int8").startswith("openvino 20")


@pytest.mark.pure
def test_one_openvino_model_per_worker_process_and_int8_runs_the_qdq_graph(model, images, tmp_path, monkeypatch):
    log = tmp_path / "builds.log"
    monkeypatch.setenv(runtime.BUILD_LOG_ENV, str(log))
    int8 = quantize.quantize_int8(model, images[::2], tmp_path / "cache")
    loads = []

    def load() -> bytes:
        loads.append(1)
        return int8

    key = "test-int8-" + str(tmp_path.name)
    first = runtime.worker_session(key, load, 2, "int8")
    assert isinstance(first, openvino_engine.OpenVinoSession) and first.precision == "int8"
    assert runtime.worker_session(key, load, 2, "int8") is first
    assert len(loads) == 1 and len(log.read_text().splitlines()) == 1
    reference = runtime.embed(runtime.make_session(model, 2), images)
    cosine = quantize.cosine_similarity(reference, runtime.embed(first, images))
    assert 0.8 < np.median(cosine) < 0.99999  # quantised (not the fp32 graph), still the same features


@pytest.mark.pure
def test_bf16_compiles_with_the_bf16_hint_or_refuses_in_one_line_on_this_cpu(model, images):
    if HERE_HAS_BF16:  # AMX / AVX512-BF16 machine: the real bf16 path and its accuracy
        session = openvino_engine.make_session(model, 2, "bf16")
        assert session.compiled.get_property("INFERENCE_PRECISION_HINT") == openvino_engine.ov.Type.bf16
        report = quantize.compare(model, model, images, 0, "bf16")
        assert report.mode == "bf16" and report.cosine_median >= 0.99, report  # measured 0.995 on SPR
    else:
        with pytest.raises(cpu.UnsupportedCpu) as refused:
            openvino_engine.make_session(model, 2, "bf16")
        message = str(refused.value)
        assert message.startswith(cpu.REFUSAL_MARK) and "\n" not in message
        assert "an executor" in message and "avx512_bf16 or amx_bf16" in message


@pytest.mark.pure
def test_neighbour_agreement_counts_rows_whose_nearest_other_row_stays():
    rng = np.random.default_rng(3)
    reference = rng.normal(size=(6, 16)) + 50.0  # a large shared component, as MobileNetV2 features have
    assert quantize.neighbour_agreement(reference, reference) == 1.0
    assert quantize.neighbour_agreement(reference, reference + rng.normal(0, 1e-4, reference.shape)) == 1.0
    shuffled = reference[[1, 0, 3, 2, 5, 4]]  # each row now holds another image: answers move
    assert quantize.neighbour_agreement(reference, shuffled) < 1.0
    assert quantize.neighbour_agreement(reference[:1], reference[:1]) == 1.0


@pytest.mark.pure
def test_predict_and_serve_never_import_openvino():
    code = ("import sys, orchard.predict, orchard.serve; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'openvino'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.spark
def test_bf16_run_is_refused_before_spark_works_or_close_to_fp32(sample_tree, tmp_path):
    root, _ = sample_tree
    output = tmp_path / "bf16"
    done = orchard("run", str(root), "--output", str(output), "--weights", "random", "--precision", "bf16",
                   "--splits", "Training", "--no-progress", "--master", "local[2]")
    if HERE_HAS_BF16:
        assert done.returncode == 0, done.stderr[-3000:]
        model = json.loads((output / "run.json").read_text())["model"]
        assert model["precision"] == "bf16" and model["engine"].startswith("openvino ")
        assert model["cpu"]["avx512_bf16"] or model["cpu"]["amx_bf16"]
        assert model["quantization"]["mode"] == "bf16" and model["quantization"]["cosine_median"] >= 0.99
    else:
        assert done.returncode == 2, done.stderr[-3000:]
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "--precision bf16 needs a CPU with avx512_bf16 or amx_bf16" in lines[0], lines
        assert "the driver" in lines[0] and "--precision fp32 or int8" in lines[0]
        assert not output.exists()  # refused before any work


@pytest.mark.spark
def test_an_executor_without_bf16_units_fails_its_task_in_one_line(spark, sample_tree, model):
    """The driver check is bypassed here (as when executors differ from the driver): the executor checks too."""
    from orchard import spark as sparkglue
    from orchard.engine import engine_for

    root, _ = sample_tree
    paths = sorted(str(path) for path in Path(root).rglob("*.jpg"))[:4]
    key = "bf16-executor-test"
    udf = sparkglue.featurize_udf(engine_for(spark).ship_model(model, key), key,
                                  WorkerSettings(threads=1, precision="bf16"))
    frame = spark.createDataFrame(pd.DataFrame({"path": paths})).select(udf("path").alias("result"))
    if HERE_HAS_BF16:
        rows = frame.select("result.features").collect()
        assert len(rows) == 4 and all(len(row.features) == 1280 for row in rows)
        return
    with pytest.raises(Exception) as failed:
        frame.collect()
    reason = sparkglue.explain_job_failure(failed.value)
    assert reason is not None and "\n" not in reason
    assert reason.startswith("--precision bf16 needs a CPU with") and "an executor" in reason


@pytest.mark.spark
def test_int8_runs_on_openvino_once_per_worker_and_run_json_names_engine_and_cpu(spark, sample_tree, tmp_path,
                                                                                   build_log):
    from orchard.pipeline import run

    root, _ = sample_tree
    config = RunConfig(input=str(root), output=str(tmp_path / "int8"), weights="random", seed=1605,
                       precision="int8", splits=("Training",), shard_size=40, images_per_task=16, progress=False)
    result = run(config, spark)
    model = result.info["model"]
    assert model["precision"] == "int8" and model["runtime"] == "openvino"
    assert model["engine"] == runtime.engine_version("int8") and model["engine"].startswith("openvino 20")
    assert model["cpu"] == cpu.features() and set(model["cpu"]) == set(cpu.FEATURES)
    assert model["quantization"]["cosine_target"] == quantize.COSINE_TARGETS["int8"]
    assert 0.0 <= model["quantization"]["neighbour_agreement"] <= 1.0
    builds = [line.split() for line in build_log.read_text().splitlines() if f" {model['onnx_sha256'][:16]} " in line]
    per_process = Counter(pid for pid, *_ in builds)
    assert builds and set(per_process.values()) == {1}, per_process  # one compiled model per Python worker
    assert "int8: median cosine similarity to fp32" in result.summary()
