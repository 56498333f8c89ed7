"""`orchard serve` as a real uvicorn process on 127.0.0.1, driven with real HTTP requests; the load benchmark."""

from __future__ import annotations

import http.client
import importlib.util
import json
import socket
import urllib.request
from pathlib import Path

import pytest

from orchard.classify import train
from orchard.config import RunConfig
from orchard.pipeline import run
from orchard.predict import Predictor
from orchard.sample import SampleSpec, make_sample

SPEC = importlib.util.spec_from_file_location("serve_load", Path(__file__).resolve().parents[1] / "benchmarks"
                                              / "serve_load.py")
serve_load = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(serve_load)

MAX_UPLOAD_MB = 0.05  # 52,428 bytes: the sample's photos are ~5 KB


@pytest.fixture(scope="module")
def model(spark, tmp_path_factory) -> Path:
    """A small random-weights run with a trained classifier."""
    root = tmp_path_factory.mktemp("serve")
    make_sample(root / "fruits", SampleSpec(classes=3, train_per_class=8, test_per_class=3, seed=2))
    run(RunConfig(input=str(root / "fruits"), output=str(root / "out"), weights="random", k=4, progress=False),
        spark)
    train(str(root / "out"), spark=spark)
    return root / "out"


@pytest.fixture(scope="module")
def service(model, tmp_path_factory):
    """`orchard serve` in its own process on a free loopback port; stopped (and its port closed) afterwards."""
    port = serve_load.free_port()
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    with serve_load.served(model, port, log, "--max-upload-mb", str(MAX_UPLOAD_MB)) as base:
        yield base
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0, "the server must be stopped"


def photo(model: Path, index: int = 0) -> Path:
    return sorted((model.parent / "fruits" / "Test").glob("*/*.jpg"))[index]


def test_health_classes_and_openapi(service, model):
    predictor = Predictor.load(str(model))
    status, health = serve_load.call(f"{service}/health")
    assert status == 200 and health["status"] == "ok"
    assert health["classes"] == 3 and health["collection_images"] == predictor.collection_size
    assert health["meaningful_weights"] is False and "RANDOM" in health["weights"]
    assert serve_load.call(f"{service}/classes") == (200, {"classes": predictor.classes})
    status, schema = serve_load.call(f"{service}/openapi.json")
    assert status == 200 and {"/predict", "/health", "/classes"} <= set(schema["paths"])
    assert {"413", "415", "422"} <= set(schema["paths"]["/predict"]["post"]["responses"])
    with urllib.request.urlopen(f"{service}/docs", timeout=10) as response:
        assert response.status == 200 and b"swagger" in response.read().lower()


def test_good_upload_gets_the_predictors_answer(service, model):
    image = photo(model, 1)
    body, content_type = serve_load.multipart_body(image.read_bytes(), image.name)
    status, answer = serve_load.call(f"{service}/predict?top_k=2", body, content_type)
    assert status == 200, answer
    expected = Predictor.load(str(model)).predict([image], top_k=2)[0]
    assert answer["filename"] == image.name
    assert [row["label"] for row in answer["predictions"]] == [name for name, _ in expected]
    assert [row["probability"] for row in answer["predictions"]] == pytest.approx([p for _, p in expected], abs=1e-6)
    png = serve_load.multipart_body(image.read_bytes(), "photo.png", "image/png")  # the declared subtype is free
    assert serve_load.call(f"{service}/predict", *png)[0] == 200


@pytest.mark.parametrize("case, status, message", [
    ("oversize", 413, "larger than the 52428-byte limit"),
    ("text", 415, "expected an image upload"),
    ("no content type", 415, "got application/octet-stream"),
    ("garbage", 422, "cannot use this image: not a recognised image"),
    ("truncated", 422, "cannot use this image"),
])
def test_bad_uploads_get_a_4xx_with_a_json_reason(service, model, case, status, message):
    good = photo(model).read_bytes()
    data, content_type = {
        "oversize": (good + bytes(60_000), "image/jpeg"),
        "text": (b"hello", "text/plain"),
        "no content type": (good, "application/octet-stream"),
        "garbage": (b"\x00\x01 definitely not pixels" * 10, "image/jpeg"),
        "truncated": (good[: len(good) // 3], "image/jpeg"),
    }[case]
    answer = serve_load.call(f"{service}/predict", *serve_load.multipart_body(data, "upload.jpg", content_type))
    assert answer[0] == status, answer
    assert message in answer[1]["detail"]


def test_oversize_streamed_bodies_are_cut_off_and_form_mistakes_are_422(service):
    host, port = service.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    head = (b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n")
    chunks = (part for part in [head, *[bytes(50_000)] * 40])  # 2 MB, chunked: no Content-Length to judge by
    connection.request("POST", "/predict", body=chunks, encode_chunked=True,
                       headers={"Content-Type": "multipart/form-data; boundary=b0undary"})
    response = connection.getresponse()
    assert response.status == 413 and "limit" in json.loads(response.read())["detail"]
    connection.close()
    status, answer = serve_load.call(f"{service}/predict", *serve_load.multipart_body(b"x", field="photo"))
    assert status == 422 and answer["detail"][0]["loc"] == ["body", "file"]
    body, content_type = serve_load.multipart_body(b"x")
    assert serve_load.call(f"{service}/predict?top_k=0", body, content_type)[0] == 422
    assert serve_load.call(f"{service}/health")[0] == 200  # still serving


def test_load_benchmark_runs_and_writes_results(model, tmp_path):
    code = serve_load.main(["--model", str(model), "--requests", "12", "--clients", "2", "--cold-runs", "1",
                            "--search-size", "2000", "--work", str(tmp_path / "work"),
                            "--results", str(tmp_path / "results")])
    assert code == 0
    report = json.loads(next((tmp_path / "results").glob("*-serve.json")).read_text())
    assert report["classes"] == 3 and report["cold_start"]["runs"] == 1
    assert report["predictor"]["predict"]["n"] == 12 and report["predictor"]["predict"]["p95_ms"] > 0
    assert [run["clients"] for run in report["http"]] == [1, 2]
    assert all(run["n"] == 12 and run["requests_per_s"] > 0 for run in report["http"])
    table = next((tmp_path / "results").glob("*-serve.md")).read_text()
    assert "HTTP POST /predict, 2 client(s)" in table and "cold start" in table
