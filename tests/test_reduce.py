"""PCA (reduce.py): the one-pass fit against MLlib's estimators and scikit-learn, the datasets and model it writes.

Most tests read conftest's `finished` pipeline run (the one test_pipeline.py reads too).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from orchard.config import RunConfig


@pytest.mark.spark
def test_pca_and_variance_datasets(finished):
    result, output, _ = finished
    info = result.info
    k = info["pca"]["k"]
    pca = pd.read_parquet(output / "pca")
    assert len(pca) == info["counts"]["ok"]
    assert {len(v) for v in pca["pca"]} == {k}
    assert pca["pca"].iloc[0].dtype == np.float32
    assert info["pca"]["kept_variance"] >= 0.95 > sum(info["pca"]["explained_variance"][: k - 1])
    variance = pd.read_parquet(output / "variance")
    assert variance["kept"].sum() == k
    assert np.allclose(variance["cumulative_variance"], np.cumsum(variance["explained_variance"]))


@pytest.mark.spark
def test_saved_model_transforms_new_rows_like_the_run(finished, spark):
    from pyspark.ml import PipelineModel

    from orchard import reduce

    _, output, _ = finished
    from pyspark.ml.functions import vector_to_array

    model = PipelineModel.load(str(output / "model"))
    features = spark.read.parquet(str(output / "features")).limit(5)
    again = model.transform(reduce.with_vector(features)).select(
        "path", vector_to_array("pca_vector", "float32").alias("pca")).toPandas().set_index("path")
    written = pd.read_parquet(output / "pca").set_index("path").loc[again.index]
    np.testing.assert_allclose(np.stack(again["pca"]), np.stack(written["pca"]), rtol=1e-6, atol=1e-6)


@pytest.mark.spark
def test_explained_variance_matches_scikit_learn(finished):
    from sklearn.decomposition import PCA

    result, output, _ = finished
    matrix = np.stack(pd.read_parquet(output / "features")["features"].to_numpy()).astype(np.float64)
    reference = PCA().fit(matrix).explained_variance_ratio_
    ours = np.array(result.info["pca"]["explained_variance"])
    np.testing.assert_allclose(ours[:10], reference[:10], rtol=1e-6)


@pytest.mark.spark
@pytest.mark.parametrize("standardize", [False, True])
def test_fit_equals_mllib_estimators_and_scikit_learn(finished, spark, standardize, tmp_path):
    """orchard's one-pass fit builds the models MLlib's StandardScaler + PCA estimators fit (up to sign)."""
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.feature import PCA, StandardScaler
    from sklearn.decomposition import PCA as SkPCA

    from orchard import reduce

    _, output, _ = finished
    features = spark.read.parquet(str(output / "features"))
    projection, summary = reduce.fit(features, RunConfig(input="in", output="out", k=7, standardize=standardize),
                                     str(tmp_path / "model"))
    model = PipelineModel.load(str(tmp_path / "model"))
    assert summary.k == 7 and len(summary.explained) == 1280  # the whole spectrum, whatever the rule
    stages = [StandardScaler(withMean=True, withStd=True, inputCol="vector", outputCol="scaled")] * standardize
    stages.append(PCA(k=7, inputCol="scaled" if standardize else "vector", outputCol="pca_vector"))
    vectors = reduce.with_vector(features).orderBy("path")
    reference = Pipeline(stages=stages).fit(vectors)
    np.testing.assert_allclose(summary.explained[:7], reference.stages[-1].explainedVariance.toArray(),
                               rtol=1e-9, atol=1e-12)
    ours = np.stack([r.pca_vector.toArray() for r in model.transform(vectors).collect()])
    theirs = np.stack([r.pca_vector.toArray() for r in reference.transform(vectors).collect()])
    assert ours.std(axis=0).min() > 1e-3  # the projections vary: the comparison below means something
    np.testing.assert_allclose(np.abs(ours), np.abs(theirs), rtol=1e-6, atol=1e-6)  # components: up to sign
    rows = np.stack([r.features for r in vectors.select("features").collect()])
    for read_back in (projection, reduce.Projection.read(str(tmp_path / "model"))):  # NumPy = the saved model
        np.testing.assert_allclose(read_back.apply(rows), ours.astype(np.float32), rtol=1e-5, atol=1e-5)

    matrix = np.stack(pd.read_parquet(output / "features")["features"].to_numpy()).astype(np.float64)
    if standardize:
        std = matrix.std(axis=0, ddof=1)
        matrix = (matrix - matrix.mean(axis=0)) / np.where(std > 0, std, 1.0)
    sk = SkPCA(n_components=7, svd_solver="full").fit(matrix)
    np.testing.assert_allclose(summary.explained[:7], sk.explained_variance_ratio_, rtol=1e-6)
    components = model.stages[-1].pc.toArray()  # 1280 x 7, columns
    np.testing.assert_allclose(np.abs(components.T), np.abs(sk.components_), atol=1e-6)


@pytest.mark.pure
def test_moments_merge_equals_moments_of_all_rows():
    from orchard.reduce import Moments

    rows = np.random.default_rng(0).normal(1000.0, 1.0, (300, 5))  # a large mean: no cancellation allowed
    merged = Moments.of(rows[:7]).merge(Moments.of(rows[7:200])).merge(Moments.of(rows[200:]))
    whole = Moments.of(rows)
    assert merged.count == 300
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(merged.covariance(), np.cov(rows.T), rtol=1e-9, atol=1e-12)
    empty = Moments(0, np.zeros(5), np.zeros((5, 5)))
    assert empty.merge(whole) is whole and whole.merge(empty) is whole
