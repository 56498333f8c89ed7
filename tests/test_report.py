"""`orchard report` on a real run: HTML content, PNG figures, rendering in headless Chromium, S3 outputs.

Chromium comes from the Debian package (`apt-get install -y chromium`); these tests fail without it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import orchard
from infra import AWS_ENV, moto_server
from matplotlib import colormaps
from PIL import Image

from orchard.cli import main
from orchard.config import RunConfig
from orchard.errors import ConfigError
from orchard.pipeline import run
from orchard.report import MAX_SCATTER_POINTS, error_reason, sample_positions, write_report

NASTY_CLASS = "Kiwi <b>\"sour\" & 'green' ü 🥝"  # replaces Apricot: quotes, markup, ampersand, unicode
FIGURES = ("images_per_class", "explained_variance", "pca_scatter", "timings")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking")
TAB_BLUE = (31, 119, 180)  # matplotlib's C0: the bars of the overview chart
BANNER_RED = (176, 0, 32)  # the random-weights banner (#b00020)

# Added to a copy of the page by the test only (the report itself has no JavaScript): once the page has
# loaded, it records whether every embedded figure decoded and whether every linked PNG file loads.
IMAGE_CHECK = """<script>
const load = (src) => new Promise((resolve) => {
  const image = new Image();
  image.onload = () => resolve(image.naturalWidth > 0 ? "ok" : "empty");
  image.onerror = () => resolve("error");
  image.src = src;
});
window.addEventListener("load", async () => {
  const embedded = [...document.images].map((image) => image.complete && image.naturalWidth > 0 ? "ok" : "broken");
  const linked = await Promise.all([...document.querySelectorAll("figcaption a")].map((link) => load(link.href)));
  const out = document.createElement("pre");
  out.id = "image-check";
  out.textContent = JSON.stringify({embedded, linked});
  document.body.appendChild(out);
});
</script>"""


class PageParser(HTMLParser):
    """Tags, image sources, links and visible text of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.ids: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(values["src"])
        if tag == "a":
            self.links.append(values["href"])
        if "id" in values:
            self.ids.append(values["id"])

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: Path) -> PageParser:
    parser = PageParser()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium with the flags of the issue and a throwaway profile; fails the test when missing."""
    binary = shutil.which("chromium")
    assert binary, "headless Chromium is required for this test: apt-get install -y chromium"
    return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=180)


def screenshot(page: Path, profile: Path, target: Path, height: int) -> np.ndarray:
    result = chromium(profile, f"--screenshot={target}", f"--window-size=1280,{height}", page.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    return np.asarray(Image.open(target).convert("RGB")).astype(np.int16)


def images_loaded(page: Path, profile: Path) -> dict:
    """Embedded and linked figure states, as Chromium saw them in an instrumented copy of the page."""
    checked = page.with_name("checked-" + page.name)
    checked.write_text(page.read_text(encoding="utf-8").replace("</body>", IMAGE_CHECK + "</body>"),
                       encoding="utf-8")
    result = chromium(profile, "--virtual-time-budget=10000", "--dump-dom", checked.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    marker = '<pre id="image-check">'
    assert marker in result.stdout, "the page never finished loading"
    return json.loads(html.unescape(result.stdout.split(marker, 1)[1].split("</pre>", 1)[0]))


def pixels_near(image: np.ndarray, colour: tuple[int, int, int], tolerance: int = 4) -> int:
    return int((np.abs(image - np.array(colour)).max(axis=2) <= tolerance).sum())


def distinct_colours(image: np.ndarray) -> int:
    return len(np.unique((image.astype(np.int64) * [65536, 256, 1]).sum(axis=2)))


def assert_not_blank(image: np.ndarray) -> None:
    assert image.std() > 20, "the screenshot is (nearly) one colour"
    assert distinct_colours(image) > 50, f"only {distinct_colours(image)} distinct colours"


@pytest.fixture(scope="module")
def report_run(spark, sample_tree, tmp_path_factory) -> Path:
    """A finished run (random weights, planted bad files, one class with a hostile name) with its report."""
    root = tmp_path_factory.mktemp("report-collection") / "fruits"
    shutil.copytree(sample_tree[0], root)
    for split in ("Training", "Test"):
        (root / split / "Apricot").rename(root / split / NASTY_CLASS)
    output = tmp_path_factory.mktemp("report-runs") / "out"
    run(RunConfig(input=str(root), output=str(output), weights="random", progress=False), spark)
    return output


@pytest.fixture(scope="module")
def report_page(report_run) -> Path:
    page = write_report(str(report_run))
    assert page == str(report_run / "report" / "index.html")
    return Path(page)


@pytest.mark.spark
def test_report_has_every_section_and_escapes_data(report_run, report_page):
    info = json.loads((report_run / "run.json").read_text())
    text = report_page.read_text(encoding="utf-8")
    page = parse(report_page)
    visible = " ".join(page.text)

    for section in ("overview", "errors", "variance", "scatter", "timings", "configuration"):
        assert section in page.ids
    assert "classifier" not in page.ids  # no `orchard train` yet
    assert "b" not in page.tags  # the class name's <b> is text, not markup
    assert html.escape(NASTY_CLASS, quote=True) in text and NASTY_CLASS not in text
    assert NASTY_CLASS in visible and "Odd Fruit é" in visible
    assert f"chosen k = {info['pca']['k']}" in visible
    assert "WARNING: features are NOT meaningful" in visible and "RANDOM weights" in visible
    for reason in ("empty file", "not a recognised image format", "corrupt or truncated image"):
        assert reason in visible
    assert f"{info['counts']['listed']:,} files listed" in visible
    assert info["counts"]["skipped_by_reason"] == {"not an image format orchard reads (.txt)": 1}  # README.txt
    assert "1 other files skipped (skipped/paths.csv: not an image format orchard reads (.txt) 1)" in visible
    for stage in info["timings"]:
        if stage not in ("total", "images_per_second", "worker_seconds"):
            assert f"stage {stage} (s)" in visible
    assert "worker inference (s, ms per image)" in visible
    assert info["fingerprint"] in visible and info["model"]["onnx_sha256"] in visible

    figure_links = sorted(link for link in page.links if link.startswith("figures/"))
    assert figure_links == sorted(f"figures/{name}.png" for name in FIGURES)
    assert len(page.images) == 4 and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert not any(tag in page.tags for tag in ("script", "link", "iframe"))
    assert "http://" not in text and "https://" not in text


@pytest.mark.spark
def test_figures_are_real_pngs_and_the_embedded_copies_match_the_files(report_page):
    page = parse(report_page)
    figures = report_page.parent / "figures"
    assert sorted(path.name for path in figures.iterdir()) == sorted(f"{name}.png" for name in FIGURES)
    for src, link in zip(page.images, [link for link in page.links if link.startswith("figures/")], strict=True):
        data = (report_page.parent / link).read_bytes()
        assert base64.b64decode(src.split(",", 1)[1]) == data
        image = Image.open(io.BytesIO(data))
        image.verify()
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 400, link
        assert pixels.std() > 10 and distinct_colours(pixels) > 20, link
    overview = np.asarray(Image.open(figures / "images_per_class.png").convert("RGB")).astype(np.int16)
    assert pixels_near(overview, TAB_BLUE, tolerance=0) > 1000  # the bars are drawn


@pytest.mark.e2e
def test_report_renders_in_headless_chromium(report_page, tmp_path):
    shot = screenshot(report_page, tmp_path / "profile", tmp_path / "page.png", 2400)
    assert shot.shape == (2400, 1280, 3)
    assert_not_blank(shot)
    assert pixels_near(shot, BANNER_RED) > 5000  # the random-weights banner
    assert pixels_near(shot, TAB_BLUE) > 1000  # the overview figure, drawn inside the first 2400 pixels
    loaded = images_loaded(report_page, tmp_path / "profile")
    assert loaded == {"embedded": ["ok"] * 4, "linked": ["ok"] * 4}


@pytest.mark.spark
def test_report_shows_the_classifier_with_its_confusion_heatmap(report_run, tmp_path):
    """A copy of the run gets the files `orchard train` writes; the CLI writes the page where --out says."""
    output = tmp_path / "trained"
    shutil.copytree(report_run, output, ignore=shutil.ignore_patterns("report"))
    pca = pd.read_parquet(output / "pca")
    classes = sorted(pca.loc[pca["split"] == "Test", "label"].unique())
    confusion = np.diag([3] * len(classes)) + np.roll(np.eye(len(classes), dtype=int), 1, axis=1)
    write_classifier_files(output, classes, confusion)

    destination = tmp_path / "pages" / "fruit report.html"
    assert main(["report", str(output), "--out", str(destination)]) == 0
    page = parse(destination)
    visible = " ".join(page.text)
    assert "classifier" in page.ids
    assert "accuracy 75.00%, macro F1 0.750" in visible
    assert visible.count(NASTY_CLASS) == 2  # overview and per-class tables
    assert "figures/confusion.png" in page.links and len(page.images) == 5
    assert not (output / "report").exists()

    heatmap = np.asarray(Image.open(destination.parent / "figures" / "confusion.png").convert("RGB")).astype(np.int16)
    diagonal = tuple(round(255 * channel) for channel in colormaps["Blues"](0.75)[:3])
    off_diagonal = tuple(round(255 * channel) for channel in colormaps["Blues"](0.25)[:3])
    assert pixels_near(heatmap, diagonal, tolerance=2) > 500
    assert pixels_near(heatmap, off_diagonal, tolerance=2) > 500

    shot = screenshot(destination, tmp_path / "profile", tmp_path / "page.png", 9000)
    assert_not_blank(shot)
    assert pixels_near(shot, diagonal) > 500 and pixels_near(shot, off_diagonal) > 500  # heatmap rendered
    assert images_loaded(destination, tmp_path / "profile") == {"embedded": ["ok"] * 5, "linked": ["ok"] * 5}


def write_classifier_files(output: Path, classes: list[str], confusion: np.ndarray) -> None:
    """classifier/metrics.json and classifier/confusion/ as `orchard train` writes them, from a confusion matrix."""
    folder = output / "classifier"
    (folder / "confusion").mkdir(parents=True)
    rows = [(classes[true], classes[predicted], int(confusion[true, predicted]))
            for true, predicted in zip(*np.nonzero(confusion), strict=True)]
    table = pa.table({"label": [r[0] for r in rows], "predicted": [r[1] for r in rows],
                      "count": pa.array([r[2] for r in rows], pa.int64())})
    pq.write_table(table, folder / "confusion" / "part-00000.parquet")
    support = confusion.sum(axis=1)
    recall = np.diag(confusion) / support
    precision = np.diag(confusion) / confusion.sum(axis=0)
    f1 = 2 * precision * recall / (precision + recall)
    metrics = {
        "algorithm": "logistic_regression", "features_used": "pca", "train_images": 53,
        "test_images": int(confusion.sum()), "accuracy": float(np.trace(confusion) / confusion.sum()),
        "macro_f1": float(f1.mean()), "classes": classes, "trained_at": "2026-11-22T00:00:00Z",
        "per_class": [{"label": label, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for label, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)],
    }
    (folder / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")


@pytest.mark.e2e
def test_report_reads_and_writes_an_output_on_s3(report_run, tmp_path):
    """The run folder copied to a real S3-compatible server (moto); the CLI reads it there and writes there."""
    import boto3

    with moto_server(tmp_path / "moto.log") as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="eu-west-1",
                              aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"])
        client.create_bucket(Bucket="runs", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        for path in sorted(report_run.rglob("*")):
            relative = path.relative_to(report_run)
            if path.is_file() and relative.parts[0] != "report":
                client.upload_file(str(path), "runs", f"fruits/{relative.as_posix()}")
        result = orchard("report", "s3://runs/fruits", "--s3-endpoint", endpoint, "--s3-region", "eu-west-1",
                         env=AWS_ENV, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.strip() == "wrote s3://runs/fruits/report/index.html"
        listing = client.list_objects_v2(Bucket="runs", Prefix="fruits/report/")
        keys = {entry["Key"] for entry in listing["Contents"] if not entry["Key"].endswith("/")}  # not folder markers
        assert keys == {"fruits/report/index.html",
                        *(f"fruits/report/figures/{name}.png" for name in FIGURES)}
        text = client.get_object(Bucket="runs", Key="fruits/report/index.html")["Body"].read().decode()
        assert html.escape(NASTY_CLASS, quote=True) in text and "chosen k = " in text


@pytest.mark.spark
def test_report_of_a_missing_or_unfinished_output_is_a_one_line_error(report_run, tmp_path, capsys):
    with pytest.raises(ConfigError, match="no orchard output"):
        write_report(str(tmp_path / "missing"))
    unfinished = tmp_path / "unfinished"
    shutil.copytree(report_run, unfinished, ignore=shutil.ignore_patterns("report"))
    (unfinished / "_SUCCESS").unlink()
    assert main(["report", str(unfinished)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "incomplete (no _SUCCESS)" in error
    assert not (unfinished / "report").exists()


@pytest.mark.pure
def test_scatter_sample_is_bounded_deterministic_and_independent_of_row_order():
    paths = pd.Series([f"file:/data/Training/class {i % 7}/{i}.jpg" for i in range(3 * MAX_SCATTER_POINTS)])
    chosen = sample_positions(paths, MAX_SCATTER_POINTS)
    assert len(chosen) == MAX_SCATTER_POINTS == len(set(chosen)) and np.all(np.diff(chosen) > 0)
    assert np.array_equal(chosen, sample_positions(paths, MAX_SCATTER_POINTS))
    shuffled = paths.sample(frac=1, random_state=3).reset_index(drop=True)
    assert set(shuffled[sample_positions(shuffled, MAX_SCATTER_POINTS)]) == set(paths[chosen])
    assert np.array_equal(sample_positions(paths[:10], MAX_SCATTER_POINTS), np.arange(10))


@pytest.mark.pure
def test_error_reasons_group_messages_that_differ_only_in_details():
    assert error_reason("not a recognised image format (starts with b'<html>')") == "not a recognised image format"
    assert error_reason("corrupt or truncated image: image file is truncated (69 bytes not processed)") == \
        "corrupt or truncated image"
    assert error_reason("file is 60000000 bytes, above the 50000000-byte limit (--max-bytes)") == \
        "file is N bytes, above the N-byte limit"
    assert error_reason("permission denied") == "permission denied"
