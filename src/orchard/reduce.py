"""PCA with Spark MLlib: k given, or the smallest k that keeps a share of the variance.

The fitted model is a PipelineModel (optional StandardScaler, then PCA) over a `vector` column made with
`array_to_vector(features)`, so it transforms new feature rows later. Note: MLlib's PCAModel projects
without centring (unlike scikit-learn); explained variance ratios are the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from orchard.config import RunConfig, effective_k_rule
from orchard.errors import ConfigError
from orchard.featurize.contract import FEATURE_DIM


@dataclass(frozen=True)
class PcaSummary:
    """What the reduction kept: k, the rule that chose it and the explained variance per component."""

    k: int
    rule: str  # "k" or "variance"
    target: float
    explained: list[float]  # ratio per component, for every component that was computed
    standardized: bool

    @property
    def cumulative(self) -> list[float]:
        """Cumulative explained variance ratio, per component."""
        return np.cumsum(self.explained).tolist()

    @property
    def kept_share(self) -> float:
        """Share of the variance the k kept components explain."""
        return float(sum(self.explained[: self.k]))

    @classmethod
    def from_dict(cls, values: dict) -> PcaSummary:
        """The summary recorded in run.json (its "pca" entry)."""
        return cls(values["k"], values["rule"], values["target"], values["explained_variance"],
                   values["standardized"])

    def to_dict(self) -> dict:
        """The summary as run.json's `pca` entry (read back by `from_dict`)."""
        return {"k": self.k, "rule": self.rule, "target": self.target, "standardized": self.standardized,
                "kept_variance": self.kept_share, "explained_variance": self.explained,
                "cumulative_variance": self.cumulative}


def choose_k(explained: list[float], share: float) -> int:
    """Smallest k whose cumulative explained variance reaches `share` (with float tolerance)."""
    cumulative = np.cumsum(explained)
    reached = np.nonzero(cumulative >= share - 1e-9)[0]
    return int(reached[0]) + 1 if len(reached) else len(explained)


def fit(features, config: RunConfig):
    """Fit the reduction on a DataFrame with a `features` array column. Returns (PipelineModel, PcaSummary)."""
    rule, target = effective_k_rule(config)
    if rule == "k" and target > FEATURE_DIM:
        raise ConfigError(f"--k {int(target)} is above the feature size {FEATURE_DIM}: choose k <= {FEATURE_DIM}")
    # No cache: MLlib's PCA makes two passes (column means, Gramian) and re-reading Parquet is cheap,
    # while a cache would make the driver's memory grow with the number of images.
    vectors = with_vector(features)
    if rule == "k":
        model = _pipeline(int(target), config.standardize).fit(vectors)
        summary = PcaSummary(int(target), rule, target, _explained(model), config.standardize)
    else:
        full = _pipeline(FEATURE_DIM, config.standardize).fit(vectors)
        explained = _explained(full)
        k = choose_k(explained, target)
        model = truncate(full, k)
        summary = PcaSummary(k, rule, target, explained, config.standardize)
    return model, summary


def truncate(model, k: int):
    """The same PipelineModel keeping only the first k components (no second pass over the data).

    MLlib computes every component in one eigen-decomposition; keeping k columns of its matrix gives
    exactly the model a fit with k would give (checked in the tests), without paying for that fit again.
    """
    from pyspark.ml import PipelineModel

    full = model.stages[-1]
    if full.getK() == k:
        return model
    components = full.pc.toArray()[:, :k]
    return PipelineModel([*model.stages[:-1], _pca_model(full, components, full.explainedVariance.toArray()[:k])])


def _pca_model(template, components, explained):
    """A PCAModel with the given component matrix, carrying the template's columns and uid."""
    from pyspark import SparkContext
    from pyspark.ml.common import _py2java
    from pyspark.ml.feature import PCAModel
    from pyspark.ml.linalg import DenseMatrix, DenseVector

    context = SparkContext._active_spark_context
    rows, k = components.shape
    matrix = DenseMatrix(rows, k, components.flatten(order="F").tolist())
    java = context._jvm.org.apache.spark.ml.feature.PCAModel(
        template.uid, _py2java(context, matrix), _py2java(context, DenseVector(explained)))
    java.set(java.getParam("k"), k)
    java.setInputCol(template.getInputCol())
    java.setOutputCol(template.getOutputCol())
    model = PCAModel(java)
    model._transfer_params_from_java()
    return model


def transform(model, features):
    """Rows with a `features` array -> the same rows with `pca` (array<float>, k values) instead."""
    from pyspark.ml.functions import vector_to_array

    projected = model.transform(with_vector(features))
    keep = [c for c in features.columns if c != "features"]
    return projected.select(*keep, vector_to_array("pca_vector", "float32").alias("pca"))


def with_vector(features):
    """The rows with a `vector` column (MLlib vector) made from the `features` array, as the model expects."""
    from pyspark.ml.functions import array_to_vector

    return features.withColumn("vector", array_to_vector("features"))


def _pipeline(k: int, standardize: bool):
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import PCA, StandardScaler

    stages = []
    source = "vector"
    if standardize:
        stages.append(StandardScaler(withMean=True, withStd=True, inputCol="vector", outputCol="scaled"))
        source = "scaled"
    stages.append(PCA(k=k, inputCol=source, outputCol="pca_vector"))
    return Pipeline(stages=stages)


def _explained(model) -> list[float]:
    return [float(v) for v in model.stages[-1].explainedVariance.toArray()]
