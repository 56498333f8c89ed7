"""The three engines give the same results: classic on this venv's pyspark, classic on the other supported
major (3.5 beside 4.x, or the reverse), and Spark Connect on 4.x; and a model written by one Spark version
loads in the other.

Each engine runs the real CLI in its own process on the same generated collection.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pyspark
import pytest
from infra import other_pyspark, with_pyspark

from orchard.sample import SampleSpec, make_sample

ORCHARD = str(Path(sys.executable).with_name("orchard"))
RUN_ARGS = ["--weights", "random", "--k", "6", "--standardize", "--no-progress", "--master", "local[2]"]


@pytest.fixture(scope="module")
def other(tmp_path_factory) -> tuple[dict[str, str], str]:
    """(environment whose pyspark is the other major, its version)."""
    folder, version = other_pyspark(Path.home() / ".cache" / "orchard" / "test-pyspark")
    assert version.split(".")[0] != pyspark.__version__.split(".")[0]
    return with_pyspark(folder), version


@pytest.fixture(scope="module")
def runs(tmp_path_factory, other) -> dict[str, Path]:
    """engine name -> output folder of one `orchard run` on that engine."""
    root = tmp_path_factory.mktemp("engines")
    collection = root / "fruits"
    make_sample(collection, SampleSpec(classes=3, train_per_class=10, test_per_class=3, seed=5))
    env, _ = other
    this = f"classic-{pyspark.__version__}"
    plans = {this: ([], None), f"classic-{other[1]}": ([], env)}
    # Connect needs pyspark 4.x: this venv's when it is 4.x, else the other one
    connect_env = None if pyspark.__version__.startswith("4.") else env
    plans["connect"] = (["--remote", "local[2]"], connect_env)
    outputs = {}
    for name, (extra, run_env) in plans.items():
        output = root / name
        args = [ORCHARD, "run", str(collection), "--output", str(output), *RUN_ARGS]
        if extra:
            args = [arg for arg in args if arg not in ("--master", "local[2]")] + extra
        done = subprocess.run(args, capture_output=True, text=True, env=run_env, timeout=600)
        assert done.returncode == 0, f"{name}: {done.stderr[-3000:]}"
        outputs[name] = output
    return outputs


def _sorted(output: Path, dataset: str) -> pd.DataFrame:
    return pq.read_table(output / dataset).to_pandas().sort_values("path", ignore_index=True)


def test_features_are_bit_identical_and_pca_agrees_across_engines(runs):
    infos = {name: json.loads((output / "run.json").read_text()) for name, output in runs.items()}
    assert {info["spark"]["engine"] for info in infos.values()} == {"classic", "connect"}
    assert len({info["spark"]["version"][:3] for info in infos.values()}) == 2  # two Spark versions ran
    base_name = next(iter(runs))
    base = _sorted(runs[base_name], "features")
    base_pca = _sorted(runs[base_name], "pca")
    spread = np.stack(base["features"]).std(axis=0).mean()
    assert spread > 1e-3  # random weights with calibrated BatchNorm: the features vary by image
    for name, output in runs.items():
        features = _sorted(output, "features")
        assert features["path"].tolist() == base["path"].tolist(), name
        assert np.array_equal(np.stack(features["features"]), np.stack(base["features"])), name
        pca = _sorted(output, "pca")
        # components are sign-fixed, so the projections agree up to float rounding of the aggregation
        np.testing.assert_allclose(np.stack(pca["pca"]), np.stack(base_pca["pca"]), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(infos[name]["pca"]["explained_variance"],
                                   infos[base_name]["pca"]["explained_variance"], rtol=1e-6, atol=1e-9)


LOAD_AND_PROJECT = """
import json, sys
from pyspark.ml import PipelineModel
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import SparkSession
spark = SparkSession.builder.master("local[1]").getOrCreate()
model = PipelineModel.load(sys.argv[1])
rows = spark.read.parquet(sys.argv[2]).withColumn("vector", array_to_vector("features"))
out = model.transform(rows).select("path", vector_to_array("pca_vector").alias("pca")).orderBy("path").collect()
print(json.dumps([[row["path"], row["pca"]] for row in out]))
"""


def _project(output_with_model: Path, features_of: Path, env) -> np.ndarray:
    done = subprocess.run([sys.executable, "-c", LOAD_AND_PROJECT, str(output_with_model / "model"),
                           str(features_of / "features")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return np.array([pca for _, pca in json.loads(done.stdout.strip().splitlines()[-1])])


def test_a_model_written_by_one_spark_version_loads_in_the_other(runs, other):
    env, version = other
    this = runs[f"classic-{pyspark.__version__}"]
    theirs = runs[f"classic-{version}"]
    for model_of, loaded_with in ((this, env), (theirs, None)):  # this version's model in the other, and back
        projected = _project(model_of, model_of, loaded_with)
        expected = np.stack(_sorted(model_of, "pca")["pca"])
        assert projected.shape == expected.shape == (39, 6)
        np.testing.assert_allclose(projected, expected, rtol=1e-5, atol=1e-5)
