"""The benchmark harness runs end to end at a tiny N (timings belong to the benchmark, not to tests)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


def test_benchmark_harness_runs_and_writes_results(tmp_path):
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    import pyspark

    engines = ["classic", "connect"] if pyspark.__version__.startswith("4.") else ["classic"]
    code = bench.main(["--sizes", "150", "--data", str(tmp_path / "data"), "--work", str(tmp_path / "work"),
                       "--results", str(tmp_path / "results"), "--ceiling-seconds", "0.5",
                       "--precisions", "fp32", "int8", "bf16", "--engines", *engines, "--", "--k", "5"])
    assert code == 0
    report = json.loads(next((tmp_path / "results").glob("*.json")).read_text())
    assert [(r["engine"], r["precision"]) for r in report["runs"]] == [
        (engine, precision) for engine in engines for precision in ("fp32", "int8", "bf16")]
    done = [r for r in report["runs"] if "refused" not in r]
    assert all(r["ok"] == 150 for r in done) and {"fp32", "int8"} <= {r["precision"] for r in done}
    for refused in (r for r in report["runs"] if "refused" in r):  # bf16 on a CPU without AVX512-BF16/AMX
        assert refused["precision"] == "bf16" and "\n" not in refused["refused"] and "bf16" in refused["refused"]
    run = report["runs"][0]
    assert run["images"] == run["ok"] == 150
    assert run["pca_k"] == 5 and run["images_per_s"] > 0 and 0 < run["fixed_s"] < run["seconds"]
    assert run["peak_memory_mb"]["jvm_mb"] > 0 and run["peak_memory_mb"]["python_worker_mb"] > 0
    data = tmp_path / "data" / "fruits-150"
    assert len(list((data / "Training").iterdir())) == 220 and len(list(data.rglob("*.jpg"))) == 150
    table = next((tmp_path / "results").glob("*.md")).read_text()
    assert f"| classic {pyspark.__version__} | fp32 | 150 |" in table
    int8 = next(q for q in report["precisions"] if q["precision"] == "int8")
    assert int8["images"] == 150 and 0.5 < int8["cosine_median"] <= 1.0
    assert set(report["ceilings"]) == {"fp32", "int8", "bf16"} and report["ceilings"]["int8"] > 0
    assert 0 < run["share_of_engine_alone"] < 1 and "Engine alone (2 threads, images/s): fp32 (onnxruntime)" in table
    assert "int8 on the same 150 images" in table


def test_table_has_refused_rows_and_the_daft_ratio(tmp_path):
    """A refused precision is one row with its reason; a Daft measurement adds its rate and the ratio."""
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    machine = {"cpu": "AMD EPYC (AVX2)", "cores": 2, "memory_gb": 24, "python": "3.11", "pyspark": "4.3.0",
               "onnxruntime": "1.32.0"}
    run = {"engine": "classic", "spark": "4.3.0", "precision": "fp32", "images": 2000, "ok": 2000, "seconds": 20.0,
           "images_per_s": 100.0, "featurize_images_per_s": 150.0, "share_of_ort_alone": 0.8, "fixed_s": 6.67,
           "stages_s": {"listing": 0.5, "featurize": 13.33, "write": 1.0, "pca": 2.0},
           "worker_s": {"read": 0.1, "preprocess": 0.2, "inference": 25.0},
           "peak_memory_mb": {"driver_mb": 1, "jvm_mb": 2, "python_worker_mb": 3, "total_mb": 6}, "output_mb": 16.7,
           "daft_images_per_s": 80.0, "orchard_over_daft": 1.25}
    refused = bench.refused_row(2000, "classic", "bf16", "--precision bf16 needs AVX512-BF16 or AMX: use fp32")
    table = bench.markdown({"date": "2026-12-04", "machine": machine, "weights": "random", "ceiling": 125.0,
                            "runs": [run, refused], "baselines": [], "precisions": [], "daft": "0.7.26"})
    rows = [line for line in table.splitlines() if line.startswith("| classic")]
    header = next(line for line in table.splitlines() if line.startswith("| engine"))
    assert {line.count("|") for line in rows} == {header.count("|")}  # every row fills every column
    assert "| 6.67 |" in rows[0] and rows[0].endswith("| 80.0 | 1.25x |")
    assert "| bf16 | 2000 | refused: --precision bf16 needs AVX512-BF16 or AMX: use fp32 |" in rows[1]
    assert "daft 0.7.26" in table and "orchard / Daft" in header


def test_table_names_each_precisions_engine_alone():
    """The machine line gives the engine alone of every precision run (or that it was refused)."""
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    machine = {"cpu": "Intel Xeon (AMX)", "cores": 2, "memory_gb": 24, "python": "3.11", "pyspark": "4.3.0",
               "onnxruntime": "1.32.0"}
    comparison = {"precision": "bf16", "images": 2000, "images_per_s": 90.0, "featurize_images_per_s": 200.0,
                  "speedup_over_fp32_featurize": 1.6, "cosine_median": 0.996, "cosine_min": 0.99,
                  "k_for_95_percent": {"fp32": 375, "low": 376}, "top10_explained_variance_max_abs_diff": 0.001}
    table = bench.markdown({"date": "2026-12-04", "machine": machine, "weights": "random",
                            "ceilings": {"fp32": 229.1, "bf16": 437.1, "int8": 0.0}, "runs": [], "baselines": [],
                            "precisions": [comparison]})
    assert "fp32 (onnxruntime) 229, bf16 (openvino) 437, int8 refused." in table
    assert "bf16 on the same 2000 images" in table and "k for 95% variance fp32 375 vs bf16 376" in table


def test_render_rewrites_the_table_from_a_results_file(tmp_path):
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    source = sorted(p for p in results.glob("*.json") if "runs" in json.loads(p.read_text()))[-1]  # not serve
    copy = tmp_path / source.name
    copy.write_text(source.read_text())
    assert bench.main(["--render", str(copy)]) == 0
    table = copy.with_suffix(".md").read_text()
    sizes = [run["images"] for run in json.loads(source.read_text())["runs"]]
    assert sizes and all(f"| {size} |" in table for size in sizes)
    assert "worker s: read / decode+resize / inference" in table
