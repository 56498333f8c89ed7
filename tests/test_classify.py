"""`orchard train`, `predict` and `similar` on a real run: MLlib fit, reload, NumPy parity, CLI, mistakes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import orchard
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from orchard.classify import scores, train
from orchard.config import RunConfig
from orchard.errors import ConfigError
from orchard.output import CLASSIFIER_STAGING as STAGING
from orchard.pipeline import run
from orchard.predict import Predictor
from orchard.sample import SampleSpec, make_sample
from orchard.verify import verify

CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS = 4, 20, 10
# Measured with random weights, k=8, standardised, on samples of this shape: test accuracy 0.725 / 0.80 / 0.75
# for sample seeds 1 / 2 / 3 (raw features 0.65 / 0.80 / 0.775); chance is 0.25. 0.5 is twice chance.
MIN_ACCURACY = 0.5


@pytest.fixture(scope="module")
def trained(spark, tmp_path_factory):
    """A standardised random-weights run on a 4-class sample, with a classifier trained on its PCA."""
    root = tmp_path_factory.mktemp("classify")
    make_sample(root / "fruits", SampleSpec(classes=CLASSES, train_per_class=TRAIN_PER_CLASS,
                                            test_per_class=TEST_PER_CLASS, seed=1))
    output = root / "out"
    run(RunConfig(input=str(root / "fruits"), output=str(output), weights="random", k=8, standardize=True,
                  progress=False), spark)
    return train(str(output), spark=spark), output


def spark_predictions(spark, model_dir: Path, output: Path, split: str = "Test") -> pd.DataFrame:
    """path, label, predicted_label, probability (array) from the saved PipelineModel, sorted by path."""
    from pyspark.ml import PipelineModel
    from pyspark.ml.functions import vector_to_array

    model = PipelineModel.load(str(model_dir / "model"))
    rows = spark.read.parquet(str(output / "features")).where(f"split = '{split}'")
    return (model.transform(rows).select("path", "label", "predicted_label", "features",
                                         vector_to_array("probability").alias("probability"))
            .toPandas().sort_values("path", ignore_index=True))


@pytest.mark.spark
def test_train_writes_a_complete_classifier_and_records_it(trained):
    result, output = trained
    folder = output / "classifier"
    assert Path(result.model_dir) == folder
    for part in ("model/metadata", "model/stages", "confusion", "metrics.json", "predictor/model.onnx",
                 "predictor/predictor.npz", "predictor/predictor.json"):
        assert (folder / part).exists(), part
    assert not (output / STAGING).exists() and not (output / "classifier.old").exists()
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics == result.metrics
    assert metrics["train_images"] == CLASSES * TRAIN_PER_CLASS and metrics["test_images"] == CLASSES * TEST_PER_CLASS
    assert metrics["algorithm"] == "logistic" and metrics["features_used"] == "pca"
    assert [row["label"] for row in metrics["per_class"]] == metrics["classes"] and len(metrics["classes"]) == CLASSES
    info = json.loads((output / "run.json").read_text())
    assert info["classifier"] == metrics
    assert all(finding.ok for finding in verify(str(output))), "train must not break `orchard verify`"
    predictor = json.loads((folder / "predictor" / "predictor.json").read_text())
    assert predictor["model"]["onnx_sha256"] == info["model"]["onnx_sha256"] and predictor["standardized"]
    assert "RANDOM weights" in result.summary() and "accuracy" in result.summary()


@pytest.mark.spark
def test_random_features_vary_and_the_classes_are_learned(trained):
    result, output = trained
    features = np.stack(pd.read_parquet(output / "features")["features"].to_numpy())
    assert features.std(axis=0).mean() > 0.01  # not one vector for every image
    assert result.metrics["accuracy"] >= MIN_ACCURACY > 1 / CLASSES
    assert result.metrics["macro_f1"] >= MIN_ACCURACY - 0.1


@pytest.mark.spark
def test_metrics_and_confusion_match_scikit_learn(spark, trained):
    result, output = trained
    predictions = spark_predictions(spark, output / "classifier", output)
    truth, guess = predictions["label"], predictions["predicted_label"]
    metrics = result.metrics
    assert metrics["accuracy"] == pytest.approx(accuracy_score(truth, guess))
    assert metrics["macro_f1"] == pytest.approx(f1_score(truth, guess, average="macro", zero_division=0))
    precision, recall, f1, support = precision_recall_fscore_support(truth, guess, labels=metrics["classes"],
                                                                     zero_division=0)
    for i, row in enumerate(metrics["per_class"]):
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (precision[i], recall[i], f1[i], support[i]))
    confusion = pd.read_parquet(output / "classifier" / "confusion")
    assert list(confusion.columns) == ["label", "predicted", "count"]
    pairs = zip(confusion["label"], confusion["predicted"], strict=True)
    assert dict(zip(pairs, confusion["count"], strict=True)) == Counter(zip(truth, guess, strict=True))


@pytest.mark.pure
def test_scores_follow_scikit_learn_when_classes_are_missing_or_never_predicted():
    classes = ["a", "b", "c", "d", "e"]
    truth = ["a", "a", "b", "b", "b", "c"]  # no "d" nor "e" in the test labels
    guess = ["a", "b", "b", "d", "b", "a"]  # "c" never predicted, "d" predicted
    counts = Counter(zip(truth, guess, strict=True))
    confusion = [{"label": t, "predicted": g, "count": n} for (t, g), n in counts.items()]
    result = scores(confusion, classes)
    assert result["accuracy"] == pytest.approx(accuracy_score(truth, guess))
    assert result["not_scored"] == ["d", "e"]  # no test images: no recall, not in the macro F1
    assert result["macro_f1"] == pytest.approx(f1_score(truth, guess, labels=["a", "b", "c"], average="macro",
                                                        zero_division=0))
    precision, recall, f1, support = precision_recall_fscore_support(truth, guess, labels=classes, zero_division=0)
    assert [row["f1"] for row in result["per_class"]] == pytest.approx(f1.tolist())
    assert [row["precision"] for row in result["per_class"]] == pytest.approx(precision.tolist())
    assert [row["recall"] for row in result["per_class"]] == pytest.approx(recall.tolist())
    assert [row["support"] for row in result["per_class"]] == support.tolist()


@pytest.mark.spark
def test_classes_without_test_images_are_named_and_left_out_of_the_macro_f1(spark, trained, tmp_path):
    result, output = trained
    unscored = result.metrics["classes"][0]
    copy = tmp_path / "no-test-images"
    shutil.copytree(output, copy, ignore=shutil.ignore_patterns("classifier"))
    features = pd.read_parquet(copy / "features")
    shutil.rmtree(copy / "features")
    (copy / "features").mkdir()
    features[~((features["label"] == unscored) & (features["split"] == "Test"))].to_parquet(
        copy / "features" / "part-00000.parquet")
    retrained = train(str(copy), spark=spark)
    metrics = retrained.metrics
    assert metrics["not_scored"] == [unscored]
    assert json.loads((copy / "classifier" / "metrics.json").read_text())["not_scored"] == [unscored]
    predictions = spark_predictions(spark, copy / "classifier", copy)
    scored = result.metrics["classes"][1:]
    assert metrics["macro_f1"] == pytest.approx(f1_score(predictions["label"], predictions["predicted_label"],
                                                         labels=scored, average="macro", zero_division=0))
    summary = retrained.summary()  # what `orchard train` prints
    assert f"macro F1 {metrics['macro_f1']:.3f} over {CLASSES - 1} of {CLASSES} classes" in summary
    assert f"not scored (no Test images): {unscored}" in summary
    assert unscored not in summary.splitlines()[-1]  # "lowest F1" lists scored classes only


@pytest.mark.spark
def test_pipeline_model_reloads_in_a_fresh_session_from_the_features_column(spark, trained, tmp_path):
    _, output = trained
    script = textwrap.dedent("""
        import json, sys
        from pyspark.ml import PipelineModel
        from pyspark.ml.functions import vector_to_array
        from orchard.config import SparkOptions
        from orchard.spark import get_session

        spark = get_session(SparkOptions(master="local[1]", app_name="reload"))
        model = PipelineModel.load(sys.argv[1])
        rows = model.transform(spark.read.parquet(sys.argv[2]).where("split = 'Test'"))
        found = rows.select("path", "predicted_label", vector_to_array("probability").alias("p")).collect()
        json.dump({row.path: [row.predicted_label, row.p] for row in found}, open(sys.argv[3], "w"))
        spark.stop()
    """)
    answer = tmp_path / "reloaded.json"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    env.pop("SPARK_CONNECT_MODE_ENABLED", None)  # pyspark sets it in a process with a Connect session; the reload
    # is a classic session on purpose (on the Connect suite: a model written through Connect, read by classic)
    done = subprocess.run([sys.executable, "-c", script, str(output / "classifier" / "model"),
                           str(output / "features"), str(answer)], capture_output=True, text=True, timeout=180,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    reloaded = json.loads(answer.read_text())
    here = spark_predictions(spark, output / "classifier", output)
    assert sorted(reloaded) == here["path"].tolist()
    for path, label, probability in zip(here["path"], here["predicted_label"], here["probability"], strict=True):
        assert reloaded[path][0] == label
        np.testing.assert_allclose(reloaded[path][1], probability, atol=1e-12)


@pytest.mark.spark
def test_predictor_gives_the_spark_models_probabilities(spark, trained):
    _, output = trained
    expected = spark_predictions(spark, output / "classifier", output)
    predictor = Predictor.load(str(output))
    spark_probabilities = np.stack(expected["probability"].to_numpy())
    from_features = predictor.probabilities_from_features(np.stack(expected["features"].to_numpy()))
    np.testing.assert_allclose(from_features, spark_probabilities, atol=1e-9)
    from_images = predictor.probabilities(expected["path"].tolist())  # decode + ONNX Runtime + NumPy
    np.testing.assert_allclose(from_images, spark_probabilities, atol=1e-5)
    best = predictor.predict(expected["path"].tolist(), top_k=2)
    assert [pairs[0][0] for pairs in best] == expected["predicted_label"].tolist()
    assert all(len(pairs) == 2 and pairs[0][1] >= pairs[1][1] for pairs in best)


@pytest.mark.spark
def test_predictor_runs_without_importing_pyspark_onnx_or_pandas(trained):
    _, output = trained
    image = next((output.parent / "fruits" / "Test").glob("*/*.jpg"))
    script = textwrap.dedent("""
        import json, sys
        from orchard.predict import Predictor

        predictor = Predictor.load(sys.argv[1])
        best = predictor.predict([sys.argv[2]], top_k=1)
        near = predictor.similar(sys.argv[2], k=2)
        heavy = ("pyspark", "py4j", "onnx", "pandas", "tensorflow")  # slow imports a cold start must not pay for
        print(json.dumps({"best": best, "near": len(near),
                          "heavy": sorted(m for m in sys.modules if m.split(".")[0] in heavy)}))
    """)
    done = subprocess.run([sys.executable, "-c", script, str(output), str(image)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["heavy"] == [] and report["near"] == 2 and len(report["best"][0]) == 1


@pytest.mark.spark
def test_predict_cli_prints_top_k_per_photo_and_reports_bad_ones(trained, tmp_path):
    _, output = trained
    images = sorted(str(p) for p in (output.parent / "fruits" / "Test").glob("*/0_100.jpg"))[:2]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a photo at all")
    done = orchard("predict", str(output), *images, str(broken), "--top-k", "3")
    assert done.returncode == 1, done.stderr
    lines = done.stdout.strip().splitlines()
    expected = Predictor.load(str(output)).predict(images, top_k=3)
    assert len(lines) == 2
    for line, image, best in zip(lines, images, expected, strict=True):
        assert line == f"{image}: " + ", ".join(f"{name} {p:.3f}" for name, p in best)
    assert f"{broken}: error (decode)" in done.stderr and "RANDOM weights" in done.stderr
    assert "Traceback" not in done.stderr
    as_json = orchard("predict", str(output / "classifier"), images[0], "--top-k", "2", "--json")
    assert as_json.returncode == 0, as_json.stderr
    parsed = json.loads(as_json.stdout)[images[0]]
    assert [row["label"] for row in parsed] == [name for name, _ in expected[0][:2]]


@pytest.mark.spark
def test_similar_returns_the_query_image_first(trained):
    _, output = trained
    features = pd.read_parquet(output / "features")
    query = features[features["split"] == "Test"].iloc[3]
    predictor = Predictor.load(str(output / "classifier" / "predictor"))
    neighbours = predictor.similar(query["path"], k=5)
    assert len(neighbours) == 5
    assert (neighbours[0].path, neighbours[0].label) == (query["path"], query["label"])
    assert neighbours[0].distance < 1e-3 < neighbours[1].distance
    assert [n.distance for n in neighbours] == sorted(n.distance for n in neighbours)
    done = orchard("similar", str(output), query["path"].removeprefix("file:"), "-k", "3")
    assert done.returncode == 0, done.stderr
    rows = [line.split("\t") for line in done.stdout.strip().splitlines()]
    assert [row[0] for row in rows] == ["1", "2", "3"]
    assert rows[0][2:] == [query["label"], query["path"]]
    assert [row[3] for row in rows] == [n.path for n in neighbours[:3]]


@pytest.mark.spark
def test_training_on_raw_features_replaces_the_classifier(spark, trained, tmp_path):
    _, output = trained
    copy = tmp_path / "out"
    shutil.copytree(output, copy)
    (copy / STAGING).mkdir()
    (copy / STAGING / "left-by-an-interrupted-train").write_text("stale")
    result = train(str(copy), spark=spark, features="raw")
    assert result.metrics["features_used"] == "raw"
    assert json.loads((copy / "classifier" / "metrics.json").read_text())["features_used"] == "raw"
    assert json.loads((copy / "run.json").read_text())["classifier"]["features_used"] == "raw"
    assert not (copy / STAGING).exists() and not (copy / "classifier.old").exists()
    expected = spark_predictions(spark, copy / "classifier", copy)
    predictor = Predictor.load(str(copy))
    np.testing.assert_allclose(predictor.probabilities_from_features(np.stack(expected["features"].to_numpy())),
                               np.stack(expected["probability"].to_numpy()), atol=1e-9)
    # similar still searches the run's PCA space
    query = expected["path"].iloc[0]
    assert predictor.similar(query, k=1)[0].path == query


@pytest.mark.spark
def test_user_mistakes_are_one_line_errors(spark, trained, tmp_path):
    _, output = trained
    with pytest.raises(ConfigError, match=r"no 'Validation' images in the run .* --test-split"):
        train(str(output), spark=spark, test_split="Validation")
    with pytest.raises(ConfigError, match="--features must be one of pca, raw"):
        train(str(output), spark=spark, features="pixels")

    missing_class = tmp_path / "missing-class"
    shutil.copytree(output, missing_class, ignore=shutil.ignore_patterns("classifier"))
    features = pd.read_parquet(missing_class / "features")
    shutil.rmtree(missing_class / "features")
    (missing_class / "features").mkdir()
    kept = features[~((features["label"] == "Apricot") & (features["split"] == "Training"))]
    kept.to_parquet(missing_class / "features" / "part-00000.parquet")
    with pytest.raises(ConfigError, match="Apricot have 'Test' images but no 'Training' image"):
        train(str(missing_class), spark=spark)
    with pytest.raises(ConfigError, match=r"no classifier in .*: run `orchard train"):
        Predictor.load(str(missing_class))

    changed = tmp_path / "changed-weights"
    shutil.copytree(output, changed, ignore=shutil.ignore_patterns("classifier"))
    info = json.loads((changed / "run.json").read_text())
    info["model"]["onnx_sha256"] = "0" * 64
    (changed / "run.json").write_text(json.dumps(info))
    with pytest.raises(ConfigError, match="the weights file changed since the run"):
        train(str(changed), spark=spark)

    tampered = tmp_path / "tampered"
    shutil.copytree(output / "classifier" / "predictor", tampered)
    with open(tampered / "predictor.npz", "ab") as handle:
        handle.write(b"x")
    with pytest.raises(ConfigError, match="does not match the checksum"):
        Predictor.load(str(tampered))

    done = orchard("train", str(tmp_path / "absent"))
    assert done.returncode == 2 and "no orchard output at" in done.stderr and "Traceback" not in done.stderr
    done = orchard("predict", str(output), "x.jpg", "--top-k", "0")
    assert done.returncode == 2 and "--top-k must be at least 1" in done.stderr
