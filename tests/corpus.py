"""A generated corpus of bad and odd image files (never downloaded), each with its expected outcome.

Expected outcome per relative path: "ok" (featurised), a stage name ("list", "read", "decode") for an
error row, or "hidden" (a name starting with '.': skipped with that reason, never featurised).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from conftest import jpeg_bytes, textured
from PIL import Image


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def make_bad_corpus(root: Path) -> dict[str, str]:
    picture = textured(90, 120, seed=5)
    rgb = Image.fromarray(picture)
    good = jpeg_bytes(picture)
    expected: dict[str, str] = {}

    def put(rel: str, data: bytes, outcome: str) -> Path:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expected[rel] = outcome
        return path

    rng = np.random.default_rng(0)
    put("Training/Broken/zero-byte.jpg", b"", "decode")
    put("Training/Broken/truncated.jpg", good[: len(good) // 3], "decode")
    put("Training/Broken/corrupt-header.jpg", b"\xff\xd8\xff\xe0" + rng.bytes(600), "decode")
    put("Training/Broken/random-bytes.jpg", rng.bytes(2048), "decode")
    put("Training/Broken/saved-page.jpg", b"<!doctype html><html><body>Not Found</body></html>", "decode")
    rgba = np.dstack([picture, np.full(picture.shape[:2], 90, np.uint8)])
    put("Training/Modes/alpha.png", _save(Image.fromarray(rgba, "RGBA"), "PNG"), "ok")
    put("Training/Modes/sixteen-bit.png", _save(Image.fromarray(
        picture[:, :, 0].astype(np.uint16) * 257), "PNG"), "ok")
    put("Training/Modes/palette.gif", _save(rgb.convert("P"), "GIF"), "ok")
    frames = [Image.fromarray(np.roll(picture, shift, axis=1)).convert("P") for shift in (0, 20, 40)]
    put("Training/Modes/animated.gif", _save(frames[0], "GIF", save_all=True, append_images=frames[1:],
                                             duration=50, loop=0), "ok")
    put("Training/Modes/cmyk.jpg", _save(rgb.convert("CMYK"), "JPEG", quality=90), "ok")
    put("Training/Modes/progressive.jpg", _save(rgb, "JPEG", quality=90, progressive=True), "ok")
    put("Training/Modes/grayscale.jpg", jpeg_bytes(picture[:, :, 1]), "ok")
    put("Training/Modes/one-pixel.png", _save(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"), "ok")
    put("Training/Modes/bomb-10000x10000.png", _save(Image.new("1", (10000, 10000)), "PNG"), "decode")
    exif = Image.Exif()
    exif[0x0112] = 8
    put("Training/Modes/exif-rotated.jpg", jpeg_bytes(picture, exif=exif), "ok")
    put("Training/Formats/image.webp", _save(rgb, "WEBP"), "ok")
    put("Training/Formats/image.tif", _save(rgb, "TIFF"), "ok")
    put("Training/Formats/image.bmp", _save(rgb, "BMP"), "ok")
    put("Training/Formats/UPPER.JPEG", good, "ok")
    put("Training/Formats/png-named.jpg", _save(rgb, "PNG"), "ok")
    put("Training/Formats/jpeg-named.png", good, "ok")
    target = put("Training/Links/original.jpg", good, "ok")
    os.symlink(target, root / "Training/Links/symlink-to-image.jpg")
    expected["Training/Links/symlink-to-image.jpg"] = "ok"
    os.symlink("loop.jpg", root / "Training/Links/loop.jpg")
    expected["Training/Links/loop.jpg"] = "list"
    os.symlink("/nonexistent/elsewhere.jpg", root / "Training/Links/dangling.jpg")
    expected["Training/Links/dangling.jpg"] = "list"
    os.symlink("..", root / "Training/Links/back-to-parent")  # a directory cycle: listed once, not 40 times
    locked = put("Training/Locked/unreadable.jpg", good, "ok" if os.geteuid() == 0 else "read")
    locked.chmod(0)  # root reads it anyway: then it is featurised, like any readable file
    put("Training/Äpple 'red' \"quoted\"/naïve file name.jpg", good, "ok")
    put("Training/Hidden/.hidden.jpg", good, "hidden")
    put("Training/Hidden/.DS_Store", b"\x00\x00\x00\x01Bud1", "hidden")
    put("Training/Hidden/_underscore.jpg", good, "ok")  # hidden from Hadoop's listing, featurised by orchard
    put("Training/Apple/same.jpg", good, "ok")  # the same image under two classes: both rows kept
    put("Training/Pear/same.jpg", good, "ok")
    put("Training/Vanishing/gone-before-reading.jpg", good, "read")  # deleted after listing by the test
    return expected
