"""The fruit-recognition page of `orchard serve`, driven in real headless Chromium (Debian's /usr/bin/chromium
through Playwright's driver; no browser download) against a real `orchard serve` process with an API key.

Screenshots at 390x844 (phone) and 1280x800 (desktop) go to the test's tmp folder, and to docs/ when
ORCHARD_UPDATE_SCREENSHOTS=1 (that is how docs/app-390x844.png and docs/app-1280x800.png are made).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from infra import wait_for
from test_serve import model, photo, serve_load  # noqa: F401  (the trained model fixture, shared helpers)

from orchard.predict import Predictor

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]  # as tests/test_report.py
KEY = "page-test-key-never-shown"
DOCS = Path(__file__).resolve().parents[1] / "docs"
SIZES = ((390, 844), (1280, 800))
MAX_UPLOAD_MB = 0.05


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]' (playwright)")
    assert Path(CHROMIUM).exists(), "headless Chromium is required for this test: apt-get install -y chromium"
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


def no_horizontal_overflow(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def message(page) -> str:
    page.wait_for_selector("#message:not([hidden])", timeout=30_000)
    return page.inner_text("#message")


def says(page, text: str) -> None:
    """Wait until the page's message box shows `text` (locators: the page's CSP forbids eval'd predicates)."""
    page.locator("#message", has_text=text).wait_for(timeout=30_000)


def until(page, expression: str) -> None:
    """Poll a JavaScript expression (page.evaluate goes through DevTools, so the CSP does not block it)."""
    wait_for(lambda: page.evaluate(expression), 30, expression)


def test_the_page_identifies_a_photo_and_explains_mistakes(browser, model, tmp_path):  # noqa: F811
    image = photo(model, 1)
    expected = Predictor.load(str(model)).predict([image], top_k=1)[0][0][0]
    log = tmp_path / "serve.log"
    server = serve_load.served(model, serve_load.free_port(), log, "--max-upload-mb", str(MAX_UPLOAD_MB),
                               "--api-key", KEY)
    base = server.__enter__()
    stopped = False
    try:
        page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
        page.goto(f"{base}/")
        page.wait_for_selector("#key-form:not([hidden])")  # no key yet: the page asks for it
        assert "random weights" in page.inner_text("#banner")  # Health says the weights are not meaningful
        page.fill("#key", "wrong")
        page.click("#key-form button")
        assert "not accepted" in message(page)
        page.goto(f"{base}/#key={KEY}")  # a link with the key in the fragment (never sent to the server)
        page.reload()
        page.wait_for_selector("#key-form", state="hidden")
        assert KEY not in page.url

        page.set_input_files("#file", str(image))
        page.wait_for_selector("body[data-state=done]", timeout=60_000)
        assert page.inner_text("#answer") == expected
        bars = page.locator("#predictions li")
        assert bars.count() == 3 and page.locator("#message").is_hidden()  # 3 classes in this model
        thumbnails = page.locator("#similar img")
        assert thumbnails.count() == 6
        until(page, "[...document.querySelectorAll('#similar img')].every(i => i.complete)")
        widths = page.eval_on_selector_all("#similar img", "images => images.map(i => i.naturalWidth)")
        assert all(width > 0 for width in widths), widths
        captions = page.locator("#similar li span").all_inner_texts()
        assert all(caption in Predictor.load(str(model)).classes for caption in captions)
        until(page, "document.getElementById('preview').naturalWidth > 0")  # the photo is shown
        for width, height in SIZES:
            page.set_viewport_size({"width": width, "height": height})
            assert no_horizontal_overflow(page), f"the page overflows horizontally at {width}x{height}"
            shot = tmp_path / f"app-{width}x{height}.png"
            page.screenshot(path=str(shot), full_page=False)
            assert shot.stat().st_size > 10_000
            if os.environ.get("ORCHARD_UPDATE_SCREENSHOTS") == "1":
                shutil.copyfile(shot, DOCS / shot.name)
        page.set_viewport_size({"width": 390, "height": 844})

        text = tmp_path / "notes.txt"
        text.write_text("not a photo")
        page.set_input_files("#file", str(text))
        assert "not a photo" in message(page)
        garbage = tmp_path / "broken.jpg"
        garbage.write_bytes(b"\xff\xd8\xff not really a jpeg" * 10)
        page.set_input_files("#file", str(garbage))
        says(page, "could not be read")
        big = tmp_path / "big.jpg"
        big.write_bytes(image.read_bytes() + bytes(int(MAX_UPLOAD_MB * 2**20)))
        page.set_input_files("#file", str(big))
        says(page, "too large")
        assert no_horizontal_overflow(page)

        server.__exit__(None, None, None)  # the service goes away: a real network error
        stopped = True
        page.set_input_files("#file", str(image))
        says(page, "Network error")
        page.close()
    finally:
        if not stopped:
            server.__exit__(None, None, None)
    served_log = log.read_text()
    assert "GET /thumbnails/" in served_log and KEY not in served_log and image.name not in served_log
