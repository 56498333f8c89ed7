"""Bytes -> RGB uint8 224x224 tensors. Pure functions, no Spark.

Measured per 100x100 JPEG on the 2-core reference machine (docs/architecture.md): decode simplejpeg
82 us vs Pillow 207 us, resize OpenCV 71 us vs Pillow 555 us. So JPEGs go through simplejpeg (with DCT
downscaling for big photos) and every resize through OpenCV; Pillow handles the other formats and the
JPEG colour spaces libjpeg-turbo cannot turn into RGB (CMYK/YCCK), with pillow-heif's opener for the
HEIC/HEIF photos iPhones take (measured on 2-vCPU AMD EPYC: 0.6 ms for 100x100, 534 ms for 12 MP; JPEG
0.2 / 175 ms). Scaling to [-1, 1] happens inside the ONNX graph, so tensors stay uint8 here.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import simplejpeg
from PIL import Image, ImageOps

IMAGE_SIZE = 224
_JPEG_MAGIC = b"\xff\xd8\xff"
_EXIF_ORIENTATION_TAG = 0x0112
_PILLOW_DEFAULT_PIXELS = Image.MAX_IMAGE_PIXELS
# ISO-BMFF brands of HEIF stills (bytes 8-12, after the 'ftyp' box type at 4-8)
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")

cv2.setNumThreads(1)  # one decode per task slot; threads here would fight ONNX Runtime's


class ImageError(Exception):
    """An image that cannot be used; `stage` says where it failed, the message why."""

    def __init__(self, stage: str, reason: str):
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """Per-image guards against decompression bombs and oversized files."""

    max_pixels: int = 64_000_000
    max_bytes: int = 50_000_000


@dataclass(frozen=True)
class Prepared:
    """A model-ready tensor and the original image size."""

    tensor: np.ndarray  # uint8, IMAGE_SIZE x IMAGE_SIZE x 3, RGB
    width: int
    height: int


def prepare(data: bytes, limits: Limits = Limits()) -> Prepared:
    """Decode image bytes and resize to the model input; raises ImageError with a readable reason."""
    if len(data) == 0:
        raise ImageError("decode", "empty file (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageError("decode", f"file is {len(data)} bytes, above the {limits.max_bytes}-byte limit")
    rgb, width, height = decode(data, limits)
    return Prepared(resize(rgb), width, height)


def decode(data: bytes, limits: Limits = Limits()) -> tuple[np.ndarray, int, int]:
    """Decode to RGB uint8 (EXIF orientation applied). Returns (pixels, original width, original height).

    The pixels may be smaller than the original when a large JPEG is decoded at a reduced DCT scale.
    """
    if data[:3] == _JPEG_MAGIC:
        decoded = _decode_jpeg_fast(data, limits)
        if decoded is not None:
            return decoded
    return _decode_with_pillow(data, limits)


def resize(rgb: np.ndarray) -> np.ndarray:
    """Bilinear resize to IMAGE_SIZE x IMAGE_SIZE (aspect ratio not kept, as in the reference pipeline)."""
    if rgb.shape[0] == IMAGE_SIZE and rgb.shape[1] == IMAGE_SIZE:
        return np.ascontiguousarray(rgb)
    return cv2.resize(rgb, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_LINEAR)


def _check_pixels(width: int, height: int, limits: Limits) -> None:
    if width < 1 or height < 1:
        raise ImageError("decode", f"image has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise ImageError(
            "decode",
            f"image is {width}x{height} = {width * height} pixels, above the {limits.max_pixels}-pixel "
            "limit (decompression-bomb guard; raise --max-pixels to accept it)",
        )


def _decode_jpeg_fast(data: bytes, limits: Limits) -> tuple[np.ndarray, int, int] | None:
    """simplejpeg path; None when libjpeg-turbo cannot give RGB (CMYK/YCCK) or rejects the file."""
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colorspace not in ("RGB", "YCbCr", "Gray"):
        return None
    _check_pixels(width, height, limits)
    try:
        # min_height/min_width let libjpeg-turbo decode big photos at 1/2..1/8 scale, never below 224.
        rgb = simplejpeg.decode_jpeg(
            data, colorspace="RGB", min_height=IMAGE_SIZE, min_width=IMAGE_SIZE
        )
    except ValueError:
        return None  # Pillow gives the readable reason (truncated, corrupt...)
    return apply_orientation(rgb, jpeg_orientation(data)), width, height


def is_heif(data: bytes) -> bool:
    """True for HEIC/HEIF bytes (an ISO-BMFF 'ftyp' box with a HEIF brand)."""
    return data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS


@lru_cache(maxsize=1)
def _register_heif() -> None:
    """Teach Pillow HEIF, once per process and only when a HEIF file shows up (the import costs ~85 ms)."""
    import pillow_heif

    pillow_heif.register_heif_opener()


def _decode_with_pillow(data: bytes, limits: Limits) -> tuple[np.ndarray, int, int]:
    if is_heif(data):
        _register_heif()
    # Pillow's process-wide guard may only rise (for a --max-pixels above its default), never fall: one
    # caller's lower limit must not refuse another's images. _check_pixels applies this call's own limit.
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, limits.max_pixels, _PILLOW_DEFAULT_PIXELS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            _check_pixels(width, height, limits)
            image.load()
            image = ImageOps.exif_transpose(image)
            rgb = to_rgb(image)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("decode", f"refused by the decompression-bomb guard (raise --max-pixels to accept it): "
                                   f"{exc}") from None
    except Image.UnidentifiedImageError:
        raise ImageError("decode", f"not a recognised image format (starts with {data[:8]!r})") from None
    except (OSError, SyntaxError, ValueError, Warning) as exc:
        raise ImageError("decode", f"corrupt or truncated image: {exc}") from None
    return rgb, width, height


def to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> RGB uint8. Alpha is composited on white; 16-bit keeps its top 8 bits."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image)
        shift = 8 if array.max(initial=0) > 255 or mode.startswith("I;16") else 0
        gray = (array.astype(np.uint32) >> shift).clip(0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode == "F":
        gray = np.asarray(image).clip(0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def jpeg_orientation(data: bytes) -> int:
    """EXIF orientation (1-8) of a JPEG, read from its APP1 segment without decoding pixels."""
    position, size = 2, len(data)
    while position + 4 <= size:
        if data[position] != 0xFF:
            return 1
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no EXIF before pixels
            return 1
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            position += 2
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        segment = data[position + 4 : position + 2 + length]
        if marker == 0xE1 and segment[:6] == b"Exif\x00\x00":
            return _tiff_orientation(segment[6:])
        position += 2 + length
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    byte_order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if byte_order is None or len(tiff) < 8:
        return 1
    offset = int.from_bytes(tiff[4:8], byte_order)
    if offset + 2 > len(tiff):
        return 1
    for index in range(int.from_bytes(tiff[offset : offset + 2], byte_order)):
        entry = offset + 2 + 12 * index
        if entry + 12 > len(tiff):
            return 1
        if int.from_bytes(tiff[entry : entry + 2], byte_order) == _EXIF_ORIENTATION_TAG:
            value = int.from_bytes(tiff[entry + 8 : entry + 10], byte_order)
            return value if 1 <= value <= 8 else 1
    return 1


def apply_orientation(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate/flip pixels as EXIF orientation says (same result as Pillow's exif_transpose)."""
    transforms = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
        8: lambda a: np.rot90(a, 1),
    }
    transform = transforms.get(orientation)
    return rgb if transform is None else np.ascontiguousarray(transform(rgb))
