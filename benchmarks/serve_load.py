"""Latency of `orchard predict` and `orchard serve` on this machine (loopback only, bounded).

    python benchmarks/serve_load.py                  # builds a small model once, ~1 minute
    python benchmarks/serve_load.py --model OUT      # an output that `orchard train` has seen

Measures: cold start of `orchard predict MODEL photo.jpg` (subprocess wall time: interpreter, imports,
predictor load, one photo), warm per-photo latency of `Predictor.predict` (decode + ONNX Runtime + NumPy)
after warm-up, the same for a 12 MP phone JPEG (EXIF orientation and GPS), the exact NumPy nearest-neighbour
search at a larger synthetic size, and the HTTP service (a real `orchard serve` on 127.0.0.1, rate limit
off): the page, what the page asks for (`POST /predict?similar=6`, then the 6 thumbnails: first on demand,
then from the service's cache), the 12 MP photo, and `/predict` from one client in sequence (latency) and
a small thread pool (requests/s). Writes benchmarks/results/<date>-serve.json and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}


def orchard(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the orchard CLI in a fresh interpreter; raise with its stderr if it fails."""
    done = subprocess.run([sys.executable, "-m", "orchard.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)
    if done.returncode != 0:
        raise RuntimeError(f"orchard {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done


def build_model(work: Path, classes: int, per_class: int) -> Path:
    """A sample collection, `orchard run --weights random` and `orchard train` on it (reused when present)."""
    output = work / "out"
    if (output / "classifier" / "predictor" / "predictor.json").exists():
        return output
    shutil.rmtree(work, ignore_errors=True)
    orchard("sample", str(work / "fruits"), "--classes-count", str(classes), "--train-per-class", str(per_class),
            "--test-per-class", str(max(per_class // 3, 1)))
    orchard("run", str(work / "fruits"), "--output", str(output), "--weights", "random", "--k", "32",
            "--no-progress")
    orchard("train", str(output))
    return output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def multipart_body(data: bytes, filename: str = "photo.jpg", content_type: str = "image/jpeg",
                   field: str = "file") -> tuple[bytes, str]:
    """A multipart/form-data body with one file part; returns (body, Content-Type header)."""
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def call(url: str, body: bytes | None = None, content_type: str | None = None, timeout: float = 30,
         headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """One HTTP request; (status, JSON body) for successes and HTTP errors alike."""
    status, content, _ = fetch(url, body, content_type, timeout, headers)
    return status, json.loads(content)


def fetch(url: str, body: bytes | None = None, content_type: str | None = None, timeout: float = 30,
          headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    """One HTTP request; (status, body bytes, lower-cased headers) for successes and HTTP errors alike."""
    headers = {**({"Content-Type": content_type} if content_type else {}), **(headers or {})}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as error:
        return error.code, error.read(), {k.lower(): v for k, v in error.headers.items()}


@contextlib.contextmanager
def served(model: Path | str, port: int, log: Path, *extra: str, startup_timeout: float = 60):
    """`orchard serve MODEL` on 127.0.0.1:port; yields its base URL once /health answers; always stopped."""
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "orchard.cli", "serve", str(model), "--host", "127.0.0.1",
                                    "--port", str(port), *extra], stdout=out, stderr=subprocess.STDOUT, env=ENV,
                                   start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"orchard serve exited with {process.returncode}: {log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                if call(f"{base}/health", timeout=2)[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"orchard serve did not answer /health within {startup_timeout}s")
            time.sleep(0.2)
        yield base
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)


def phone_photo(width: int = 4000, height: int = 3000, seed: int = 0) -> bytes:
    """A phone-like JPEG (12 MP by default, ~2.7 MB): smooth colour with sensor noise, EXIF orientation 6
    (rotated 90 degrees, as a phone held upright writes it) and a GPS position."""
    import io

    import cv2
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = cv2.resize((rng.random((30, 40, 3)) * 255).astype(np.uint8), (width, height),
                        interpolation=cv2.INTER_CUBIC)
    pixels = np.clip(pixels + rng.normal(0, 6, pixels.shape), 0, 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation
    exif[0x8825] = {1: "N", 2: (52.0, 22.0, 1.5), 3: "E", 4: (4.0, 53.0, 2.0)}  # GPS: personal data
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


def percentiles(seconds: list[float]) -> dict:
    """p50/p95/max in milliseconds."""
    ms = np.array(seconds) * 1000
    return {"n": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p95_ms": round(float(np.percentile(ms, 95)), 2), "max_ms": round(float(ms.max()), 2)}


def cold_start(model: Path, photo: Path, repeats: int) -> dict:
    """Wall time of `orchard predict MODEL photo` in a fresh process, `repeats` times."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        orchard("predict", str(model), str(photo))
        times.append(time.perf_counter() - started)
    return {"runs": repeats, "median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3)}


def warm_latency(model: Path, photos: list[bytes], requests: int) -> dict:
    """Per-photo latency of Predictor.predict (one photo per call) after a warm-up, plus its load time."""
    from orchard.predict import Predictor

    started = time.perf_counter()
    predictor = Predictor.load(str(model))
    load_s = time.perf_counter() - started
    for photo in photos[:10]:
        predictor.predict([photo])
    times = []
    for i in range(requests):
        started = time.perf_counter()
        predictor.predict([photos[i % len(photos)]])
        times.append(time.perf_counter() - started)
    similar = []
    for i in range(min(requests, 50)):
        started = time.perf_counter()
        predictor.similar(photos[i % len(photos)], k=5)
        similar.append(time.perf_counter() - started)
    phone = phone_photo()
    predictor.predict([phone])
    big = []
    for _ in range(min(requests, 30)):
        started = time.perf_counter()
        predictor.predict([phone])
        big.append(time.perf_counter() - started)
    return {"load_s": round(load_s, 3), "predict": percentiles(times), "similar": percentiles(similar),
            "phone_12mp": {**percentiles(big), "bytes": len(phone)}, "collection_images": predictor.collection_size}


def exact_search(images: int, k: int, queries: int = 20) -> dict:
    """The NumPy search `similar` does, on a synthetic collection of `images` PCA vectors of size k."""
    from orchard.predict import nearest

    rng = np.random.default_rng(0)
    collection = rng.normal(size=(images, k))
    norms = (collection**2).sum(axis=1)
    times = []
    for _ in range(queries):
        query = rng.normal(size=k)
        started = time.perf_counter()
        nearest(collection, norms, query, 5)
        times.append(time.perf_counter() - started)
    return {"images": images, "k": k, **percentiles(times)}


def http_load(base: str, photos: list[bytes], requests: int, clients: int) -> dict:
    """`requests` uploads from `clients` threads; latency percentiles and requests/s."""
    bodies = [multipart_body(photo) for photo in photos]

    def one(i: int) -> float:
        body, content_type = bodies[i % len(bodies)]
        started = time.perf_counter()
        status, _ = call(f"{base}/predict?top_k=3", body, content_type)
        if status != 200:
            raise RuntimeError(f"/predict answered {status}")
        return time.perf_counter() - started

    for i in range(10):
        one(i)
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        times = list(pool.map(one, range(requests)))
    elapsed = time.perf_counter() - started
    return {"clients": clients, **percentiles(times), "requests_per_s": round(requests / elapsed, 1)}


def page_load(base: str, photos: list[bytes], requests: int) -> dict:
    """What the page does per photo, from one client: the page itself, `POST /predict?similar=6`, then the
    thumbnails of the neighbours (first on demand, then cached); and the 12 MP phone JPEG through /predict."""
    def timed(url: str, body: tuple[bytes, str] | None = None) -> tuple[float, bytes]:
        started = time.perf_counter()
        status, content, _ = fetch(url, *(body or (None, None)))
        if status != 200:
            raise RuntimeError(f"{url} answered {status}")
        return time.perf_counter() - started, content

    page = [timed(f"{base}/")[0] for _ in range(20)]
    predicted, first, cached, seen = [], [], [], set()
    for i in range(min(requests, 50)):
        seconds, content = timed(f"{base}/predict?top_k=5&similar=6", multipart_body(photos[i % len(photos)]))
        predicted.append(seconds)
        for neighbour in json.loads(content)["similar"]:
            seconds = timed(f"{base}/thumbnails/{neighbour['id']}")[0]
            (cached if neighbour["id"] in seen else first).append(seconds)
            seen.add(neighbour["id"])
    phone = multipart_body(phone_photo())
    timed(f"{base}/predict", phone)
    big = [timed(f"{base}/predict", phone)[0] for _ in range(min(requests, 20))]
    return {"page": percentiles(page), "predict_similar": percentiles(predicted),
            "thumbnail_first": percentiles(first or [0.0]), "thumbnail_cached": percentiles(cached or [0.0]),
            "phone_12mp": percentiles(big)}


def render(report: dict) -> str:
    """The markdown summary the README quotes."""
    m, warm, cold = report["machine"], report["predictor"], report["cold_start"]
    lines = [f"Serving benchmark {report['date']} on {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; "
             f"Python {m['python']}, onnxruntime {m['onnxruntime']}; load average {m['load_average_1m']} when it "
             f"started; weights random (latency does not depend on them); {warm['collection_images']} collection "
             f"images, {report['classes']} classes.", "",
             "| measure | n | p50 ms | p95 ms | max ms | other |", "|---|---|---|---|---|---|",
             f"| `orchard predict` cold start (fresh process, one photo) | {cold['runs']} | "
             f"{cold['median_s'] * 1000:.0f} | | {cold['max_s'] * 1000:.0f} | median wall time |",
             "| `Predictor.predict`, one photo, warm | {n} | {p50_ms} | {p95_ms} | {max_ms} | load {load} s |".format(
                 **warm["predict"], load=warm["load_s"]),
             "| `Predictor.similar`, k=5, warm | {n} | {p50_ms} | {p95_ms} | {max_ms} | |".format(**warm["similar"]),
             "| `Predictor.predict`, 12 MP phone JPEG ({mb:.1f} MB, EXIF rotated), warm | {n} | {p50_ms} | {p95_ms} "
             "| {max_ms} | |".format(**warm["phone_12mp"], mb=warm["phone_12mp"]["bytes"] / 2**20),
             "| exact NumPy search alone, {images} x {k} | {n} | {p50_ms} | {p95_ms} | {max_ms} | |".format(
                 **report["exact_search"])]
    page = report["page"]
    for name, key in (("HTTP GET / (the page)", "page"), ("HTTP POST /predict?similar=6 (what the page sends)",
                                                          "predict_similar"),
                      ("HTTP GET /thumbnails/{id}, first time (read + decode + resize + encode)", "thumbnail_first"),
                      ("HTTP GET /thumbnails/{id}, cached", "thumbnail_cached"),
                      ("HTTP POST /predict, 12 MP phone JPEG", "phone_12mp")):
        row = page[key]
        lines.append(f"| {name} | {row['n']} | {row['p50_ms']} | {row['p95_ms']} | {row['max_ms']} | |")
    for run in report["http"]:
        lines.append("| HTTP POST /predict, {clients} client(s) | {n} | {p50_ms} | {p95_ms} | {max_ms} | "
                     "{requests_per_s} requests/s |".format(**run))
    return "\n".join(lines) + "\n"


def machine() -> dict:
    import onnxruntime

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(memory), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "load_average_1m": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="an output with a trained classifier (default: build a small one)")
    parser.add_argument("--work", default=str(HERE / "data" / "serve"), help="where the small model is built")
    parser.add_argument("--classes", type=int, default=6, help="classes of the built model's sample")
    parser.add_argument("--per-class", type=int, default=30, help="Training images per class of the sample")
    parser.add_argument("--requests", type=int, default=300, help="requests per measurement")
    parser.add_argument("--clients", type=int, default=4, help="threads of the concurrent HTTP client")
    parser.add_argument("--cold-runs", type=int, default=5, help="fresh `orchard predict` processes")
    parser.add_argument("--search-size", type=int, default=100_000, help="synthetic collection for exact search")
    parser.add_argument("--results", default=str(HERE / "results"), help="folder for the JSON and markdown")
    args = parser.parse_args(argv)

    work = Path(args.work)
    model = Path(args.model) if args.model else build_model(work, args.classes, args.per_class)
    from orchard.io import fs
    from orchard.output import Layout, finished_run
    from orchard.predict import find_predictor

    info = fs.read_json(fs.join(find_predictor(str(model)), "predictor.json"))
    collection = fs.read_columns(Layout(finished_run(str(model))).pca, ["path"])["path"].to_pylist()
    test_photos = sorted(Path(p.removeprefix("file:")) for p in collection if "/Test/" in p)
    photos = [path.read_bytes() for path in test_photos[:50]]
    report = {"date": datetime.date.today().isoformat(), "machine": machine(), "classes": len(info["classes"]),
              "cold_start": cold_start(model, test_photos[0], args.cold_runs),
              "predictor": warm_latency(model, photos, args.requests),
              "exact_search": exact_search(args.search_size, 100)}
    report["http"] = []
    work.mkdir(parents=True, exist_ok=True)
    with served(model, free_port(), work / "serve.log", "--rate-limit", "0") as base:
        report["page"] = page_load(base, photos, args.requests)
        for clients in (1, args.clients):
            report["http"].append(http_load(base, photos, args.requests, clients))
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    stem = results / f"{report['date']}-serve"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(render(report))
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
