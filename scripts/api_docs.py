"""Render orchard's API reference with pdoc: one HTML page per public module, plus an index and search.

    .venv/bin/python scripts/api_docs.py              # writes docs/api/ (open docs/api/index.html)
    .venv/bin/python scripts/api_docs.py -o /tmp/api

`pdoc orchard` alone follows `__all__`: `orchard.__all__` lists the API's functions and classes but no modules,
so it would render the package page only. This names every public module explicitly.
"""

from __future__ import annotations

import argparse
import os
import pkgutil
import warnings
from pathlib import Path

import orchard

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "docs" / "api"


def public_modules() -> list[str]:
    """`orchard` and every submodule whose dotted name has no part starting with '_'."""
    names = [info.name for info in pkgutil.walk_packages(orchard.__path__, "orchard.")]
    return ["orchard", *sorted(name for name in names if not any(part.startswith("_") for part in name.split(".")))]


def render(output: Path) -> None:
    """Write the HTML reference under `output`."""
    os.environ.setdefault("PDOC_ALLOW_EXEC", "1")  # a dependency runs `uname -p` on import: let it, quietly
    import pdoc
    import pdoc.render

    # pdoc cannot resolve pyspark's own TYPE_CHECKING-only annotations on inherited Params members: not ours
    warnings.filterwarnings("ignore", message=r".* for pyspark\.", category=UserWarning)
    # a package spec also adds its submodules, which are named again on their own: one page each all the same
    warnings.filterwarnings("ignore", message=r"The module specification .* adds a module named", category=UserWarning)
    pdoc.render.configure(docformat="markdown", footer_text=f"orchard {orchard.__version__}")
    pdoc.pdoc(*public_modules(), output_directory=output)


def main() -> None:
    """Command line: `-o DIR` (default docs/api/)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT, help="folder for the HTML pages")
    output = parser.parse_args().output
    render(output)
    print(f"API reference written to {output / 'index.html'}")


if __name__ == "__main__":
    main()
