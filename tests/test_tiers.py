"""The test tiers themselves (tests/conftest.py): a wrong tier is refused, and the fast tier cannot start a JVM."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.pure

MISTIERED = '''
import pytest

@pytest.mark.pure
def test_uses_spark(spark):
    pass

@pytest.mark.pure
@pytest.mark.spark
def test_two_tiers():
    pass

def test_unmarked_in_an_unknown_module():
    pass
'''

STARTS_SPARK_IN_A_PURE_TEST = '''
import pytest

@pytest.mark.pure
def test_marked_pure_but_starts_spark():
    from pyspark.sql import SparkSession

    SparkSession.builder.master("local[1]").getOrCreate().stop()
'''


def pytest_in(folder: Path, test: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """pytest over one test file next to a copy of this suite's conftest.py (and the same markers)."""
    shutil.copy(Path(__file__).with_name("conftest.py"), folder / "conftest.py")
    (folder / "test_case.py").write_text(test)
    markers = "\n".join(f"    {tier}: the {tier} tier" for tier in ("pure", "spark", "e2e"))
    (folder / "pytest.ini").write_text(
        f"[pytest]\naddopts = --strict-markers -p no:cacheprovider\nmarkers =\n{markers}\n")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", *args], cwd=folder, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_a_tier_below_the_fixtures_or_two_tiers_are_refused_at_collection(tmp_path):
    done = pytest_in(tmp_path, MISTIERED, "--collect-only")
    assert done.returncode != 0
    assert "test_case.py::test_uses_spark is marked pure but its fixtures need spark" in done.stderr
    assert "test_case.py::test_two_tiers is marked pure and spark: give it one tier" in done.stderr
    assert "test_unmarked_in_an_unknown_module" not in done.stderr


def test_an_unmarked_test_of_an_unknown_module_is_in_the_slow_tier(tmp_path):
    done = pytest_in(tmp_path, "def test_unmarked():\n    pass\n", "--collect-only", "-m", "spark")
    assert done.returncode == 0 and "1 test collected" in done.stdout, done.stdout + done.stderr
    done = pytest_in(tmp_path, "def test_unmarked():\n    pass\n", "--collect-only", "-m", "pure")
    assert "1 deselected" in done.stdout, done.stdout + done.stderr


def test_in_the_fast_mode_a_pure_test_that_starts_spark_fails_loudly(tmp_path):
    done = pytest_in(tmp_path, STARTS_SPARK_IN_A_PURE_TEST, "-m", "pure", env={"ORCHARD_TEST_NO_JVM": "1"})
    assert done.returncode == 1, done.stdout[-3000:]
    assert "1 failed" in done.stdout and "JAVA_GATEWAY_EXITED" in done.stdout
    assert "/nonexistent/no-jvm-in-the-pure-tier/bin/java: No such file" in done.stdout + done.stderr
