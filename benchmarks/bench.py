"""End-to-end benchmark of `orchard run` on generated Fruits-360-shaped data.

    python benchmarks/bench.py --sizes 2000            # the README's quick benchmark
    python benchmarks/bench.py --sizes 2000 10000 151736 --precisions fp32 int8 bf16 --baselines daft
    python benchmarks/bench.py --sizes 2000 10000 --engines classic connect other --other-pyspark DIR

For each size N it generates (once, then reuses) N 100x100 JPEGs over 220 classes, Training/Test 75/25 as in
the current Fruits-360 release (151,736 images), under benchmarks/data/, runs `orchard run` in a fresh
process (its own Spark JVM, as a user would) at each precision, samples the memory of the driver, the JVM
and the Python workers while it runs, and reads the stage timings from run.json. A precision orchard
refuses on this machine (bf16 without AVX512-BF16/AMX) is a row "refused: <reason>". Results go to
benchmarks/results/<date>-<sizes>.json and .md (a markdown table the README quotes).

`--engines` runs each size on several engines back to back: `classic` (this environment's pyspark),
`connect` (the same pyspark 4.x as a Spark Connect server in the run's process, `--remote local[*]`) and
`other` (classic on the pyspark installed in `--other-pyspark DIR`, e.g. by
`pip install --no-deps --target DIR 'pyspark>=3.5,<3.6'`, put first on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
# The current Fruits-360 100x100 release: 151,736 images of 220 classes, Training/Test about 75/25.
CLASSES, FULL_SIZE, TEST_SHARE = 220, 151_736, 0.25


def dataset(size: int, folder: Path) -> Path:
    """folder/fruits-N: N images over 220 classes, a quarter of each in Test, generated once (one process per
    core) and reused."""
    from orchard.sample import SampleSpec, make_sample

    root = folder / f"fruits-{size}"
    marker = root / ".complete"
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        started = time.perf_counter()
        count = make_sample(root, SampleSpec(classes=CLASSES, total=size, test_share=TEST_SHARE, seed=42),
                            processes=os.cpu_count() or 1)
        print(f"generated {count} images in {time.perf_counter() - started:.1f} s under {root}", flush=True)
        marker.write_text("ok\n")
    return root


class MemorySampler:
    """Peak RSS of the driver process, its JVM and the largest Python worker, polled every 0.2 s."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.peaks = {"driver_mb": 0.0, "jvm_mb": 0.0, "python_worker_mb": 0.0, "total_mb": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                continue
            total = 0.0
            for process in processes:
                try:  # one process vanishing (or a zombie launcher) must not void the whole sample
                    rss = process.memory_info().rss / 2**20
                    name = " ".join(process.cmdline()[:3])
                except psutil.Error:
                    continue
                total += rss
                key = ("driver_mb" if process.pid == self.root.pid else
                       "jvm_mb" if "java" in name else "python_worker_mb" if "python" in name else None)
                if key:
                    self.peaks[key] = max(self.peaks[key], rss)
            self.peaks["total_mb"] = max(self.peaks["total_mb"], total)


class Refused(Exception):
    """orchard refused the run with a one-line user error (exit 2): its message is the reason."""


def run_measured(command: list[str], env_extra: dict[str, str] | None = None) -> tuple[str, float, dict]:
    """Run a command in a fresh process; returns (stdout, wall seconds, peak memory). Raises Refused on a
    one-line user error (exit 2)."""
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, **(env_extra or {})}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with MemorySampler(process.pid) as sampler:
        stdout, stderr = process.communicate()
    wall = time.perf_counter() - started
    lines = [line for line in stderr.splitlines() if line.strip()]
    if process.returncode == 2 and lines:
        raise Refused(lines[-1].removeprefix("orchard: ").removeprefix("error: ").strip())
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} failed ({process.returncode}):\n{stderr[-3000:]}")
    return stdout, wall, sampler.peaks


def run_orchard(data: Path, output: Path, extra: list[str], env_extra: dict[str, str] | None = None) -> dict:
    """One `orchard run` in a subprocess; returns run.json plus wall time and peak memory."""
    shutil.rmtree(output, ignore_errors=True)
    stdout, wall, memory = run_measured([sys.executable, "-m", "orchard.cli", "run", str(data), "--output",
                                         str(output), "--no-progress", *extra], env_extra)
    info = json.loads((output / "run.json").read_text())
    size_mb = sum(f.stat().st_size for f in output.rglob("*") if f.is_file()) / 2**20
    return {"info": info, "wall_s": wall, "memory": memory, "output_mb": size_mb, "stdout": stdout}


def run_baseline(kind: str, data: Path, output: Path, orchard_images_per_s: float, precision: str = "fp32") -> dict:
    """One baseline (benchmarks/baselines.py) on the same data; speed-up of orchard over it."""
    shutil.rmtree(output, ignore_errors=True)
    stdout, _, memory = run_measured([sys.executable, str(HERE / "baselines.py"), kind, str(data), str(output),
                                      precision])
    result = json.loads(stdout.strip().splitlines()[-1])
    images_per_s = result["images"] / result["seconds"]
    return {"kind": kind, "precision": precision, "version": result.get("version"), "images": result["images"],
 "seconds": round(result["seconds"], 1),
            "images_per_s": round(images_per_s, 2), "orchard_speedup": round(orchard_images_per_s / images_per_s, 1),
            "peak_memory_mb": {k: round(v) for k, v in memory.items()}}


def compare_precision(size: int, fp32_output: Path, low_output: Path, low: dict, fp32_row: dict) -> dict:
    """int8 (or bf16) vs fp32 on the same images: speed, per-image cosine similarity, change in PCA variance."""
    import numpy as np
    import pandas as pd

    a = pd.read_parquet(fp32_output / "features").set_index("path")
    b = pd.read_parquet(low_output / "features").set_index("path").loc[a.index]
    x, y = np.stack(a["features"]), np.stack(b["features"])
    cosine = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    fp32_pca, low_pca = (json.loads((o / "run.json").read_text())["pca"] for o in (fp32_output, low_output))
    top, timings = 10, low["info"]["timings"]
    return {
        "precision": low["info"]["model"]["precision"], "images": size, "seconds": round(timings["total"], 1),
        "images_per_s": round(size / timings["total"], 1),
        "featurize_images_per_s": round(size / timings["featurize"], 1),
        "speedup_over_fp32_featurize": round(size / timings["featurize"] / fp32_row["featurize_images_per_s"], 2),
        "cosine_median": round(float(np.median(cosine)), 4), "cosine_min": round(float(cosine.min()), 4),
        "k_for_95_percent": {"fp32": fp32_pca["k"], "low": low_pca["k"]},
        "top10_explained_variance_max_abs_diff": round(float(np.max(np.abs(
            np.array(fp32_pca["explained_variance"][:top]) - np.array(low_pca["explained_variance"][:top])))), 5),
    }


def measure_ceiling(weights: str, seconds: float, precision: str = "fp32") -> float:
    """The engine orchard uses for `precision` alone on this machine, 2 threads, batch 8: the inference-only
    upper bound, in images/s. int8 is timed on a graph calibrated on random pixels (same kernels and speed as
    the run's graph; its features are not compared)."""
    import tempfile

    import numpy as np

    from orchard.featurize import cpu, quantize, runtime
    from orchard.featurize.weights import model_source

    images = np.random.default_rng(0).integers(0, 256, (64, 224, 224, 3), dtype=np.uint8)
    graph = model_source(weights).onnx_bytes
    if precision == "int8":
        with tempfile.TemporaryDirectory() as cache:
            graph = quantize.quantize_int8(graph, images[:32], Path(cache))
    try:
        session = runtime.make_engine_session(graph, 2, precision, "the benchmark machine")
    except cpu.UnsupportedCpu:  # bf16 on a CPU without AVX512-BF16/AMX: the runs say why they were refused
        return 0.0
    runtime.embed(session, images, 8)
    started, done = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        runtime.embed(session, images, 8)
        done += len(images)
    return done / (time.perf_counter() - started)


def machine() -> dict:
    """The benchmark machine: CPU (with the vector and matrix units that decide the engines' speed), cores,
    memory and the versions that matter."""
    import onnxruntime
    import pyspark

    from orchard.featurize import cpu

    present = cpu.flags()
    units = [name for flag, name in (("avx512f", "AVX-512"), ("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX"))
             if flag in present] or (["AVX2"] if "avx2" in present else [])
    model = cpu.model_name() + (f" ({', '.join(units)})" if units else "")
    return {"host": platform.node(), "cpu": model, "cores": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30), "python": platform.python_version(),
            "pyspark": pyspark.__version__, "onnxruntime": onnxruntime.__version__}


def record_class_data(data: Path, work: Path, extra: list[str]) -> None:
    """A first, unmeasured run that records the driver JVM's class-data archive (orchard/classdata.py), as
    any earlier orchard run on the machine would have; waits until that JVM has written it at exit."""
    from orchard import classdata
    from orchard.featurize.weights import orchard_cache_dir
    from orchard.spark import spark_home

    def mapped() -> bool:
        return classdata.state(" ".join(classdata.plan(orchard_cache_dir(), spark_home()).options)) == "mapped"

    if os.environ.get(classdata.DISABLE_ENV) == "0" or mapped():
        return
    run_orchard(data, work / "record-class-data", [*extra, "--limit", "100"])
    deadline = time.monotonic() + 120
    while not mapped():  # the JVM writes the archive as it exits, after the run's process has ended
        if time.monotonic() > deadline:
            raise SystemExit("the driver JVM did not write its class-data archive within 120 s")
        time.sleep(1)


ENGINES = ("classic", "connect", "other")


def engine_plan(engine: str, other_pyspark: str | None) -> tuple[list[str], dict[str, str] | None]:
    """(extra `orchard run` options, environment additions) for one engine."""
    if engine == "connect":
        return ["--remote", "local[*]"], None
    if engine == "other":
        if not other_pyspark:
            raise SystemExit("--engines other needs --other-pyspark DIR (a folder with another pyspark installed)")
        return [], {"PYTHONPATH": os.pathsep.join(filter(None, [other_pyspark, os.environ.get("PYTHONPATH")]))}
    return [], None


def warm_other(data: Path, work: Path, extra: list[str], env_extra: dict[str, str]) -> None:
    """An unmeasured run on the other pyspark, so that its driver JVM's class-data archive exists as well."""
    from orchard.featurize.weights import orchard_cache_dir

    archives = orchard_cache_dir() / "jvm"
    before = set(archives.glob("*.jsa")) if archives.is_dir() else set()
    run_orchard(data, work / "record-class-data-other", [*extra, "--limit", "100"], env_extra)
    deadline = time.monotonic() + 120
    while archives.is_dir() and not set(archives.glob("*.jsa")) - before and time.monotonic() < deadline:
        time.sleep(1)  # none new after 120 s: it already existed, or class data is off


def row(size: int, result: dict, ceilings: dict[str, float]) -> dict:
    """One table row from a finished `orchard run`; its share is of the engine alone at the run's precision."""
    info, timings = result["info"], result["info"]["timings"]
    total, precision = timings["total"], info["model"].get("precision", "fp32")
    ceiling = ceilings.get(precision) or float("nan")
    return {
        "engine": info["spark"].get("engine", "classic"), "spark": info["spark"].get("version"),
        "precision": precision,
        "images": size, "ok": info["counts"]["ok"], "seconds": round(total, 1),
        "images_per_s": round(size / total, 1),
        "featurize_images_per_s": round(size / timings["featurize"], 1),
        "share_of_engine_alone": round(size / total / ceiling, 3),
        "stages_s": {k: round(timings.get(k, 0.0), 2) for k in ("listing", "model", "quantize", "featurize",
                                                                 "write", "pca")},
        "fixed_s": round(total - timings["featurize"], 2),
        "worker_s": {k: round(v, 2) for k, v in timings["worker_seconds"].items()},
        "peak_memory_mb": {k: round(v) for k, v in result["memory"].items()},
        "output_mb": round(result["output_mb"], 1), "pca_k": info["pca"]["k"],
        "jvm_class_data": info["spark"].get("jvm_class_data", "off"),
    }


def refused_row(size: int, engine: str, precision: str, reason: str) -> dict:
    """The row of a run orchard refused on this machine (e.g. bf16 without AVX512-BF16/AMX)."""
    return {"engine": engine, "precision": precision, "images": size, "refused": reason}


def ceiling_text(report: dict) -> str:
    """'fp32 (onnxruntime) 295, bf16 (openvino) 617'; results before 2026-12-04 timed ONNX Runtime fp32 only."""
    from orchard.featurize.runtime import ENGINES

    ceilings = report.get("ceilings") or {"fp32": report["ceiling"]}
    return ", ".join(f"{p} ({ENGINES[p]}) {v:.0f}" if v else f"{p} refused" for p, v in ceilings.items())


def markdown(report: dict) -> str:
    """The results as the README's markdown: machine line, one row per run, then comparisons and baselines."""
    m = report["machine"]
    lines = [
        f"Benchmark {report['date']} on {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GiB; "
        f"Python {m['python']}, pyspark {m['pyspark']}, onnxruntime {m['onnxruntime']}"
        + (f", daft {report['daft']}" if report.get("daft") else "") + f"; weights "
        f"{report['weights']}. Engine alone (2 threads, images/s): {ceiling_text(report)}.",
        "",
        "| engine | precision | images | end-to-end s | images/s | featurise images/s | share of engine alone | "
        "all but featurise s | listing s | featurise s (worker s: read / decode+resize / inference) | write s | "
        "PCA s | peak driver / JVM / worker / total MB | output MB | Daft images/s | orchard / Daft |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        engine = f"{r.get('engine', 'classic')} {r.get('spark') or m['pyspark']}"
        if "refused" in r:
            lines.append(f"| {engine} | {r['precision']} | {r['images']} | refused: {r['refused']} |"
                         + " |" * 12)
            continue
        s, w, mem = r["stages_s"], r["worker_s"], r["peak_memory_mb"]
        fixed = r.get("fixed_s", round(r["seconds"] - s["featurize"], 2))
        share = r.get("share_of_engine_alone", r.get("share_of_ort_alone"))  # ORT fp32 before 2026-12-04
        daft = (f"{r['daft_images_per_s']} | {r['orchard_over_daft']}x" if "daft_images_per_s" in r
                else r.get("daft_refused", "") + " | ")
        lines.append(
            f"| {engine} | {r.get('precision', 'fp32')} | {r['images']} | {r['seconds']} | {r['images_per_s']} | "
            f"{r['featurize_images_per_s']} | {100 * share:.0f}% | {fixed} | {s['listing']} | "
            f"{s['featurize']} ({w['read']} / {w['preprocess']} / {w['inference']}) | {s['write']} | {s['pca']} | "
            f"{mem['driver_mb']} / {mem['jvm_mb']} / {mem['python_worker_mb']} / {mem['total_mb']} | "
            f"{r['output_mb']} | {daft} |")
    if report.get("class_data_off"):
        off = report["class_data_off"]
        lines += ["", f"Runs above load Spark's classes from the driver JVM's class-data archive (recorded by an "
                      f"earlier run on the machine). Without it (`ORCHARD_JVM_CDS=0`, a machine's first run) the "
                      f"{off['images']}-image run takes {off['seconds']} s ({off['images_per_s']} images/s; listing "
                      f"{off['stages_s']['listing']} s, PCA {off['stages_s']['pca']} s)."]
    comparisons = report.get("precisions") or ([report["int8"]] if report.get("int8") else [])
    for q in comparisons:
        name = q.get("precision", "int8")
        low = q["k_for_95_percent"].get("low", q["k_for_95_percent"].get("int8"))
        lines += ["", f"{name} on the same {q['images']} images: {q['images_per_s']} images/s end to end, "
                      f"featurise {q['featurize_images_per_s']} images/s ({q['speedup_over_fp32_featurize']}x fp32); "
                      f"cosine similarity to fp32 median {q['cosine_median']}, min {q['cosine_min']}; k for 95% "
                      f"variance fp32 {q['k_for_95_percent']['fp32']} vs {name} {low}; "
                      f"top-10 explained variance differs by at most {q['top10_explained_variance_max_abs_diff']}."]
    if report.get("daft"):
        lines += ["", "Daft: native download, decode and resize, orchard's ONNX graph at the same precision in a "
                      "class UDF (2 processes, 1 thread each), Parquet out, no PCA; its seconds exclude building "
                      "the graph. orchard / Daft compares end-to-end images/s."]
    if report["baselines"]:
        lines += ["", "| baseline (same data) | images | seconds | images/s | orchard speed-up | "
                      "peak JVM / worker MB |", "|---|---|---|---|---|---|"]
        for b in report["baselines"]:
            mem = b["peak_memory_mb"]
            lines.append(f"| {b['kind']} | {b['images']} | {b['seconds']} | {b['images_per_s']} | "
                         f"{b['orchard_speedup']}x | {mem['jvm_mb']} / {mem['python_worker_mb']} |")
    return "\n".join(lines) + "\n"


def add_daft(run: dict, data: Path, work: Path) -> str:
    """Run the Daft baseline on the same images at the same precision; its numbers go into `run`.
    Returns Daft's version."""
    size, precision = run["images"], run["precision"]
    daft = run_baseline("daft", data, work / f"daft-{size}-{precision}", run["images_per_s"], precision)
    run.update(daft_seconds=daft["seconds"], daft_images_per_s=daft["images_per_s"],
               orchard_over_daft=round(run["images_per_s"] / daft["images_per_s"], 2),
               daft_peak_memory_mb=daft["peak_memory_mb"])
    return daft["version"]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or only render an earlier results file); writes the results and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000],
                        help=f"dataset sizes to run ({FULL_SIZE}: the whole of Fruits-360's current release)")
    parser.add_argument("--weights", default="random",
                        help="weights for the run (random by default: same compute as ImageNet weights)")
    parser.add_argument("--results", default=str(HERE / "results"), help="folder for the JSON and markdown")
    parser.add_argument("--data", default=str(HERE / "data"), help="where generated datasets are kept")
    parser.add_argument("--work", default=str(HERE / "data" / "out"), help="scratch folder for outputs")
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "int8", "bf16"],
                        help="run every size at each precision; other precisions are compared with fp32 on the "
                             "smallest size (fp32 is run too)")
    parser.add_argument("--baselines", nargs="*", default=[], choices=["reference", "fair", "daft"],
                        help="also run these baselines: daft at every size and precision (needs the [bench] "
                             "extra), the TensorFlow ones on the smallest size (needs the [test] extra)")
    parser.add_argument("--class-data-off", action="store_true",
                        help="also run the smallest size without the driver JVM's class-data archive "
                             "(ORCHARD_JVM_CDS=0: what a machine's very first run costs)")
    parser.add_argument("--ceiling-seconds", type=float, default=5.0,
                        help="how long to time each precision's engine alone (the inference ceiling)")
    parser.add_argument("--render", metavar="RESULTS_JSON",
                        help="only rewrite the markdown table of an earlier results file, and print it")
    parser.add_argument("--engines", nargs="+", default=["classic"], choices=ENGINES,
                        help="engines to run each size on, back to back (default: classic)")
    parser.add_argument("--other-pyspark", metavar="DIR", help="folder holding another pyspark (engine `other`)")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: extra `orchard run` options")
    args = parser.parse_args(argv)
    if args.render:
        report = json.loads(Path(args.render).read_text())
        Path(args.render).with_suffix(".md").write_text(markdown(report))
        print(markdown(report))
        return 0
    extra = ["--weights", args.weights, *[a for a in args.extra if a != "--"]]
    precisions = ["fp32", *[p for p in dict.fromkeys(args.precisions) if p != "fp32"]]

    ceilings = {p: round(measure_ceiling(args.weights, args.ceiling_seconds, p), 1) for p in precisions}
    report = {"date": datetime.date.today().isoformat(), "machine": machine(), "weights": args.weights,
              "ceilings": ceilings, "extra_options": extra, "runs": [], "baselines": [], "precisions": [],
              "class_data_off": None, "daft": None}
    plans = {engine: engine_plan(engine, args.other_pyspark) for engine in args.engines}
    work, smallest = Path(args.work), min(args.sizes)
    record_class_data(dataset(smallest, Path(args.data)), work, extra)
    if "other" in plans:
        warm_other(dataset(smallest, Path(args.data)), work, extra, plans["other"][1])
    for size in args.sizes:
        data = dataset(size, Path(args.data))
        for engine, (options, env_extra) in plans.items():
            for precision in precisions:
                suffix = ("" if engine == args.engines[0] else f"-{engine}") + (
                    "" if precision == "fp32" else f"-{precision}")
                output = work / f"fruits-{size}{suffix}"
                try:
                    result = run_orchard(data, output, [*extra, *options, "--precision", precision], env_extra)
                except Refused as refusal:
                    if precision == "fp32":
                        raise SystemExit(f"orchard refused the fp32 run: {refusal}") from None
                    report["runs"].append(refused_row(size, engine, precision, str(refusal)))
                    print(json.dumps(report["runs"][-1]), flush=True)
                    continue
                report["runs"].append(row(size, result, ceilings))
                if "daft" in args.baselines and engine == args.engines[0]:
                    report["daft"] = add_daft(report["runs"][-1], data, work) or report["daft"]
                if precision != "fp32" and size == smallest and engine == args.engines[0]:
                    fp32 = next(r for r in report["runs"] if r["images"] == size and r["precision"] == "fp32")
                    report["precisions"].append(compare_precision(size, work / f"fruits-{size}", output, result,
                                                                  fp32))
                print(json.dumps(report["runs"][-1]), flush=True)
    first = next(r for r in report["runs"] if r["images"] == smallest and "refused" not in r)
    if args.class_data_off:
        off = run_orchard(dataset(smallest, Path(args.data)), work / f"fruits-{smallest}-no-class-data", extra,
                          {"ORCHARD_JVM_CDS": "0"})
        report["class_data_off"] = row(smallest, off, ceilings)
        print(json.dumps(report["class_data_off"]), flush=True)
    for kind in (k for k in args.baselines if k != "daft"):
        data = dataset(smallest, Path(args.data))
        report["baselines"].append(run_baseline(kind, data, work / f"baseline-{kind}", first["images_per_s"]))
        print(json.dumps(report["baselines"][-1]), flush=True)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    stem = results / f"{report['date']}-{'-'.join(map(str, args.sizes))}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
