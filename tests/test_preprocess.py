"""Decode/resize without Spark: formats, colour modes, EXIF orientation, guards."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from conftest import jpeg_bytes, textured
from PIL import Image, ImageOps

from orchard.preprocess import IMAGE_SIZE, ImageError, Limits, decode, jpeg_orientation, prepare

pytestmark = pytest.mark.pure


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_jpeg_becomes_224_rgb_uint8():
    prepared = prepare(jpeg_bytes(textured(100, 100)))
    assert prepared.tensor.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert prepared.tensor.dtype == np.uint8
    assert (prepared.width, prepared.height) == (100, 100)
    assert prepared.tensor.std() > 10  # real content, not a blank


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = jpeg_bytes(textured(60, 90), exif=exif)
    assert jpeg_orientation(data) == orientation
    ours, _, _ = decode(data)
    reference = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert ours.shape == reference.shape
    assert np.abs(ours.astype(int) - reference.astype(int)).mean() < 1.0


def test_grayscale_jpeg_has_three_equal_channels():
    rgb, _, _ = decode(jpeg_bytes(textured(50, 50)[:, :, 1]))
    assert rgb.shape == (50, 50, 3)
    assert np.array_equal(rgb[:, :, 0], rgb[:, :, 2])


def test_cmyk_jpeg_is_converted():
    picture = textured(50, 50)
    buffer = io.BytesIO()
    Image.fromarray(picture).convert("CMYK").save(buffer, "JPEG", quality=95)
    rgb, _, _ = decode(buffer.getvalue())
    assert rgb.shape == (50, 50, 3)
    assert np.abs(rgb.astype(int) - picture.astype(int)).mean() < 12


def test_alpha_is_composited_on_white():
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[:, :10] = [255, 0, 0, 255]  # opaque red left, fully transparent right
    rgb, _, _ = decode(png_bytes(Image.fromarray(rgba, "RGBA")))
    assert rgb[5, 2].tolist() == [255, 0, 0]
    assert rgb[5, 15].tolist() == [255, 255, 255]


def test_sixteen_bit_png_keeps_the_top_eight_bits():
    array = (np.arange(400, dtype=np.uint16).reshape(20, 20) * 160)
    rgb, _, _ = decode(png_bytes(Image.fromarray(array)))
    assert rgb[:, :, 0].astype(int).tolist() == (array >> 8).astype(int).tolist()


def test_palette_gif_with_transparency():
    image = Image.fromarray(textured(30, 30)).convert("P")
    image.info["transparency"] = 0
    buffer = io.BytesIO()
    image.save(buffer, "GIF", transparency=0)
    rgb, width, height = decode(buffer.getvalue())
    assert rgb.shape == (30, 30, 3) and (width, height) == (30, 30)


def test_big_jpeg_is_decoded_at_reduced_scale_but_reports_its_size():
    data = jpeg_bytes(textured(1600, 2000))
    rgb, width, height = decode(data)
    assert (width, height) == (2000, 1600)
    assert IMAGE_SIZE <= rgb.shape[0] < 1600 and IMAGE_SIZE <= rgb.shape[1] < 2000
    assert prepare(data).tensor.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)


def _with_jpeg_size(data: bytes, height: int, width: int) -> bytes:
    """Rewrite the SOF0 frame size of a baseline JPEG (a bomb: tiny file, huge claimed size)."""
    sof = data.index(b"\xff\xc0")
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


def test_decompression_bomb_is_refused_before_decoding():
    bomb = _with_jpeg_size(jpeg_bytes(textured(16, 16)), 10000, 10000)
    with pytest.raises(ImageError, match="decompression-bomb guard") as caught:
        prepare(bomb)
    assert caught.value.stage == "decode"
    png_bomb = png_bytes(Image.new("1", (10000, 10000)))
    with pytest.raises(ImageError, match="pixels"):
        prepare(png_bomb)


def test_limits_are_configurable():
    data = jpeg_bytes(textured(100, 100))
    with pytest.raises(ImageError, match="9999-pixel"):
        prepare(data, Limits(max_pixels=9_999))
    with pytest.raises(ImageError, match="byte limit"):
        prepare(data, Limits(max_bytes=100))


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"hello, world" * 10, "not a recognised image"),
    (b"<html></html>", "not a recognised image"),
])
def test_bad_bytes_give_a_readable_reason(data, reason):
    with pytest.raises(ImageError, match=reason) as caught:
        prepare(data)
    assert caught.value.stage == "decode"


def test_truncated_jpeg_is_an_error_not_grey_pixels():
    data = jpeg_bytes(textured(100, 100))
    with pytest.raises(ImageError, match="truncated"):
        prepare(data[: len(data) // 2])


def heic_bytes(picture: np.ndarray, orientation: int = 1) -> bytes:
    """A real HEIC file, encoded by libheif (x265) through pillow-heif."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "HEIF", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", [1, 6])
def test_heic_photos_decode_with_orientation_like_the_same_jpeg(orientation):
    picture = textured(60, 90)
    exif = Image.Exif()
    exif[0x0112] = orientation
    heic, jpeg = heic_bytes(picture, orientation), jpeg_bytes(picture, exif=exif)
    ours, _, _ = decode(heic)
    reference, _, _ = decode(jpeg)
    assert ours.shape == reference.shape == ((60, 90, 3) if orientation == 1 else (90, 60, 3))
    difference = np.abs(ours.astype(int) - reference.astype(int)).mean()  # two lossy codecs of one picture
    assert difference < 12
    assert difference < np.abs(ours.astype(int) - reference[::-1, ::-1].astype(int)).mean() / 2  # orientation counts


def test_heic_pixel_guard_applies_before_decoding():
    with pytest.raises(ImageError, match="decompression-bomb guard"):
        prepare(heic_bytes(textured(60, 90)), Limits(max_pixels=1000))
