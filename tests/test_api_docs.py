"""The API reference: `scripts/api_docs.py` renders a page per public module, and every public callable has a
docstring for it to show."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import orchard

pytestmark = pytest.mark.pure

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "api_docs.py"


def load_script():
    """scripts/api_docs.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("api_docs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def public_modules() -> list[str]:
    """The modules the reference covers, as the script lists them."""
    return load_script().public_modules()


def has_docstring(obj) -> bool:
    """A docstring written by a person (not the signature a dataclass puts in `__doc__` by default)."""
    doc = inspect.getdoc(obj) or ""
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj) and doc.startswith(f"{obj.__name__}("):
        return False
    return bool(doc.strip())


def public_members(cls) -> list[tuple[str, object]]:
    """Methods and properties `cls` itself defines, by public name."""
    members = []
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, property | staticmethod | classmethod) or inspect.isfunction(member):
            members.append((name, member if isinstance(member, property) else getattr(cls, name)))
    return members


def undocumented(module_name: str) -> list[str]:
    """Public classes, functions, methods and properties of one module without a docstring."""
    module = importlib.import_module(module_name)
    missing = [] if has_docstring(module) else [f"{module_name} (module docstring)"]
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
            continue  # private, or imported from elsewhere (checked where it is defined)
        if not (inspect.isclass(obj) or inspect.isfunction(inspect.unwrap(obj))):
            continue
        if not has_docstring(obj):
            missing.append(f"{module_name}.{name}")
        if inspect.isclass(obj):
            missing += [f"{module_name}.{name}.{member_name}" for member_name, member in public_members(obj)
                        if not has_docstring(member)]
    return missing


def test_the_reference_covers_subpackages_and_skips_private_modules():
    modules = public_modules()
    assert {"orchard", "orchard.pipeline", "orchard.io.fs", "orchard.featurize.batch", "orchard.s3a"} <= set(
        modules)
    assert not [name for name in modules if "._" in name]
    assert len(modules) == len(set(modules))


def test_every_public_callable_has_a_docstring():
    missing = [gap for module_name in public_modules() for gap in undocumented(module_name)]
    assert not missing, f"{len(missing)} public names without a docstring:\n" + "\n".join(missing)


def test_one_command_renders_a_page_per_public_module(tmp_path):
    rendered = subprocess.run([sys.executable, SCRIPT, "-o", tmp_path], capture_output=True, text=True,
                              timeout=300)
    assert rendered.returncode == 0, rendered.stderr
    assert (tmp_path / "index.html").is_file() and (tmp_path / "search.js").is_file()
    for module_name in public_modules():
        assert (tmp_path / f"{module_name.replace('.', '/')}.html").is_file(), module_name
    package = (tmp_path / "orchard.html").read_text()
    for name in orchard.__all__:
        if name != "__version__":
            assert f'id="{name}"' in package, name
    pipeline = (tmp_path / "orchard" / "pipeline.html").read_text()
    assert 'id="run"' in pipeline and inspect.getdoc(orchard.run).splitlines()[0] in pipeline
