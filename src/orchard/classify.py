"""A fruit classifier on a finished run: Spark MLlib logistic regression, evaluated on the Test split.

`train(OUT)` fits a multinomial logistic regression on the Training images' PCA (or raw 1280-D) features
and evaluates it on the Test images. Everything goes under the run folder, in `classifier/`:

- `model/`: a complete `PipelineModel` that takes the raw `features` column (array<float>[1280]):
  array -> vector, [StandardScaler if the run standardised], PCA (the run's own model), logistic
  regression, class index -> name (`predicted_label`). `PipelineModel.load` reloads it in any session.
- `confusion/`: Parquet (label, predicted, count) on the Test split.
- `metrics.json`: accuracy, macro F1, per-class precision/recall/F1/support, and the classes `not_scored`
  (no test images: they have no recall, so they are left out of the macro F1).
- `predictor/`: what `orchard.predict.Predictor` needs to classify photos without Spark: the run's
  ONNX model, the scaler/PCA/classifier as NumPy arrays, and the collection's PCA vectors for `similar`.

The folder is built under `_classifier.tmp` and swapped in at the end, so an interrupted `train` never
leaves a classifier that looks complete; run.json then gets a "classifier" entry with the metrics.
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs
from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable

from orchard import __version__, record, s3a
from orchard.config import ALGORITHMS, FEATURE_SPACES, SparkOptions
from orchard.errors import ConfigError
from orchard.featurize import weights
from orchard.io import fs
from orchard.io.fs import StorageOptions
from orchard.output import Layout, finished_run
from orchard.predict import PREDICTOR_FILES, PREDICTOR_FORMAT
from orchard.record import RunRecord


class ArrayToVector(Transformer, HasInputCol, HasOutputCol, DefaultParamsReadable, DefaultParamsWritable):
    """Pipeline stage: an array<float> column (orchard's `features`) -> an MLlib vector column.

    It lets the saved classifier take orchard's Parquet rows as they are. A Python stage: the pipeline
    reloads wherever orchard is importable (PySpark), not from Scala.
    """

    @keyword_only
    def __init__(self, *, inputCol: str = "features", outputCol: str = "vector"):
        super().__init__()
        self._setDefault(inputCol="features", outputCol="vector")
        self._set(**self._input_kwargs)

    def _transform(self, dataset):
        from pyspark.ml.functions import array_to_vector

        return dataset.withColumn(self.getOutputCol(), array_to_vector(self.getInputCol()))


@dataclass(frozen=True)
class TrainResult:
    """What `train` produced: the metrics (also in metrics.json and run.json) and the classifier folder."""

    metrics: dict
    model_dir: str

    def summary(self) -> str:
        """A few lines for the terminal: accuracy, macro F1 and the weakest classes."""
        m = self.metrics
        lines = [f"classifier: {m['algorithm']} on {m['features_used']} features, {len(m['classes'])} classes, "
                 f"{m['train_images']} training / {m['test_images']} test images",
                 f"accuracy {m['accuracy']:.3f}, macro F1 {m['macro_f1']:.3f}",
                 f"written to {self.model_dir} (model/, confusion/, metrics.json, predictor/)"]
        not_scored = m.get("not_scored", [])  # absent from metrics written before orchard recorded it
        if not_scored:
            lines[1] += f" over {len(m['classes']) - len(not_scored)} of {len(m['classes'])} classes"
            lines.insert(2, f"not scored (no {m['test_split']} images): {', '.join(not_scored)}")
        weakest = sorted((row for row in m["per_class"] if row["label"] not in not_scored),
                         key=lambda row: row["f1"])[:3]
        lines.append("lowest F1: " + ", ".join(f"{row['label']} {row['f1']:.2f}" for row in weakest))
        if not m["weights_meaningful"]:
            lines.insert(0, "WARNING: the run used RANDOM weights: these numbers say nothing about real photos")
        return "\n".join(lines)


def train(output: str, *, spark=None, features: str = "pca", algorithm: str = "logistic",
          train_split: str = "Training", test_split: str = "Test", reg_param: float = 0.01,
          max_iter: int = 100, spark_options: SparkOptions | None = None,
          storage: StorageOptions | None = None) -> TrainResult:
    """Fit the classifier on `train_split`, evaluate it on `test_split`, write `classifier/` under the run.

    `output` is a run folder or a versioned store (its latest version is used). `features` is "pca" (the
    run's PCA vectors) or "raw" (the 1280-D features). `reg_param` is the L2 strength: a little keeps the
    fit stable when classes are separable, which they often are with few images per class. Without
    `spark`, a session is made from `spark_options`; `storage` sets the S3 endpoint/region for s3:// outputs.
    """
    if features not in FEATURE_SPACES:
        raise ConfigError(f"--features must be one of {', '.join(FEATURE_SPACES)}, got {features!r}")
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"--algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
    if reg_param < 0 or max_iter < 1:
        raise ConfigError("--reg-param must be >= 0 and --max-iter >= 1")
    storage = storage or StorageOptions.from_env()
    with fs.using_storage(storage):
        layout = Layout(finished_run(output))
        info = record.read(layout.run_json)
        onnx_bytes = run_onnx_bytes(info)  # before Spark starts: a changed weights file fails in a second
        if spark is None:
            from orchard.spark import get_session

            spark = get_session(spark_options, s3a.spark_conf(storage, layout.root))

        from pyspark.ml import PipelineModel
        from pyspark.sql import functions as F

        rows = spark.read.parquet(layout.features)
        classes, train_images, test_images = check_splits(rows, train_split, test_split)
        index_of = F.create_map(*[F.lit(value) for i, name in enumerate(classes) for value in (name, float(i))])
        training = rows.where(F.col("split") == train_split).withColumn("label_index", index_of[F.col("label")])
        reduction = PipelineModel.load(layout.model)
        model = classifier_pipeline(reduction, features, classes, reg_param, max_iter).fit(training)

        staging = layout.classifier_staging
        fs.remove_tree(staging.root)  # what an interrupted train left
        model.write().save(staging.model)
        confusion_uri = staging.confusion
        (model.transform(rows.where(F.col("split") == test_split))
         .groupBy("label", F.col("predicted_label").alias("predicted")).count()
         .orderBy("label", "predicted").coalesce(1).write.parquet(confusion_uri))
        confusion = fs.read_columns(confusion_uri).to_pylist()
        metrics = {"algorithm": algorithm, "features_used": features, "reg_param": reg_param, "max_iter": max_iter,
                   "train_split": train_split, "test_split": test_split, "train_images": train_images,
                   "test_images": test_images, **scores(confusion, classes),
                   "weights_meaningful": info.model.meaningful,
                   "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_predictor(staging.predictor, model, reduction, features, classes, onnx_bytes, layout, info)
        fs.write_json(staging.metrics, metrics)
        swap_in(staging.root, layout.classifier.root)
        updated = record.read(layout.run_json)
        updated.classifier = metrics
        record.write(layout.run_json, updated)
        return TrainResult(metrics, layout.classifier.root)


def classifier_pipeline(reduction, features: str, classes: list[str], reg_param: float, max_iter: int):
    """array -> vector, [the run's scaler and PCA when `features` is "pca"], logistic regression, index -> name.

    The run's fitted stages are Transformers, so fitting the Pipeline fits only the classifier.
    """
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import IndexToString

    vector_column = reduction.stages[0].getInputCol()
    space = reduction.stages[-1].getOutputCol() if features == "pca" else vector_column
    return Pipeline(stages=[
        ArrayToVector(inputCol="features", outputCol=vector_column),
        *(reduction.stages if features == "pca" else []),
        LogisticRegression(featuresCol=space, labelCol="label_index", family="multinomial", regParam=reg_param,
                           maxIter=max_iter),
        IndexToString(inputCol="prediction", outputCol="predicted_label", labels=classes)])


def run_onnx_bytes(info: RunRecord) -> bytes:
    """The run's ONNX model rebuilt from its weights and seed, checked against run.json's sha256."""
    config, recorded = info.config, info.model
    if recorded.precision != "fp32":
        raise ConfigError(f"the run used --precision {recorded.precision}, whose calibrated model is not kept "
                          "in the output: rerun `orchard run` with --precision fp32 to train a classifier")
    source = weights.model_source(config["weights"], config["seed"], download=False)
    if source.onnx_sha256 != recorded.onnx_sha256:
        raise ConfigError(f"--weights {config['weights']} now gives a different model (onnx sha256 "
                          f"{source.onnx_sha256[:12]}, the run used {recorded.onnx_sha256[:12]}): the weights "
                          "file changed since the run; restore it or rerun `orchard run`")
    return source.onnx_bytes


def check_splits(rows, train_split: str, test_split: str) -> tuple[list[str], int, int]:
    """(classes, training images, test images); ConfigError when a split or a class's training data is missing."""
    counts: dict[str, dict[str, int]] = {}
    for row in rows.groupBy("split", "label").count().collect():
        counts.setdefault(row["split"], {})[row["label"]] = row["count"]
    found = ", ".join(sorted(counts)) or "none"
    for split, option in ((train_split, "--train-split"), (test_split, "--test-split")):
        if split not in counts:
            raise ConfigError(f"no {split!r} images in the run (splits found: {found}): run `orchard run` on a "
                              f"collection with {split}/<class>/ folders, or name the split with {option}")
    classes = sorted(counts[train_split])
    if len(classes) < 2:
        raise ConfigError(f"the {train_split!r} split has {len(classes)} class(es): a classifier needs at least 2")
    unseen = sorted(set(counts[test_split]) - set(classes))
    if unseen:
        raise ConfigError(f"class(es) {', '.join(unseen[:5])} have {test_split!r} images but no {train_split!r} "
                          f"image: add training images for them, or rerun `orchard run` with --classes without them")
    return classes, sum(counts[train_split].values()), sum(counts[test_split].values())


def scores(confusion: list[dict], classes: list[str]) -> dict:
    """Accuracy, macro F1 and per-class precision/recall/F1/support from (label, predicted, count) rows.

    Classes without test images are `not_scored`: they have no recall, so the macro F1 leaves them out (their
    wrong predictions still cost the classes they were taken from).
    """
    position = {name: i for i, name in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), np.int64)
    for row in confusion:
        matrix[position[row["label"]], position[row["predicted"]]] += row["count"]
    hits, support, predicted = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
    precision = np.divide(hits, predicted, out=np.zeros(len(classes)), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros(len(classes)), where=support > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros(len(classes)), where=total > 0)
    scored = support > 0
    return {"accuracy": float(hits.sum() / max(matrix.sum(), 1)), "macro_f1": float(f1[scored].mean()),
            "classes": classes, "not_scored": [name for name, seen in zip(classes, scored, strict=True) if not seen],
            "per_class": [{"label": name, "precision": float(precision[i]), "recall": float(recall[i]),
                           "f1": float(f1[i]), "support": int(support[i])} for i, name in enumerate(classes)]}


def write_predictor(folder: str, model, reduction, features: str, classes: list[str], onnx_bytes: bytes,
                    layout: Layout, info: RunRecord) -> None:
    """The Spark-free bundle: model.onnx, predictor.npz (NumPy arrays) and predictor.json (checksums)."""
    import numpy
    import onnxruntime
    import pyspark
    from pyspark.ml.feature import StandardScalerModel

    classifier = model.stages[-2]
    pca = reduction.stages[-1]
    arrays = {"classes": np.array(classes), "coefficients": classifier.coefficientMatrix.toArray(),
              "intercepts": classifier.interceptVector.toArray(), "pca_components": pca.pc.toArray()}
    for scaler in (stage for stage in reduction.stages if isinstance(stage, StandardScalerModel)):
        arrays["scaler_mean"], arrays["scaler_std"] = scaler.mean.toArray(), scaler.std.toArray()
    collection = fs.read_columns(layout.pca, ["path", "label", "pca"])
    vectors = collection["pca"].combine_chunks()
    arrays["collection_pca"] = vectors.flatten().to_numpy().reshape(len(vectors), -1)
    arrays["collection_paths"] = np.array(collection["path"].to_pylist())
    arrays["collection_labels"] = np.array(collection["label"].to_pylist())
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    files = dict(zip(PREDICTOR_FILES, (onnx_bytes, buffer.getvalue()), strict=True))
    for name, data in files.items():
        fs.write_bytes(fs.join(folder, name), data)
    config, model = info.config, info.model
    fs.write_json(fs.join(folder, "predictor.json"), {
        "format": PREDICTOR_FORMAT, "orchard_version": __version__, "features_used": features,
        "classes": classes, "k": int(pca.getK()), "standardized": "scaler_mean" in arrays,
        "collection_images": len(vectors), "run": layout.root,
        "model": {"weights": model.weights, "description": model.description, "meaningful": model.meaningful,
                  "onnx_sha256": model.onnx_sha256},
        "limits": {"max_pixels": config["max_pixels"], "max_bytes": config["max_bytes"]},
        "versions": {"numpy": numpy.__version__, "onnxruntime": onnxruntime.__version__,
                     "pyspark": pyspark.__version__},
        "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
    })


def swap_in(staging: str, final: str) -> None:
    """Replace `final` with the finished `staging` folder.

    Locally two renames (a reader sees the old classifier, none, or the new one, never a mix). Object stores
    have no folder rename: the files are copied and predictor.json's checksums catch a half-copied bundle.
    """
    filesystem, staging_path = fs.filesystem_and_path(staging)
    final_path = fs.filesystem_and_path(final)[1]
    retired = final + ".old"
    if isinstance(filesystem, pafs.LocalFileSystem):
        fs.remove_tree(retired)
        if fs.exists(final):
            filesystem.move(final_path, final_path + ".old")
        filesystem.move(staging_path, final_path)
        fs.remove_tree(retired)
    else:
        fs.remove_tree(final)
        pafs.copy_files(staging_path, final_path, source_filesystem=filesystem, destination_filesystem=filesystem)
        fs.remove_tree(staging)
