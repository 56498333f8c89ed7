"""The entry point an EMR step (or an EMR Serverless job) runs: fetch the weights from S3, then `orchard run`.

`python driver.py [--weights-from S3_URI] run INPUT --output OUT ...`: the weights file is copied onto the
driver's disk first (the standard Keras ImageNet file into the Keras cache, so `--weights imagenet` finds it;
any other file into a temporary folder, passed as `--weights PATH`), then orchard's CLI runs the rest. The
uploaded script hands `main` the CLI's entry point, so this module (imported by `cloud/emr` to upload the
script) never imports the CLI that imports `cloud/emr`.
"""

from __future__ import annotations

import posixpath
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from orchard.io.storage import StorageOptions

SCRIPT = '''"""orchard's EMR entry point, uploaded by `orchard emr`; see orchard.cloud.emr_driver."""
import sys

from orchard.cli import main as orchard
from orchard.cloud.emr_driver import main

sys.exit(main(sys.argv[1:], orchard))
'''


def fetch_weights(uri: str, storage: StorageOptions | None = None) -> str:
    """Copy a weights file from `uri` to local disk; returns the `--weights` value that selects it.

    `storage` defaults to the AWS environment (on EMR: the node's region and instance credentials).
    """
    from orchard.featurize.weights import KERAS_FILE, keras_cache_dir
    from orchard.io import fs

    storage = storage or StorageOptions.from_env()

    name = posixpath.basename(uri.rstrip("/"))
    if name == KERAS_FILE:
        target = keras_cache_dir() / KERAS_FILE
        value = "imagenet"
    else:
        target = Path(tempfile.mkdtemp(prefix="orchard-weights-")) / name
        value = str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fs.write_bytes(str(target), fs.read_bytes(uri, storage))
    return value


def main(argv: list[str], orchard: Callable[[list[str]], int]) -> int:
    """Run `orchard(argv)` (the CLI's `main`), after fetching `--weights-from URI` (if it comes first) into
    --weights."""
    if argv[:1] == ["--weights-from"] and len(argv) > 1:
        try:
            weights = fetch_weights(argv[1])
        except OSError as error:
            print(f"orchard: error: cannot copy the weights file {argv[1]}: {error}", file=sys.stderr)
            return 2
        argv = [*argv[2:], "--weights", weights]
    return orchard(argv)
