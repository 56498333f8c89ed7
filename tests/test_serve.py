"""`orchard serve` as a real uvicorn process on 127.0.0.1, driven with real HTTP requests; the load benchmark.

Also in-process servers (uvicorn in a thread) where the test must watch the server itself: an audit hook
that sees every file opened for writing, and a collection on a moto S3 server.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from infra import AWS_ENV, moto_server, port_open, stop, wait_for
from PIL import Image, ImageOps

from orchard.classify import train
from orchard.config import RunConfig
from orchard.errors import ConfigError
from orchard.io.fs import StorageOptions
from orchard.pipeline import run
from orchard.predict import Predictor, find_predictor
from orchard.sample import SampleSpec, make_sample
from orchard.serve import THUMBNAIL_PIXELS, check_exposure, create_app

SPEC = importlib.util.spec_from_file_location("serve_load", Path(__file__).resolve().parents[1] / "benchmarks"
                                              / "serve_load.py")
serve_load = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(serve_load)

MAX_UPLOAD_MB = 0.05  # 52,428 bytes: the sample's photos are ~5 KB


BUILT: dict[str, Path] = {}  # the model, built once per session even where another module imports the fixture


@pytest.fixture(scope="session")
def model(spark, tmp_path_factory) -> Path:
    """A small random-weights run with a trained classifier (also used by tests/test_page.py)."""
    if "model" not in BUILT:
        root = tmp_path_factory.mktemp("serve")
        make_sample(root / "fruits", SampleSpec(classes=3, train_per_class=8, test_per_class=3, seed=2))
        run(RunConfig(input=str(root / "fruits"), output=str(root / "out"), weights="random", k=4,
                      progress=False), spark)
        train(str(root / "out"), spark=spark)
        BUILT["model"] = root / "out"
    return BUILT["model"]


@pytest.fixture(scope="module")
def service_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve-log") / "serve.log"


@pytest.fixture(scope="module")
def service(model, service_log):
    """`orchard serve` in its own process on a free loopback port; stopped (and its port closed) afterwards."""
    port = serve_load.free_port()
    with serve_load.served(model, port, service_log, "--max-upload-mb", str(MAX_UPLOAD_MB), "--rate-limit", "0",
                           "--body-timeout", "2") as base:
        yield base
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0, "the server must be stopped"


@contextlib.contextmanager
def in_process(app):
    """`app` under a real uvicorn server in a thread on a free loopback port; yields its base URL."""
    import uvicorn

    port = serve_load.free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 30, "in-process uvicorn")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


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
    assert "HTTP POST /predict, 2 client(s)" in table and "cold start" in table and "12 MP phone JPEG" in table
    assert report["page"]["thumbnail_first"]["n"] > 0 and report["predictor"]["phone_12mp"]["p95_ms"] > 0


def test_the_page_and_its_files_are_served_self_contained(service):
    status, page, headers = serve_load.fetch(f"{service}/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in headers["content-security-policy"]  # nothing but its own files
    assert b'capture="environment"' in page and b'accept="image/*"' in page
    for asset, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        status, content, headers = serve_load.fetch(f"{service}/{asset}")
        assert status == 200 and headers["content-type"].startswith(kind) and len(content) > 500
        assert b"http://" not in content and b"https://" not in content and b"//cdn" not in content
    assert b"http://" not in page and b"https://" not in page


def test_similar_images_come_back_by_id_with_thumbnails(service, model):
    image = photo(model, 2)
    body, content_type = serve_load.multipart_body(image.read_bytes(), image.name)
    status, answer = serve_load.call(f"{service}/predict?top_k=2&similar=3", body, content_type)
    assert status == 200, answer
    predictor = Predictor.load(str(model))
    expected = predictor.similar(image, k=3)
    assert [row["label"] for row in answer["similar"]] == [n.label for n in expected]
    assert [row["distance"] for row in answer["similar"]] == pytest.approx([n.distance for n in expected], abs=1e-6)
    assert "path" not in answer["similar"][0]  # ids only: collection paths never leave the server
    for row in answer["similar"]:
        status, content, headers = serve_load.fetch(f"{service}/thumbnails/{row['id']}")
        assert status == 200 and headers["content-type"] == "image/jpeg"
        thumb = Image.open(io.BytesIO(content))
        assert thumb.format == "JPEG" and 0 < max(thumb.size) <= THUMBNAIL_PIXELS
    assert serve_load.call(f"{service}/predict", body, content_type)[1]["similar"] == []  # default: none


@pytest.mark.parametrize("image_id, status", [("-1", 404), ("999999", 404), ("..%2F..%2Fetc%2Fpasswd", 404),
                                               ("0x1", 422), ("one", 422)])
def test_thumbnails_are_reachable_by_collection_id_only(service, image_id, status):
    code, content, _ = serve_load.fetch(f"{service}/thumbnails/{image_id}")
    assert code == status and b"root:" not in content
    assert serve_load.fetch(f"{service}/thumbnails/../../etc/passwd")[0] == 404  # normalised by the client: no route


def test_a_slow_body_gets_408_and_the_upload_is_never_logged(service, service_log, model):
    host, port = service.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 5000\r\n\r\n--b\r\n")  # then nothing: the body never finishes
        reply = http.client.HTTPResponse(sock)
        reply.begin()
        assert reply.status == 408 and "took longer than 2 s" in json.loads(reply.read())["detail"]
    secret_name = "gps-52.3676N-4.9041E-home.jpg"
    body, content_type = serve_load.multipart_body(photo(model).read_bytes(), secret_name)
    assert serve_load.call(f"{service}/predict", body, content_type)[0] == 200
    log = service_log.read_text()
    assert "POST /predict HTTP/1.1" in log  # the access log is on (and shows the request line) ...
    assert secret_name not in log and "gps-52" not in log  # ... but neither the file name nor the content


def test_uploads_stay_in_memory_never_in_a_temporary_file(model):
    """An audit hook sees every file the process opens for writing while a 12 MP phone photo is served."""
    written: list[str] = []
    recording = threading.Event()

    def hook(event: str, args: tuple) -> None:
        if not recording.is_set():
            return
        if event == "open":
            path, mode, flags = args
            if (mode and any(c in mode for c in "wax+")) or (flags and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
                written.append(str(path))
        elif event.startswith("tempfile."):
            written.append(event)

    sys.addaudithook(hook)  # hooks cannot be removed: this one only acts while `recording` is set
    phone = serve_load.phone_photo()
    assert len(phone) > 2**20  # above Starlette's 1 MB spooling threshold
    recording.set()
    with tempfile.SpooledTemporaryFile(max_size=2**20) as spooled:  # the hook sees what Starlette's form parser does
        spooled.write(phone)
    recording.clear()
    assert written, "the audit hook must see a spooled temporary file roll over to disk"
    written.clear()
    with in_process(create_app(Predictor.load(str(model)))) as base:
        body, content_type = serve_load.multipart_body(phone, "IMG_0001.jpg")
        recording.set()
        status, answer = serve_load.call(f"{base}/predict?similar=2", body, content_type)
        recording.clear()
    assert status == 200 and len(answer["similar"]) == 2, answer
    assert written == [], f"the upload touched the disk: {written}"


def test_thumbnails_of_a_collection_on_s3(model, tmp_path, monkeypatch):
    """A predictor whose collection lives in a (moto) S3 bucket serves thumbnails read through orchard.io.fs."""
    import boto3

    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    folder = find_predictor(str(model))
    loaded = Predictor.load(folder)
    arrays = dict(np.load(Path(folder) / "predictor.npz"))
    local = [Path(str(p).removeprefix("file:")) for p in arrays["collection_paths"]]
    keys = [f"collection/{i}/{p.name}" for i, p in enumerate(local)]
    arrays["collection_paths"] = np.array([f"s3://fruits/{key}" for key in keys])
    with moto_server(tmp_path / "moto.log") as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="eu-west-1")
        client.create_bucket(Bucket="fruits", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        for path, key in zip(local, keys, strict=True):
            client.upload_file(str(path), "fruits", key)
        on_s3 = Predictor(folder, loaded.manifest, arrays, (Path(folder) / "model.onnx").read_bytes(),
                          storage=StorageOptions(endpoint, "eu-west-1"))
        with in_process(create_app(on_s3)) as base:
            answers = [serve_load.fetch(f"{base}/thumbnails/{i}") for i in (0, len(keys) - 1)]
    for (status, content, headers), source in zip(answers, (local[0], local[-1]), strict=True):
        assert status == 200 and headers["content-type"] == "image/jpeg"
        shown = np.asarray(Image.open(io.BytesIO(content)), np.int16)
        original = ImageOps.exif_transpose(Image.open(source)).convert("RGB")  # thumbnails are shown upright
        assert np.abs(shown - np.asarray(original, np.int16)).mean() < 8  # that very image


@pytest.fixture(scope="module")
def guarded(model, tmp_path_factory):
    """`uvicorn --factory orchard.serve:app_from_env` configured by environment: an API key, 2 uploads a minute."""
    port = serve_load.free_port()
    log = tmp_path_factory.mktemp("guarded") / "uvicorn.log"
    env = {**os.environ, "ORCHARD_MODEL": str(model), "ORCHARD_API_KEY": API_KEY, "ORCHARD_RATE_PER_MINUTE": "2"}
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "orchard.serve:app_from_env",
                                    "--host", "127.0.0.1", "--port", str(port), "--timeout-keep-alive", "5"],
                                   stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: process.poll() is not None or port_open(port), 60, "uvicorn --factory")
        assert process.poll() is None, log.read_text()
        yield base, log
    finally:
        stop(process)


API_KEY = "k3y-that-must-never-be-printed"


def test_an_api_key_guards_everything_but_the_page_and_health(guarded):
    base, log = guarded
    assert serve_load.fetch(f"{base}/")[0] == 200  # the page loads, then asks for the key
    status, health = serve_load.call(f"{base}/health")
    assert status == 200 and health["api_key_required"] is True
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": API_KEY[:-1]}):
        status, answer = serve_load.call(f"{base}/classes", headers=headers)
        assert status == 401 and "X-API-Key" in answer["detail"]
        assert serve_load.fetch(f"{base}/thumbnails/0", headers=headers)[0] == 401
    assert serve_load.call(f"{base}/classes", headers={"X-API-Key": API_KEY})[0] == 200
    assert serve_load.fetch(f"{base}/thumbnails/0", headers={"X-API-Key": API_KEY})[0] == 200
    assert API_KEY not in log.read_text()


def test_uploads_are_rate_limited_per_client_with_retry_after(guarded, model):
    base, log = guarded
    body, content_type = serve_load.multipart_body(photo(model).read_bytes())
    key = {"X-API-Key": API_KEY}
    statuses = [serve_load.fetch(f"{base}/predict", body, content_type, headers=key) for _ in range(3)]
    assert [status for status, _, _ in statuses[:2]] == [200, 200]
    status, content, headers = statuses[2]
    assert status == 429 and int(headers["retry-after"]) >= 1
    assert "at most 2 a minute" in json.loads(content)["detail"]
    assert serve_load.call(f"{base}/classes", headers=key)[0] == 200  # reads are not limited
    assert API_KEY not in log.read_text()


def test_listening_beyond_loopback_needs_a_key_or_insecure(model, capsys):
    done = subprocess.run([sys.executable, "-m", "orchard.cli", "serve", str(model), "--host", "0.0.0.0"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "ORCHARD_API_KEY": ""})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--api-key" in done.stderr and "--insecure" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    check_exposure("0.0.0.0", None, insecure=True)
    assert "WARNING" in capsys.readouterr().err
    check_exposure("0.0.0.0", API_KEY, insecure=False)
    check_exposure("127.0.0.1", None, insecure=False)
    assert capsys.readouterr().err == ""  # a key is never printed
    with pytest.raises(ConfigError, match="ORCHARD_API_KEY"):
        check_exposure("192.168.1.5", None, insecure=False)
