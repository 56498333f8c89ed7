"""Ship orchard's Python environment to a cluster: a relocatable venv archive plus the spark-submit line.

The archive holds orchard and its dependencies except pyspark (executors take pyspark from the Spark
distribution they run). It is built with venv-pack from a fresh virtual environment, so it must be built
on the cluster's OS and Python version (venv-pack keeps a link to the interpreter's install path).
"""

from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from orchard.errors import OrchardError

EXCLUDED = {"pyspark"}  # provided by the cluster's Spark


@dataclass(frozen=True)
class Package:
    """What `build` made: the environment archive, orchard's wheel and the requirements installed."""

    archive: Path
    wheel: Path
    requirements: list[str]


def project_root() -> Path:
    """The source checkout orchard runs from (needed to build its wheel)."""
    root = Path(__file__).resolve().parents[3]
    if not (root / "pyproject.toml").is_file():
        raise OrchardError("orchard package needs a source checkout of orchard (pyproject.toml not found "
                           f"above {Path(__file__).parent}): run it from a clone")
    return root


def runtime_requirements() -> list[str]:
    """orchard's install requirements, minus extras and the ones the cluster provides."""
    requirements = []
    for requirement in metadata.requires("orchard") or []:
        if "extra ==" in requirement:
            continue
        name = requirement.split(";")[0].strip()
        base = name.split("[")[0].split("<")[0].split(">")[0].split("=")[0].split("!")[0].split("~")[0].strip()
        if base.lower() not in EXCLUDED:
            requirements.append(name)
    return requirements


def build_wheel(directory: Path, python: str = sys.executable) -> Path:
    """Build orchard's own wheel (no dependencies) from the source checkout into `directory`."""
    _run([python, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(directory), str(project_root())])
    return next(Path(directory).glob("orchard-*.whl"))


def build(output: Path, python: str = sys.executable) -> Package:
    """Build `output` (a .tar.gz environment archive); returns what went into it."""
    output = output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    requirements = runtime_requirements()
    with tempfile.TemporaryDirectory(prefix="orchard-package-") as work:
        work_dir = Path(work)
        wheel = build_wheel(work_dir / "wheel", python)
        env = work_dir / "env"
        _run([python, "-m", "venv", str(env)])
        pip = [str(env / "bin" / "python"), "-m", "pip", "install", "-q"]
        _run([*pip, "venv-pack", *requirements])
        _run([*pip, "--no-deps", str(wheel)])
        output.unlink(missing_ok=True)
        _run([str(env / "bin" / "python"), "-m", "venv_pack", "-p", str(env), "-o", str(output), "-q"])
        kept_wheel = output.with_name(wheel.name)
        kept_wheel.write_bytes(wheel.read_bytes())
    (output.parent / "requirements.txt").write_text("\n".join(requirements) + "\n")
    return Package(output, kept_wheel, requirements)


def submit_command(archive: Path, master: str, run_args: list[str], driver_python: str = sys.executable) -> str:
    """The spark-submit line that runs `orchard run ...` with the archive as the executors' Python."""
    # `orchard`'s script, located without importing the CLI (cloud/ sits below it: the CLI calls this module)
    cli_file = str(Path(importlib.util.find_spec("orchard").origin).parent / "cli" / "__main__.py")
    parts = [
        "spark-submit", "--master", master, "--deploy-mode", "client",
        "--archives", f"{archive}#environment",
        "--conf", "spark.pyspark.python=./environment/bin/python",
        "--conf", f"spark.pyspark.driver.python={driver_python}",
        cli_file, "run", *run_args,
    ]
    return shlex.join(parts)


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise OrchardError(f"packaging step failed: {shlex.join(command[:4])} ...: "
                           f"{(result.stderr or result.stdout).strip().splitlines()[-1:]}")
