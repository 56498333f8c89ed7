"""The session factory (spark.py): which Python the workers run, and what it leaves behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import on_connect

pytestmark = pytest.mark.spark

WORKER_PYTHON = """
import json, os, sys
from pyspark.sql.functions import udf
from orchard.config import SparkOptions
from orchard.spark import get_session

options = SparkOptions(remote="local[1]") if sys.argv[1] == "connect" else SparkOptions(master="local[1]")
spark = get_session(options)
worker = spark.range(1).select(udf(lambda _: sys.executable)("id")).first()[0]
print(json.dumps({"worker": worker, "driver": sys.executable, "left": os.environ.get("PYSPARK_PYTHON")}))
spark.stop()
"""


def test_workers_run_the_drivers_python_and_the_environment_is_left_as_it_was():
    """Without PYSPARK_PYTHON a worker would run `python3` (not this venv's packages); get_session names this
    interpreter for the session's start only, so the process's environment is unchanged afterwards."""
    env = {key: value for key, value in os.environ.items() if key != "PYSPARK_PYTHON"}
    env["SPARK_LOCAL_IP"] = "127.0.0.1"
    done = subprocess.run([sys.executable, "-c", WORKER_PYTHON, "connect" if on_connect() else "classic"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["worker"] == facts["driver"] == sys.executable
    assert facts["left"] is None
