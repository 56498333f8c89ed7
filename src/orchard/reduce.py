"""PCA as Spark MLlib models: k given, or the smallest k that keeps a share of the variance.

The fitted model is a PipelineModel (optional StandardScalerModel, then PCAModel) over a `vector` column
made with `array_to_vector(features)`, so it transforms new feature rows later. MLlib's PCA estimator
aggregates rank-one updates row by row (BLAS level 2) and decomposes the covariance in the JVM; here one
Spark job (one pass) sums each partition's mean and centred scatter matrix (NumPy, level 3), the driver
merges them (Chan's formula) and decomposes the 1280x1280 covariance (`eigh`, one BLAS thread: on two
cores shared with the JVM, LAPACK's threads mostly wait for each other), and mllib.py writes the standard
MLlib model folder that `PipelineModel.load` reads: the same on every engine. The run projects its own
rows with the same arrays in NumPy (`Projection`, a mapInArrow), not through the JVM's model. The models
equal those of MLlib's estimators up to the sign of each component (checked in the tests); a component's
sign is fixed here so that its largest entry is positive. Note: MLlib's PCAModel projects without centring
(unlike scikit-learn); explained variance ratios are the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain

import numpy as np

from orchard import mllib
from orchard.config import RunConfig, effective_k_rule
from orchard.featurize.contract import FEATURE_DIM

MOMENTS_SCHEMA = "count long, mean binary, scatter binary"
MOMENTS_BLOCK = 2048  # rows per scatter-matrix update (~10 MB of float32 features)


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


@dataclass(frozen=True)
class Moments:
    """Count, mean and centred scatter matrix (sum of outer products of x - mean) of feature vectors."""

    count: int
    mean: np.ndarray  # float64 [d]
    scatter: np.ndarray  # float64 [d, d]

    @classmethod
    def of(cls, matrix: np.ndarray) -> Moments:
        """The moments of the rows of `matrix`."""
        rows = np.asarray(matrix, np.float64)
        mean = rows.mean(axis=0)
        centred = rows - mean
        return cls(len(rows), mean, centred.T @ centred)

    def merge(self, other: Moments) -> Moments:
        """The moments of both sets of rows (Chan et al.'s pairwise update: no cancellation of large means)."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        count = self.count + other.count
        delta = other.mean - self.mean
        return Moments(count, self.mean + delta * (other.count / count),
                       self.scatter + other.scatter + np.outer(delta, delta) * (self.count * other.count / count))

    def covariance(self) -> np.ndarray:
        """The sample covariance (n - 1 in the denominator, as MLlib's)."""
        return self.scatter / (self.count - 1)

    def to_row(self) -> dict:
        """One row of MOMENTS_SCHEMA (float64 bytes)."""
        return {"count": self.count, "mean": self.mean.tobytes(), "scatter": self.scatter.tobytes()}

    @classmethod
    def from_row(cls, row) -> Moments:
        """Back from `to_row`."""
        mean = np.frombuffer(row["mean"], np.float64)
        return cls(int(row["count"]), mean, np.frombuffer(row["scatter"], np.float64).reshape(len(mean), -1))


def partition_moments(batches: Iterator) -> Iterator:
    """mapInArrow function: Arrow batches of a `features` list column -> one MOMENTS_SCHEMA row.

    Rows are gathered into blocks of MOMENTS_BLOCK before each update: one large matrix product costs
    less than many small ones plus their merges.
    """
    import pyarrow as pa

    total = Moments(0, np.zeros(FEATURE_DIM), np.zeros((FEATURE_DIM, FEATURE_DIM)))
    block: list[np.ndarray] = []
    for batch in chain(batches, [None]):  # None: the end, flush the last block (batches stream, never all held)
        if batch is not None and batch.num_rows:
            block.append(batch.column(0).flatten().to_numpy(zero_copy_only=False).reshape(batch.num_rows, -1))
        if block and (batch is None or sum(len(rows) for rows in block) >= MOMENTS_BLOCK):
            total = total.merge(Moments.of(np.concatenate(block)))
            block = []
    yield pa.RecordBatch.from_pylist([total.to_row()])


def moments(features) -> Moments:
    """The moments of a DataFrame's `features` column: one pass; each partition's partial moments (13 MB)
    stream to the driver and merge there (the next partition is computed while one is merged)."""
    partials = features.select("features").mapInArrow(partition_moments, MOMENTS_SCHEMA)
    total = Moments(0, np.zeros(FEATURE_DIM), np.zeros((FEATURE_DIM, FEATURE_DIM)))
    for row in partials.toLocalIterator(prefetchPartitions=True):
        total = total.merge(Moments.from_row(row))
    return total


def principal_components(covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(explained variance ratio per component, components as columns), largest first, signs fixed."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        eigenvalues, vectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, vectors = np.clip(eigenvalues[order], 0.0, None), vectors[:, order]
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    vectors = vectors * np.where(signs == 0, 1.0, signs)
    total = eigenvalues.sum()
    return (eigenvalues / total if total > 0 else eigenvalues), vectors


@dataclass(frozen=True)
class Projection:
    """A fitted reduction as arrays: optional standardisation (mean, scale = 1/std, 0 for constant features),
    then the components (d x k), as MLlib's StandardScalerModel and PCAModel compute it (float64)."""

    components: np.ndarray
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None

    @property
    def k(self) -> int:
        """The number of components kept."""
        return self.components.shape[1]

    def apply(self, rows: np.ndarray) -> np.ndarray:
        """Feature rows [n, d] -> their projections [n, k] (float32, as the `pca` column)."""
        x = np.asarray(rows, np.float64)
        if self.mean is not None:
            x = (x - self.mean) * self.scale
        return (x @ self.components).astype(np.float32)

    @classmethod
    def read(cls, model_uri: str) -> Projection:
        """The arrays of a model folder this module wrote (or MLlib's estimators saved)."""
        data = {java_class.rsplit(".", 1)[-1]: cells for java_class, cells in mllib.read_pipeline_model(model_uri)}
        scaler = data.get("StandardScalerModel")
        if scaler is None:
            return cls(data["PCAModel"]["pc"])
        return cls(data["PCAModel"]["pc"], scaler["mean"], _inverse(scaler["std"]))


def _inverse(std: np.ndarray) -> np.ndarray:
    return np.divide(1.0, std, out=np.zeros_like(std), where=std > 0)  # MLlib: constant features -> 0


def fit(features, config: RunConfig, model_uri: str) -> tuple[Projection, PcaSummary]:
    """Fit the reduction on a DataFrame with a `features` array column and save it at `model_uri` (MLlib's
    PipelineModel format). Returns (Projection, PcaSummary).

    Every component's explained variance is computed whatever the rule (one decomposition gives them all).
    """
    rule, target = effective_k_rule(config)  # RunConfig keeps --k within the feature size
    stats = moments(features)
    covariance = stats.covariance()
    stages, mean, scale = [], None, None
    if config.standardize:
        std = np.sqrt(np.diag(covariance))
        mean, scale = stats.mean, _inverse(std)
        covariance = covariance * np.outer(scale, scale)
        stages.append(scaler_stage(stats.mean, std))
    explained, components = principal_components(covariance)
    k = int(target) if rule == "k" else choose_k(explained.tolist(), target)
    stages.append(pca_stage(components[:, :k], explained[:k], "scaled" if config.standardize else "vector"))
    mllib.write_pipeline_model(model_uri, stages, features.sparkSession.version)
    projection = Projection(np.ascontiguousarray(components[:, :k]), mean, scale)
    return projection, PcaSummary(k, rule, target, explained.tolist(), config.standardize)


def scaler_stage(mean: np.ndarray, std: np.ndarray) -> mllib.Stage:
    """MLlib's StandardScalerModel (withMean, withStd) for `mean` and sample `std`, vector -> scaled."""
    return mllib.Stage("org.apache.spark.ml.feature.StandardScalerModel", "stdScal",
                       {"withMean": True, "withStd": True, "inputCol": "vector", "outputCol": "scaled"},
                       {"withMean": False, "withStd": True},
                       {"std": mllib.dense_vector(std), "mean": mllib.dense_vector(mean)})


def pca_stage(components: np.ndarray, explained: np.ndarray, input_col: str) -> mllib.Stage:
    """MLlib's PCAModel with `components` (d x k, as columns) and their explained variance, input -> pca_vector."""
    return mllib.Stage("org.apache.spark.ml.feature.PCAModel", "pca",
                       {"k": components.shape[1], "inputCol": input_col, "outputCol": "pca_vector"}, {},
                       {"pc": mllib.dense_matrix(components), "explainedVariance": mllib.dense_vector(explained)})


def transform(projection: Projection, features):
    """Rows with a `features` array -> the same rows with `pca` (array<float>, k values) instead: one
    mapInArrow, in NumPy, no MLlib vectors."""
    import pyarrow as pa

    keep = [c for c in features.columns if c != "features"]
    out_schema = ", ".join([*(f"`{f.name}` {f.dataType.simpleString()}" for f in features.schema.fields
                              if f.name in keep), "pca array<float>"])

    def project(batches: Iterator) -> Iterator:
        for batch in batches:
            matrix = batch.column("features").flatten().to_numpy(zero_copy_only=False).reshape(-1, FEATURE_DIM)
            values = pa.array(projection.apply(matrix).reshape(-1), pa.float32())
            pca = pa.ListArray.from_arrays(pa.array(np.arange(batch.num_rows + 1) * projection.k, pa.int32()),
                                           values)
            yield pa.RecordBatch.from_arrays([*(batch.column(name) for name in keep), pca], [*keep, "pca"])

    return features.mapInArrow(project, out_schema)


def with_vector(features):
    """The rows with a `vector` column (MLlib vector) made from the `features` array, as the model expects."""
    from pyspark.ml.functions import array_to_vector

    return features.withColumn("vector", array_to_vector("features"))
