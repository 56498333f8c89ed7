"""Option groups shared by the command families (pipeline, apps, emr), and their parsed values."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # io.fs loads pyarrow: imported by a command that uses storage, not by `--help`
    from orchard.config import SparkOptions
    from orchard.io.fs import StorageOptions


def add_storage_options(parser: argparse.ArgumentParser) -> None:
    """--s3-endpoint and --s3-region, in their own group."""
    storage = parser.add_argument_group("S3 (credentials always come from the standard AWS chain)")
    storage.add_argument("--s3-endpoint", help="S3 endpoint URL for S3-compatible stores, e.g. http://127.0.0.1:9000 "
                                               "(default: $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL, else AWS)")
    storage.add_argument("--s3-region", help="S3 region (default: $AWS_REGION / $AWS_DEFAULT_REGION)")


def storage_from_args(args: argparse.Namespace) -> StorageOptions:
    """--s3-endpoint / --s3-region, each falling back to the AWS environment variables."""
    from orchard.io.fs import StorageOptions

    environment = StorageOptions.from_env()
    return StorageOptions(endpoint=args.s3_endpoint or environment.endpoint,
                          region=args.s3_region or environment.region)


def add_spark_options(group: argparse._ActionsContainer) -> None:
    """--master, --remote and --conf: where the Spark work runs (`run`, `demo` and `train`)."""
    group.add_argument("--master", help="Spark master URL, e.g. local[4], spark://host:7077, yarn "
                                        "(default: spark-submit's choice, local[*] when run directly)")
    group.add_argument("--remote", metavar="URL",
                       help="run on Spark Connect: sc://host:15002, or local[N] for a server in this process "
                            "(default: $SPARK_REMOTE if set, else a classic session)")
    group.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                       help="extra Spark configuration, repeatable (e.g. --conf spark.executor.memory=4g)")


def spark_from_args(args: argparse.Namespace) -> SparkOptions:
    """The SparkOptions of --master, --remote and --conf (KEY=VALUE pairs validated here)."""
    from orchard.config import SparkOptions, parse_conf_pairs

    return SparkOptions(master=args.master, conf=parse_conf_pairs(args.conf), remote=args.remote)
