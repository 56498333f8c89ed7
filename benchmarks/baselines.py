"""TensorFlow/Keras baselines for the benchmark, run as their own Spark applications.

    python benchmarks/baselines.py reference DATA OUTPUT   # as the reference EMR teams wrote it
    python benchmarks/baselines.py fair DATA OUTPUT        # the same with the obvious fixes

Both read images with Spark's binaryFile source, featurise with Keras MobileNetV2 (top removed, average
pooling, 1280-D) inside a pandas UDF from broadcast weights, write the features to Parquet, then fit
MLlib PCA (k=50) and write the projection, so they do the same work as `orchard run`.

- reference: a plain Scalar pandas UDF that rebuilds the Keras model from the broadcast weights for
  every Arrow batch and calls `model.predict` one image at a time (what the reference teams did).
- fair: a Scalar Iterator pandas UDF that builds the model once per task and predicts in batches of 32.

Weights are Keras' random init: the compute is identical to ImageNet weights.
"""

import io
import json
import os
import sys
import time
from collections.abc import Iterator

import pandas as pd  # module level: PySpark resolves the UDFs' type hints here

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def keras_model():
    import keras

    return keras.applications.MobileNetV2(weights=None, include_top=False, pooling="avg",
                                          input_shape=(224, 224, 3))


def preprocess(content: bytes):
    """PIL decode + resize + Keras preprocess_input, as in the reference notebooks."""
    import numpy as np
    from keras.applications.mobilenet_v2 import preprocess_input
    from PIL import Image

    image = Image.open(io.BytesIO(content)).convert("RGB").resize((224, 224))
    return preprocess_input(np.asarray(image, dtype=np.float32))


def reference_udf(weights_broadcast):
    import numpy as np
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("array<float>")
    def featurize(contents: pd.Series) -> pd.Series:
        model = keras_model()  # rebuilt for every Arrow batch
        model.set_weights(weights_broadcast.value)
        rows = [model.predict(preprocess(c)[None], verbose=0)[0] for c in contents]  # one image at a time
        return pd.Series([np.asarray(r, dtype=np.float32) for r in rows])

    return featurize


def fair_udf(weights_broadcast):
    import numpy as np
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("array<float>")
    def featurize(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        model = keras_model()  # once per task
        model.set_weights(weights_broadcast.value)
        for contents in batches:
            images = np.stack([preprocess(c) for c in contents])
            features = model.predict(images, batch_size=32, verbose=0)
            yield pd.Series(list(features.astype(np.float32)))

    return featurize


def run(kind: str, data: str, output: str) -> dict:
    from pyspark.ml.feature import PCA
    from pyspark.ml.functions import array_to_vector, vector_to_array
    from pyspark.sql import SparkSession

    started = time.perf_counter()
    spark = (SparkSession.builder.appName(f"baseline-{kind}")
             .config("spark.sql.execution.arrow.pyspark.enabled", "true")
             .config("spark.sql.execution.arrow.maxRecordsPerBatch", "64").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    weights = spark.sparkContext.broadcast(keras_model().get_weights())
    images = (spark.read.format("binaryFile").option("recursiveFileLookup", "true")
              .option("pathGlobFilter", "*.jpg").load(data))
    udf = (reference_udf if kind == "reference" else fair_udf)(weights)
    images.select("path", udf("content").alias("features")).write.mode("overwrite").parquet(f"{output}/features")
    featurized = time.perf_counter()
    features = spark.read.parquet(f"{output}/features").withColumn("vector", array_to_vector("features"))
    model = PCA(k=50, inputCol="vector", outputCol="pca_vector").fit(features)
    model.transform(features).select("path", vector_to_array("pca_vector").alias("pca")).write.mode(
        "overwrite").parquet(f"{output}/pca")
    count = spark.read.parquet(f"{output}/pca").count()
    total = time.perf_counter() - started
    spark.stop()
    return {"kind": kind, "images": count, "seconds": total, "featurize_seconds": featurized - started}


if __name__ == "__main__":
    result = run(sys.argv[1], sys.argv[2], sys.argv[3])
    print(json.dumps(result))
