"""The photo-to-fruit HTTP service and its web page: FastAPI over a loaded `Predictor` (no Spark).

    GET  /                  the fruit-recognition page (web/index.html, app.js, style.css; no CDN)
    POST /predict           multipart upload `file` (an image), optional `top_k`, `similar`: the most likely
                            classes and, when `similar` > 0, the nearest collection images (by id)
    GET  /thumbnails/{id}   a small JPEG of collection image `id` (0 .. collection_images - 1), never by path
    GET  /health            liveness and what is loaded
    GET  /classes           the classes the model knows
    GET  /docs              OpenAPI UI (schema at /openapi.json)

Bad uploads get a 4xx with a JSON `detail`: 413 over the size limit (checked from Content-Length before
the body is read, and again while it streams), 408 when the body takes longer than `body_timeout_s` to
arrive, 415 when the part is not declared as an image, 422 when the bytes do not decode. With an API key,
every route but the page, /health and the docs needs the `X-API-Key` header (401 otherwise). Uploads are
rate-limited per client address (429 with Retry-After).

Uploads stay in memory: the multipart body is parsed here (python-multipart, within the byte limit), not by
Starlette's form parser, whose UploadFile spools parts over 1 MB to a temporary file. Nothing logs a photo
or its file name. Inference runs in FastAPI's thread pool; ONNX Runtime sessions are thread-safe.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import os
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from typing import Annotated

from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from orchard import __version__
from orchard.errors import ConfigError
from orchard.predict import Predictor
from orchard.preprocess import ImageError

DEFAULT_MAX_UPLOAD_BYTES = 10 * 2**20
MULTIPART_OVERHEAD_BYTES = 16 * 2**10  # boundaries and part headers around the file
DEFAULT_RATE_PER_MINUTE = 120  # POSTs per client address; 0 turns the limit off
DEFAULT_BODY_TIMEOUT_S = 30.0  # longest a request body may take to arrive (slow-upload guard)
KEEP_ALIVE_TIMEOUT_S = 5  # uvicorn closes idle keep-alive connections after this
THUMBNAIL_PIXELS = 160  # longest side of a thumbnail
THUMBNAIL_CACHE = 2048  # thumbnails kept in memory (~5 KB each)
MAX_SIMILAR = 20
API_KEY_HEADER = "x-api-key"
API_KEY_ENV = "ORCHARD_API_KEY"
PUBLIC_PATHS = frozenset({"/", "/app.js", "/style.css", "/favicon.ico", "/health", "/docs", "/openapi.json"})
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
PAGE_FILES = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript"),
              "/style.css": ("style.css", "text/css")}
# the page loads nothing but itself: its script, its style sheet, and blob: URLs for photos and thumbnails
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
               "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")


class ClassProbability(BaseModel):
    """One class and its probability."""

    label: str
    probability: float


class SimilarImage(BaseModel):
    """A collection image near the photo: its id (for /thumbnails/{id}), class and PCA-space distance."""

    id: int
    label: str
    distance: float


class PredictResponse(BaseModel):
    """The most likely classes for one uploaded photo, most likely first, and (if asked) similar images."""

    filename: str | None
    predictions: list[ClassProbability]
    similar: list[SimilarImage] = []


class Health(BaseModel):
    """What the service has loaded."""

    status: str
    classes: int
    collection_images: int
    features_used: str
    weights: str
    meaningful_weights: bool
    orchard_version: str
    max_upload_bytes: int
    api_key_required: bool


class Classes(BaseModel):
    """The classes the model can answer with."""

    classes: list[str]


class ErrorBody(BaseModel):
    """Why a request was refused."""

    detail: str


@dataclass(frozen=True)
class Settings:
    """How the service guards itself: upload size, API key (never shown), rate limit, slow-body bound."""

    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    api_key: str | None = field(default=None, repr=False)
    rate_per_minute: int = DEFAULT_RATE_PER_MINUTE
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S


class UploadTooLarge(HTTPException):
    """413 raised while the request body streams in (FastAPI passes HTTPExceptions through form parsing)."""

    def __init__(self, limit: int):
        super().__init__(413, f"upload larger than the {limit}-byte limit")


class BodyTooSlow(HTTPException):
    """408 raised when a request body has not arrived within the time bound."""

    def __init__(self, seconds: float):
        super().__init__(408, f"the upload took longer than {seconds:g} s to arrive")


class BodyLimit:
    """ASGI middleware: 413 for a body that cannot hold an upload of at most `max_upload_bytes` plus the
    multipart framing, judged from Content-Length or, for chunked bodies, while they stream in; 408 for a
    body still arriving `body_timeout_s` after the request started."""

    def __init__(self, app, max_upload_bytes: int, body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S):
        self.app, self.max_upload_bytes, self.body_timeout_s = app, max_upload_bytes, body_timeout_s
        self.limit = max_upload_bytes + MULTIPART_OVERHEAD_BYTES

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _refuse(scope, receive, send, 413, UploadTooLarge(self.max_upload_bytes).detail)
            return
        received, deadline = 0, time.monotonic() + self.body_timeout_s

        async def counted_receive():
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
            except TimeoutError:
                raise BodyTooSlow(self.body_timeout_s) from None
            received += len(message.get("body", b""))
            if received > self.limit:
                raise UploadTooLarge(self.max_upload_bytes)
            return message

        await self.app(scope, counted_receive, send)


class Guard:
    """ASGI middleware: per-client token bucket on POSTs (429 + Retry-After), then the API key (401)."""

    def __init__(self, app, api_key: str | None, rate_per_minute: int):
        self.app, self.api_key, self.rate = app, api_key, rate_per_minute
        self.buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, last refill)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.rate and scope["method"] == "POST":
            wait = self.take(scope["client"][0] if scope.get("client") else "?")
            if wait:
                await _refuse(scope, receive, send, 429, f"too many uploads from this address: at most "
                              f"{self.rate} a minute, try again in {wait} s", {"retry-after": str(wait)})
                return
        if self.api_key and scope["path"] not in PUBLIC_PATHS:
            given = dict(scope["headers"]).get(API_KEY_HEADER.encode(), b"")
            if not hmac.compare_digest(given, self.api_key.encode()):
                await _refuse(scope, receive, send, 401, "this service needs an API key: send it in the "
                              "X-API-Key header (the page asks for it)")
                return
        await self.app(scope, receive, send)

    def take(self, client: str) -> int:
        """Take one token from `client`'s bucket; 0 when allowed, else the seconds until one is back."""
        now = time.monotonic()
        if len(self.buckets) > 10_000:  # forget idle clients (full buckets) so memory stays bounded
            self.buckets = {key: value for key, value in self.buckets.items() if now - value[1] < 60}
        tokens, last = self.buckets.get(client, (float(self.rate), now))
        tokens = min(float(self.rate), tokens + (now - last) * self.rate / 60)
        if tokens < 1:
            self.buckets[client] = (tokens, now)
            return max(1, math.ceil((1 - tokens) * 60 / self.rate))
        self.buckets[client] = (tokens - 1, now)
        return 0


async def _refuse(scope, receive, send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    await JSONResponse({"detail": detail}, status_code=status, headers=headers)(scope, receive, send)


async def read_upload(request: Request, field_name: str = "file") -> tuple[bytes, str | None, str]:
    """The `field_name` part of a multipart body, read in memory: (bytes, file name, content type).

    Only that part's bytes are kept; the body is bounded by BodyLimit before it gets here.
    """
    from python_multipart.multipart import MultipartParser, parse_options_header

    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or b"boundary" not in options:
        _missing_file(field_name, "expected a multipart/form-data body")
    parts: list[dict] = []
    header: list[bytes] = [b"", b""]

    def on_part_begin() -> None:
        parts.append({"headers": {}, "data": bytearray()})

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def on_header_end() -> None:
        parts[-1]["headers"][header[0].lower()] = header[1]
        header[0], header[1] = b"", b""

    def on_headers_finished() -> None:
        disposition = parse_options_header(parts[-1]["headers"].get(b"content-disposition", b""))[1]
        parts[-1]["name"], parts[-1]["filename"] = disposition.get(b"name"), disposition.get(b"filename")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if parts[-1]["name"] == field_name.encode():
            parts[-1]["data"] += data[start:end]

    parser = MultipartParser(options[b"boundary"], {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished, "on_part_data": on_part_data})
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except ValueError as error:  # python-multipart's parse errors subclass ValueError
        _missing_file(field_name, f"malformed multipart body: {error}")
    upload = next((part for part in parts if part.get("name") == field_name.encode()
                   and part.get("filename") is not None), None)
    if upload is None:
        _missing_file(field_name, "Field required")
    content_type = parse_options_header(upload["headers"].get(b"content-type", b""))[0].decode("latin-1")
    return bytes(upload["data"]), upload["filename"].decode("utf-8", "replace"), content_type.lower()


def _missing_file(field_name: str, message: str):
    raise RequestValidationError([{"type": "missing", "loc": ("body", field_name), "msg": message,
                                   "input": None}])


def thumbnail(data: bytes, limits) -> bytes:
    """A JPEG at most THUMBNAIL_PIXELS on its longest side, EXIF orientation applied (preprocess.decode)."""
    import cv2
    import simplejpeg

    from orchard.preprocess import decode

    rgb = decode(data, limits)[0]
    scale = THUMBNAIL_PIXELS / max(rgb.shape[:2])
    if scale < 1:
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return simplejpeg.encode_jpeg(rgb, quality=85, colorspace="RGB")


def create_app(predictor: Predictor, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               settings: Settings | None = None) -> FastAPI:
    """The FastAPI application serving `predictor` and its page; uploads above `max_upload_bytes` get 413."""
    settings = settings or Settings(max_upload_bytes=max_upload_bytes)
    limit = settings.max_upload_bytes
    app = FastAPI(title="orchard", version=__version__,
                  description="Which fruit is in this photo? MobileNetV2 features (ONNX Runtime), the run's PCA "
                              "and a logistic regression trained with `orchard train`.")
    app.add_middleware(BodyLimit, max_upload_bytes=limit, body_timeout_s=settings.body_timeout_s)
    app.add_middleware(Guard, api_key=settings.api_key, rate_per_minute=settings.rate_per_minute)
    errors = {status: {"model": ErrorBody, "description": text} for status, text in (
        (401, "API key missing or wrong"), (408, "the body arrived too slowly"), (413, "upload over the size limit"),
        (415, "not declared as an image"), (422, "not a decodable image"), (429, "too many uploads"))}
    upload_body = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"], "properties": {"file": {
            "type": "string", "format": "binary", "description": "the photo (JPEG, HEIC, PNG, WebP, ...)"}}}}}}}
    page = {route: (files("orchard.web").joinpath(name).read_bytes(), kind)
            for route, (name, kind) in PAGE_FILES.items()}

    def page_route(route: str):
        content, kind = page[route]
        headers = {"content-security-policy": PAGE_POLICY, "x-content-type-options": "nosniff",
                   "cache-control": "no-cache"}
        return lambda: Response(content, media_type=kind, headers=headers)

    for route in PAGE_FILES:
        app.add_api_route(route, page_route(route), methods=["GET"], include_in_schema=False)

    @lru_cache(maxsize=THUMBNAIL_CACHE)
    def cached_thumbnail(index: int) -> bytes:
        return thumbnail(predictor.collection_bytes(index), predictor.limits)

    @app.get("/health")
    def health() -> Health:
        """Liveness, and what is loaded."""
        model = predictor.manifest["model"]
        return Health(status="ok", classes=len(predictor.classes), collection_images=predictor.collection_size,
                      features_used=predictor.manifest["features_used"], weights=model["description"],
                      meaningful_weights=model["meaningful"], orchard_version=__version__, max_upload_bytes=limit,
                      api_key_required=settings.api_key is not None)

    @app.get("/classes")
    def classes() -> Classes:
        """The classes the model can answer with."""
        return Classes(classes=predictor.classes)

    @app.post("/predict", responses=errors, openapi_extra=upload_body)
    async def predict(request: Request,
                      top_k: Annotated[int, Query(ge=1, description="how many classes to return")] = 5,
                      similar: Annotated[int, Query(ge=0, le=MAX_SIMILAR,
                                                    description="how many similar collection images")] = 0
                      ) -> PredictResponse:
        """The `top_k` most likely classes of an uploaded photo, with probabilities, and `similar` neighbours."""
        data, filename, content_type = await read_upload(request)
        if not content_type.startswith("image/"):
            raise HTTPException(415, f"expected an image upload (image/jpeg, image/png, ...), got "
                                     f"{content_type or 'no content type'}")
        if len(data) > limit:
            raise UploadTooLarge(limit)
        try:
            best, neighbours = await asyncio.to_thread(predictor.predict_and_similar, data, top_k, similar)
        except ImageError as error:
            raise HTTPException(422, f"cannot use this image: {error.reason}") from None
        return PredictResponse(filename=filename,
                               predictions=[ClassProbability(label=name, probability=p) for name, p in best],
                               similar=[SimilarImage(id=i, label=label, distance=d) for i, label, d in neighbours])

    @app.get("/thumbnails/{image_id}", response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}, "description": "a JPEG thumbnail"},
                        404: {"model": ErrorBody, "description": "no such collection image"},
                        422: {"model": ErrorBody, "description": "the collection image cannot be read"}})
    async def thumbnails(image_id: Annotated[int, Path(description="collection image id, from /predict")]
                         ) -> Response:
        """A JPEG thumbnail (longest side 160 px) of collection image `image_id`."""
        if not 0 <= image_id < predictor.collection_size:
            raise HTTPException(404, f"no collection image {image_id}: ids run from 0 to "
                                     f"{predictor.collection_size - 1}")
        try:
            content = await asyncio.to_thread(cached_thumbnail, image_id)
        except ImageError as error:
            raise HTTPException(422, f"collection image {image_id} cannot be shown: {error.reason}") from None
        return Response(content, media_type="image/jpeg", headers={"cache-control": "private, max-age=86400"})

    return app


def check_exposure(host: str, api_key: str | None, insecure: bool) -> None:
    """Refuse to listen beyond loopback without an API key, unless `insecure` (then warn on stderr)."""
    if host in LOOPBACK_HOSTS or api_key:
        return
    if not insecure:
        raise ConfigError(f"--host {host} makes the service reachable from other machines: give an API key "
                          f"(--api-key or {API_KEY_ENV}) or pass --insecure to serve without one")
    print(f"WARNING: serving on {host} without an API key (--insecure): anyone who can reach this port can "
          "upload photos", file=sys.stderr, flush=True)


def app_from_env() -> FastAPI:
    """App factory for `uvicorn --factory orchard.serve:app_from_env`, configured by environment variables:
    ORCHARD_MODEL (required), ORCHARD_API_KEY, ORCHARD_MAX_UPLOAD_MB, ORCHARD_RATE_PER_MINUTE,
    ORCHARD_BODY_TIMEOUT_S, ORCHARD_THREADS (ONNX Runtime threads per worker)."""
    model = os.environ.get("ORCHARD_MODEL")
    if not model:
        raise ConfigError("set ORCHARD_MODEL to the run output (or predictor folder) to serve")
    threads = os.environ.get("ORCHARD_THREADS")
    predictor = Predictor.load(model, int(threads) if threads else None)
    return create_app(predictor, settings=Settings(
        max_upload_bytes=int(float(os.environ.get("ORCHARD_MAX_UPLOAD_MB", "10")) * 2**20),
        api_key=os.environ.get(API_KEY_ENV) or None,
        rate_per_minute=int(os.environ.get("ORCHARD_RATE_PER_MINUTE", DEFAULT_RATE_PER_MINUTE)),
        body_timeout_s=float(os.environ.get("ORCHARD_BODY_TIMEOUT_S", DEFAULT_BODY_TIMEOUT_S))))


def serve(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000,
          max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, settings: Settings | None = None) -> None:
    """Run the service with uvicorn until interrupted (its access log has method, path, status: no bodies)."""
    import uvicorn

    uvicorn.run(create_app(predictor, max_upload_bytes, settings), host=host, port=port, log_level="info",
                timeout_keep_alive=KEEP_ALIVE_TIMEOUT_S)
