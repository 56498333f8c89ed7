"""Command-line options shared by orchard's subcommand modules (cli, apps_cli, cloud/emr_cli)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # io.fs loads pyarrow: imported by a command that uses storage, not by `--help`
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
