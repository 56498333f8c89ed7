"""The commands built on a finished run: `train`, `predict`, `similar`, `serve` (thin over the API).

Only `train` starts Spark; the other three load `classifier/predictor/` with NumPy and ONNX Runtime.
"""

from __future__ import annotations

import argparse
import json
import sys

from orchard.cli.options import add_spark_options, add_storage_options, spark_from_args, storage_from_args
from orchard.config import ALGORITHMS, FEATURE_SPACES

MODEL_HELP = ("a run output or versioned store with a trained classifier (or its classifier/ or "
              "classifier/predictor/ folder)")


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add the train, predict, similar and serve subcommands to `orchard`'s subparsers."""
    train = commands.add_parser(
        "train", help="fit and evaluate a classifier on a finished run (Spark MLlib)",
        description="Fit a multinomial logistic regression on the Training split's PCA (or raw) features, "
                    "evaluate it on the Test split, and write OUTPUT/classifier/: model/ (a PipelineModel from "
                    "the raw features column), confusion/, metrics.json and predictor/ (for predict, similar "
                    "and serve, without Spark). Adds the metrics to run.json.")
    train.add_argument("output", help="folder or URI of a finished orchard output (a store: its latest version)")
    train.add_argument("--features", choices=FEATURE_SPACES, default="pca",
                       help="train on the run's PCA vectors (default) or the raw 1280-D features")
    train.add_argument("--algorithm", choices=ALGORITHMS, default="logistic",
                       help="classifier (default: logistic, multinomial logistic regression)")
    train.add_argument("--reg-param", type=float, default=0.01, help="L2 regularisation strength (default 0.01)")
    train.add_argument("--max-iter", type=int, default=100, help="optimiser iterations at most (default 100)")
    train.add_argument("--train-split", default="Training", help="split to fit on (default: Training)")
    train.add_argument("--test-split", default="Test", help="split to evaluate on (default: Test)")
    add_spark_options(train.add_argument_group("execution"))
    add_storage_options(train)

    predict = commands.add_parser(
        "predict", help="classify photos with a trained classifier (no Spark)",
        description="Print the most likely classes of each photo, one line per photo. Exit 1 if a photo "
                    "could not be read or decoded (the others are still classified).")
    predict.add_argument("model", help=MODEL_HELP)
    predict.add_argument("images", nargs="+", help="image files or URIs")
    predict.add_argument("--top-k", type=int, default=3, help="classes per photo (default 3)")
    predict.add_argument("--json", action="store_true", help="print one JSON document instead of text lines")
    add_storage_options(predict)

    similar = commands.add_parser(
        "similar", help="find the collection images most similar to a photo (PCA space, no Spark)",
        description="Print the k images of the run's collection nearest to IMAGE (Euclidean distance between "
                    "PCA vectors, exact search), nearest first: rank, distance, label, path.")
    similar.add_argument("model", help=MODEL_HELP)
    similar.add_argument("image", help="image file or URI")
    similar.add_argument("-k", type=int, default=5, help="how many neighbours (default 5)")
    add_storage_options(similar)

    serve = commands.add_parser(
        "serve", help="serve the classifier over HTTP (FastAPI + uvicorn, no Spark)",
        description="A web page at / (take or choose a photo; top classes and similar collection images) over "
                    "the HTTP API: POST /predict (multipart image upload `file`, optional ?top_k=, ?similar=), "
                    "GET /thumbnails/{id}, GET /health, GET /classes, OpenAPI docs at /docs. Bad uploads get "
                    "408/413/415/422 with a JSON message, too many 429. Photos are never written to disk.")
    serve.add_argument("model", help=MODEL_HELP)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted upload (default 10 MB)")
    serve.add_argument("--threads", type=int, help="ONNX Runtime threads (default: CPU count, at most 4)")
    serve.add_argument("--api-key", help="require this key in the X-API-Key header (default: $ORCHARD_API_KEY); "
                                         "needed for any --host but loopback, unless --insecure")
    serve.add_argument("--insecure", action="store_true", help="serve beyond loopback without an API key (warns)")
    serve.add_argument("--rate-limit", type=int, default=120, metavar="PER_MINUTE",
                       help="uploads per minute per client address, then 429 (default 120; 0: no limit)")
    serve.add_argument("--body-timeout", type=float, default=30.0, metavar="SECONDS",
                       help="longest an upload may take to arrive, then 408 (default 30)")
    add_storage_options(serve)


def _load(args: argparse.Namespace, threads: int | None = None):
    from orchard.predict import Predictor

    predictor = Predictor.load(args.model, threads, storage_from_args(args))
    if not predictor.manifest["model"]["meaningful"]:
        print(f"WARNING: {predictor.manifest['model']['description']}", file=sys.stderr)
    return predictor


def _train(args: argparse.Namespace) -> int:
    from orchard.classify import train

    result = train(args.output, features=args.features, algorithm=args.algorithm, train_split=args.train_split,
                   test_split=args.test_split, reg_param=args.reg_param, max_iter=args.max_iter,
                   spark_options=spark_from_args(args), storage=storage_from_args(args))
    print(result.summary())
    return 0


def _predict(args: argparse.Namespace) -> int:
    from orchard.errors import ConfigError
    from orchard.preprocess import ImageError

    if args.top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {args.top_k}")
    predictor = _load(args)
    results, failed = {}, 0
    for image in args.images:
        try:
            results[image] = predictor.predict([image], args.top_k)[0]
        except ImageError as error:
            failed += 1
            results[image] = None
            print(f"{image}: error ({error.stage}): {error.reason}", file=sys.stderr)
    if args.json:
        print(json.dumps({image: None if best is None else [{"label": name, "probability": p} for name, p in best]
                          for image, best in results.items()}, indent=2))
    else:
        for image, best in results.items():
            if best is not None:
                print(f"{image}: " + ", ".join(f"{name} {p:.3f}" for name, p in best))
    return 1 if failed else 0


def _similar(args: argparse.Namespace) -> int:
    from orchard.errors import ConfigError
    from orchard.preprocess import ImageError

    if args.k < 1:
        raise ConfigError(f"-k must be at least 1, got {args.k}")
    predictor = _load(args)
    try:
        neighbours = predictor.similar(args.image, args.k)
    except ImageError as error:
        raise ConfigError(f"{args.image}: {error.reason}") from None
    for rank, neighbour in enumerate(neighbours, start=1):
        print(f"{rank}\t{neighbour.distance:.4f}\t{neighbour.label}\t{neighbour.path}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import os

    from orchard.errors import ConfigError
    from orchard.serve import API_KEY_ENV, Settings, check_exposure, serve

    if args.rate_limit < 0 or args.body_timeout <= 0:
        raise ConfigError("--rate-limit must be 0 or more and --body-timeout above 0")
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    check_exposure(args.host, api_key, args.insecure)
    predictor = _load(args, args.threads)
    print(f"orchard: serving {len(predictor.classes)} classes from {predictor.folder} on "
          f"http://{args.host}:{args.port} (page at /, docs at /docs"
          f"{', API key required' if api_key else ''})", file=sys.stderr, flush=True)
    serve(predictor, args.host, args.port, settings=Settings(
        max_upload_bytes=int(args.max_upload_mb * 2**20), api_key=api_key, rate_per_minute=args.rate_limit,
        body_timeout_s=args.body_timeout))
    return 0


COMMANDS = {"train": _train, "predict": _predict, "similar": _similar, "serve": _serve}
