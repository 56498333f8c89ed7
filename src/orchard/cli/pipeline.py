"""The pipeline's commands: `run`, `demo`, `sample`, `verify`, `report` and `package` (thin over the API)."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from orchard.cli.options import add_spark_options, add_storage_options, spark_from_args, storage_from_args
from orchard.config import PRECISIONS, RunConfig


def _split_list(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by `run` and `demo`."""
    model = parser.add_argument_group("model")
    model.add_argument("--weights", default="imagenet",
                       help="'imagenet' (Keras file from ~/.keras/models, downloaded if possible), 'random' "
                            "(seeded, for tests and smoke runs: features NOT meaningful) or a path to a Keras "
                            "MobileNetV2 no-top .h5 weights file (default: imagenet)")
    model.add_argument("--seed", type=int, default=0, help="seed for --weights random (default: 0)")
    model.add_argument("--precision", choices=PRECISIONS, default="fp32",
                       help="fp32 (default, ONNX Runtime), int8 (static quantisation calibrated on a sample of the "
                            "input, run by OpenVINO) or bf16 (OpenVINO on CPUs with AMX or AVX512-BF16: Intel "
                            "Sapphire Rapids+, AMD Zen 4+; refused elsewhere); run.json reports the cosine "
                            "similarity to fp32")
    reduction = parser.add_argument_group("PCA")
    choice = reduction.add_mutually_exclusive_group()
    choice.add_argument("--k", type=int, help="number of principal components to keep")
    choice.add_argument("--variance", type=float,
                        help="keep the smallest k that explains this share of variance (default: 0.95)")
    reduction.add_argument("--standardize", action="store_true",
                           help="scale features to zero mean and unit variance before PCA")
    output = parser.add_argument_group("output")
    output.add_argument("--csv", action="store_true", help="also write CSV copies of every dataset under csv/")
    output.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    output.add_argument("--incremental", action="store_true",
                        help="treat --output as a store of versions (v=0001, v=0002, ...): write the next "
                             "version, featurising only images added or changed (path, size, mtime) since the "
                             "latest one; removed images leave it; nothing changed = no new version")
    output.add_argument("--refit-pca", action="store_true",
                        help="with --incremental: fit PCA on the new version instead of reusing the model of "
                             "the latest one")
    guards = parser.add_argument_group("image guards")
    guards.add_argument("--max-pixels", type=int, default=64_000_000,
                        help="refuse images with more pixels than this (decompression bombs; default 64M)")
    guards.add_argument("--max-bytes", type=int, default=50_000_000,
                        help="refuse files larger than this many bytes (default 50 MB)")
    spark = parser.add_argument_group("execution (does not change results)")
    add_spark_options(spark)
    add_storage_options(parser)
    spark.add_argument("--batch-size", type=int, default=8,
                       help="images per inference call, ONNX Runtime or OpenVINO (default 8: faster than 32 on "
                            "2-core machines)")
    spark.add_argument("--threads", type=int,
                       help="inference threads per Python worker (default: spark.task.cpus)")
    spark.add_argument("--shard-size", type=int, default=4096,
                       help="images per shard; a shard is the unit of resume and progress (default 4096)")
    spark.add_argument("--images-per-task", type=int, default=1024,
                       help="images per Spark task inside a shard (default 1024; tasks stream Arrow batches of "
                            "spark.sql.execution.arrow.maxRecordsPerBatch, 128 by default)")
    spark.add_argument("--io-threads", type=int, default=8,
                       help="concurrent file reads per Python worker (default 8)")
    spark.add_argument("--no-progress", action="store_true", help="do not print progress lines")


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add run, sample, verify, package, demo and report to `orchard`'s subparsers."""
    run = commands.add_parser(
        "run", help="featurise an image collection and reduce it with PCA",
        description="List, decode, featurise (MobileNetV2, 1280-D) and reduce (PCA) an image collection; "
                    "write features/, pca/, metadata/, errors/, variance/, model/ and run.json under --output. "
                    "Rerunning the same command after an interruption resumes it.")
    run.add_argument("input", help="folder or URI (file:, s3://, s3a://, hdfs://) of the collection; "
                                   "class = parent folder, split = first-level folder (e.g. Training/Test)")
    run.add_argument("--output", "-o", required=True, help="folder or URI to write results to")
    run.add_argument("--classes", type=_split_list, default=(),
                     help="comma-separated class globs to keep, e.g. 'Apple*,Banana'")
    run.add_argument("--splits", type=_split_list, default=(),
                     help="comma-separated splits (first-level folders) to keep, e.g. Training")
    run.add_argument("--limit", type=int,
                     help="process a deterministic, class-stratified sample of N images")
    add_run_options(run)

    sample = commands.add_parser("sample", help="generate a small Fruits-360-shaped collection")
    sample.add_argument("directory", help="where to write it (Training/<class>/*.jpg, Test/<class>/*.jpg)")
    _add_sample_options(sample)

    verify = commands.add_parser(
        "verify", help="check a finished output: marker, checksums, accounting, unique paths, vector sizes",
        description="Check OUTPUT without Spark: _SUCCESS and run.json present, every Parquet part matches "
                    "the checksum recorded in run.json, listed = ok + errors, each listed path once, vector "
                    "lengths, model files. Exit 0 when everything holds, 1 otherwise.")
    verify.add_argument("output", help="folder or URI of an orchard output")
    add_storage_options(verify)

    package = commands.add_parser(
        "package", help="build a relocatable Python environment for the cluster and print spark-submit",
        description="Build orchard and its dependencies (not pyspark: the cluster's Spark provides it) into a "
                    "venv-pack archive for --archives, and print the spark-submit line that uses it. Build on "
                    "the cluster's OS and Python version.")
    package.add_argument("--output", "-o", default="dist/orchard-env.tar.gz", help="archive to write")
    package.add_argument("--master", default="yarn", help="master for the printed spark-submit line")
    package.add_argument("run_args", nargs="*", metavar="RUN_ARG",
                         help="arguments of `orchard run` for the printed line (after --)")

    demo = commands.add_parser(
        "demo", help="generate a sample collection and run the pipeline on it",
        description="Generate a sample, run the pipeline and print the summary. Uses the ImageNet weights "
                    "when available; otherwise random weights, under a banner saying features are not "
                    "meaningful.")
    demo.add_argument("--directory", default="data/sample", help="where to generate the sample")
    demo.add_argument("--output", "-o", default="out/demo", help="where to write results")
    _add_sample_options(demo)
    add_run_options(demo)
    _add_report_parser(commands)


def _add_sample_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--classes-count", type=int, default=6, help="number of classes (default 6)")
    parser.add_argument("--train-per-class", type=int, default=30, help="Training images per class")
    parser.add_argument("--test-per-class", type=int, default=10, help="Test images per class")
    parser.add_argument("--sample-seed", type=int, default=0, help="seed of the generated images")


def config_from_args(args: argparse.Namespace, input_uri: str, **overrides) -> RunConfig:
    """The validated RunConfig for `run`/`demo` arguments: every field from the option of the same name (a new
    option is a RunConfig field plus its add_argument), then `overrides`."""
    named = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig) if hasattr(args, f.name)}
    return RunConfig(**{**named, "input": input_uri, "progress": not args.no_progress,
                        "spark": spark_from_args(args), "storage": storage_from_args(args), **overrides})


def _run(args: argparse.Namespace) -> int:
    from orchard.pipeline import run

    config = config_from_args(args, args.input)
    result = run(config)
    print(result.summary())
    return 0


def _sample_spec(args: argparse.Namespace):
    from orchard.sample import SampleSpec

    return SampleSpec(classes=args.classes_count, train_per_class=args.train_per_class,
                      test_per_class=args.test_per_class, seed=args.sample_seed)


def _sample(args: argparse.Namespace) -> int:
    from orchard.sample import make_sample

    count = make_sample(args.directory, _sample_spec(args))
    print(f"wrote {count} images under {args.directory}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from orchard.errors import WeightsError
    from orchard.featurize.weights import locate_imagenet_file
    from orchard.pipeline import run
    from orchard.sample import make_sample

    count = make_sample(args.directory, _sample_spec(args))
    print(f"wrote {count} sample images under {args.directory}")
    weights = args.weights
    if weights == "imagenet":
        try:
            locate_imagenet_file()
        except WeightsError as error:
            print("=" * 78 + f"\nDEMO WITH RANDOM WEIGHTS: {error}\nThe pipeline runs end to end, but the "
                  "features are NOT meaningful.\n" + "=" * 78, file=sys.stderr)
            weights = "random"
    result = run(config_from_args(args, args.directory, weights=weights, overwrite=True))
    print(result.summary())
    return 0


def _package(args: argparse.Namespace) -> int:
    from pathlib import Path

    from orchard.cloud.package import build, submit_command

    package = build(Path(args.output))
    size_mb = package.archive.stat().st_size / 2**20
    print(f"wrote {package.archive} ({size_mb:.0f} MB), {package.wheel.name} and requirements.txt")
    run_args = args.run_args or ["s3://BUCKET/fruits", "--output", "s3://BUCKET/out"]
    print(submit_command(package.archive, args.master, run_args))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from orchard.verify import verify

    findings = verify(args.output, storage_from_args(args))
    for finding in findings:
        print(finding.line())
    good = all(finding.ok for finding in findings)
    print(f"{args.output}: {'verified' if good else 'NOT verified'}")
    return 0 if good else 1


def _add_report_parser(commands: argparse._SubParsersAction) -> None:
    """`orchard report OUTPUT [--out PATH]` (the work is in orchard.report)."""
    report = commands.add_parser(
        "report", help="write an HTML report (and PNG figures) of a finished run",
        description="Write a self-contained HTML page about OUTPUT without Spark: images per class and split, "
                    "errors by stage and reason, explained variance with the chosen k, a PCA scatter, time per "
                    "stage, configuration and model, and the classifier's scores when `orchard train` ran.")
    report.add_argument("output", help="folder or URI of an orchard output")
    report.add_argument("--out", help="HTML file (ending .html) or folder to write the report to "
                                      "(default: OUTPUT's run folder/report/index.html)")
    add_storage_options(report)


def _report(args: argparse.Namespace) -> int:
    from orchard.report import write_report

    print(f"wrote {write_report(args.output, args.out, storage_from_args(args))}")
    return 0


COMMANDS = {"run": _run, "sample": _sample, "demo": _demo, "package": _package, "verify": _verify, "report": _report}
