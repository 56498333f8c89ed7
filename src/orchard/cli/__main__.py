"""`python -m orchard.cli ...`, and the script spark-submit runs (cloud/package.py): the `orchard` command."""

import sys

from orchard.cli import main

if __name__ == "__main__":
    sys.exit(main())
