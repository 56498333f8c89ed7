"""`orchard` on the command line: a thin layer over the Python API. User mistakes print one line and exit 2.

One module per command family, each with `add_commands(subparsers)` and its `COMMANDS` (name -> handler):
`pipeline` (run, demo, sample, verify, report, package), `apps` (train, predict, similar, serve) and `emr`
(`orchard emr ...`); `options` holds the option groups they share. Handlers import what they use, so parsing
a command (and `--help`, `emr plan`) imports nothing heavy.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from orchard import __version__
from orchard.cli import apps, emr, pipeline
from orchard.config import scrub, secret_values
from orchard.errors import OrchardError, TransientReadError

FAMILIES = (pipeline, apps, emr)
COMMANDS = {name: handler for family in FAMILIES for name, handler in family.COMMANDS.items()}


def build_parser() -> argparse.ArgumentParser:
    """The `orchard` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="orchard", description="Turn image collections into MobileNetV2 "
                                     "features and a PCA model on Spark, and use them. User mistakes print one "
                                     "line and exit 2.")
    parser.add_argument("--version", action="version", version=f"orchard {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for family in FAMILIES:
        family.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: run one subcommand; user mistakes print one line and return 2."""
    args = build_parser().parse_args(argv)
    for name in ("", "py4j", "py4j.java_gateway", "py4j.clientserver"):
        logging.getLogger(name).addFilter(_broken_gateway_calls)
    try:
        return COMMANDS[args.command](args)
    except (OrchardError, TransientReadError) as error:  # the latter: a read on the driver (int8 calibration)
        secrets = secret_values(sys.argv[1:] if argv is None else argv, dict(os.environ))
        resume = "; rerun the same command to resume" if isinstance(error, TransientReadError) else ""
        print(f"orchard: error: {scrub(str(error), secrets)}{resume}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("orchard: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def _broken_gateway_calls(record: logging.LogRecord) -> bool:
    """Drop py4j's log of each call the JVM dropped (Ctrl-C stops it: ~50 lines of tracebacks); the exception
    itself still reaches the caller, so nothing is hidden."""
    return "while sending command" not in record.getMessage()
