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
                       "--results", str(tmp_path / "results"), "--ceiling-seconds", "0.5", "--int8",
                       "--engines", *engines, "--", "--k", "5"])
    assert code == 0
    report = json.loads(next((tmp_path / "results").glob("*.json")).read_text())
    assert [r["engine"] for r in report["runs"]] == engines
    assert all(r["ok"] == 150 for r in report["runs"])
    run = report["runs"][0]
    assert run["images"] == run["ok"] == 150
    assert run["pca_k"] == 5 and run["images_per_s"] > 0
    assert run["peak_memory_mb"]["jvm_mb"] > 0 and run["peak_memory_mb"]["python_worker_mb"] > 0
    assert len(list((tmp_path / "data" / "fruits-150" / "Training").iterdir())) == 131
    table = next((tmp_path / "results").glob("*.md")).read_text()
    assert f"| classic {pyspark.__version__} | 150 |" in table
    assert report["int8"]["images"] == 150 and 0.5 < report["int8"]["cosine_median"] <= 1.0
    assert "int8 (static QDQ)" in table


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
