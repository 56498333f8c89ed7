"""The photo-to-fruit HTTP service: FastAPI over a loaded `Predictor` (no Spark).

    POST /predict   multipart upload `file` (an image), optional `top_k`: the most likely classes
    GET  /health    liveness and what is loaded
    GET  /classes   the classes the model knows
    GET  /docs      OpenAPI UI (schema at /openapi.json)

Bad uploads get a 4xx with a JSON `detail`: 413 over the size limit (checked from Content-Length before
the body is read, and again while it streams), 415 when the part is not declared as an image, 422 when
the bytes do not decode. Inference runs in FastAPI's thread pool; ONNX Runtime sessions are thread-safe.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from orchard import __version__
from orchard.predict import Predictor
from orchard.preprocess import ImageError

DEFAULT_MAX_UPLOAD_BYTES = 10 * 2**20
MULTIPART_OVERHEAD_BYTES = 16 * 2**10  # boundaries and part headers around the file


class ClassProbability(BaseModel):
    """One class and its probability."""

    label: str
    probability: float


class PredictResponse(BaseModel):
    """The most likely classes for one uploaded photo, most likely first."""

    filename: str | None
    predictions: list[ClassProbability]


class Health(BaseModel):
    """What the service has loaded."""

    status: str
    classes: int
    collection_images: int
    features_used: str
    weights: str
    meaningful_weights: bool
    orchard_version: str


class Classes(BaseModel):
    """The classes the model can answer with."""

    classes: list[str]


class ErrorBody(BaseModel):
    """Why a request was refused."""

    detail: str


class UploadTooLarge(HTTPException):
    """413 raised while the request body streams in (FastAPI passes HTTPExceptions through form parsing)."""

    def __init__(self, limit: int):
        super().__init__(413, f"upload larger than the {limit}-byte limit")


class BodyLimit:
    """ASGI middleware: 413 for a body that cannot hold an upload of at most `max_upload_bytes` plus the
    multipart framing, judged from Content-Length or, for chunked bodies, while they stream in."""

    def __init__(self, app, max_upload_bytes: int):
        self.app, self.max_upload_bytes = app, max_upload_bytes
        self.limit = max_upload_bytes + MULTIPART_OVERHEAD_BYTES

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            response = JSONResponse({"detail": UploadTooLarge(self.max_upload_bytes).detail}, status_code=413)
            await response(scope, receive, send)
            return
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise UploadTooLarge(self.max_upload_bytes)
            return message

        await self.app(scope, counted_receive, send)


def create_app(predictor: Predictor, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> FastAPI:
    """The FastAPI application serving `predictor`; uploads above `max_upload_bytes` get 413."""
    app = FastAPI(title="orchard", version=__version__,
                  description="Which fruit is in this photo? MobileNetV2 features (ONNX Runtime), the run's PCA "
                              "and a logistic regression trained with `orchard train`.")
    app.add_middleware(BodyLimit, max_upload_bytes=max_upload_bytes)
    errors = {status: {"model": ErrorBody, "description": text} for status, text in (
        (413, "upload over the size limit"), (415, "not declared as an image"), (422, "not a decodable image"))}

    @app.get("/health")
    def health() -> Health:
        """Liveness, and what is loaded."""
        model = predictor.manifest["model"]
        return Health(status="ok", classes=len(predictor.classes), collection_images=predictor.collection_size,
                      features_used=predictor.manifest["features_used"], weights=model["description"],
                      meaningful_weights=model["meaningful"], orchard_version=__version__)

    @app.get("/classes")
    def classes() -> Classes:
        """The classes the model can answer with."""
        return Classes(classes=predictor.classes)

    @app.post("/predict", responses=errors)
    def predict(file: Annotated[UploadFile, File(description="the photo (JPEG, PNG, WebP, ...)")],
                top_k: Annotated[int, Query(ge=1, description="how many classes to return")] = 5
                ) -> PredictResponse:
        """The `top_k` most likely classes of an uploaded photo, with probabilities."""
        content_type = (file.content_type or "").split(";")[0].strip().lower()
        if not content_type.startswith("image/"):
            raise HTTPException(415, f"expected an image upload (image/jpeg, image/png, ...), got "
                                     f"{content_type or 'no content type'}")
        data = file.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise UploadTooLarge(max_upload_bytes)
        try:
            best = predictor.predict([data], top_k)[0]
        except ImageError as error:
            raise HTTPException(422, f"cannot use this image: {error.reason}") from None
        return PredictResponse(filename=file.filename,
                               predictions=[ClassProbability(label=name, probability=p) for name, p in best])

    return app


def serve(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000,
          max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> None:
    """Run the service with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(predictor, max_upload_bytes), host=host, port=port, log_level="info")
