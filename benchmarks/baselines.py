"""Baselines for the benchmark: TensorFlow/Keras as their own Spark applications, and Daft.

    python benchmarks/baselines.py reference DATA OUTPUT   # as the reference EMR teams wrote it
    python benchmarks/baselines.py fair DATA OUTPUT        # the same with the obvious fixes
    python benchmarks/baselines.py daft DATA OUTPUT fp32   # Daft + orchard's ONNX graph (fp32, int8 or bf16)

Both read images with Spark's binaryFile source, featurise with Keras MobileNetV2 (top removed, average
pooling, 1280-D) inside a pandas UDF from broadcast weights, write the features to Parquet, then fit
MLlib PCA (k=50) and write the projection, so they do the same work as `orchard run`.

- reference: a plain Scalar pandas UDF that rebuilds the Keras model from the broadcast weights for
  every Arrow batch and calls `model.predict` one image at a time (what the reference teams did).
- fair: a Scalar Iterator pandas UDF that builds the model once per task and predicts in batches of 32.

Weights are Keras' random init: the compute is identical to ImageNet weights.

- daft: Daft's native download, decode and resize (to 224x224) of every JPEG under DATA, then orchard's own
  MobileNetV2 ONNX graph (`--weights random`; int8: orchard's quantised graph, calibrated on the same
  sample of the same images as `orchard run --precision int8`) in a Daft class UDF (2 instances, one engine
  thread each, on the engine orchard uses for that precision: ONNX Runtime for fp32, OpenVINO for int8 and
  bf16), features written to Parquet. No PCA. Its seconds exclude building the graph.
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


def daft_model(data: str, output: str, precision: str) -> bytes:
    """The ONNX graph `orchard run DATA --weights random --precision P` featurises with."""
    from orchard.config import RunConfig
    from orchard.featurize.weights import model_source
    from orchard.io import listing
    from orchard.pipeline import reduced_precision

    source = model_source("random")
    if precision != "int8":
        return source.onnx_bytes  # fp32, and bf16: the engine runs the fp32 graph in bf16
    manifest = listing.account_for_every_file(f"file:{data}")  # orchard's own listing: the same sample
    return reduced_precision(source, manifest, RunConfig(input=data, output=output, precision="int8")).onnx_bytes


def run_daft(data: str, output: str, precision: str) -> dict:
    """Daft's native image path + orchard's ONNX graph in a class UDF; Parquet out."""
    import shutil

    import daft
    import numpy as np
    from daft import DataType, col
    from daft.functions import decode_image, download, resize

    model = os.path.join(output, "model.onnx")
    os.makedirs(output, exist_ok=True)
    with open(model, "wb") as file:
        file.write(daft_model(os.path.abspath(data), output, precision))

    @daft.cls(max_concurrency=2, use_process=True)
    class Embed:
        def __init__(self, path: str, precision: str):
            from orchard.featurize import runtime

            self.runtime = runtime
            with open(path, "rb") as file:  # the engine orchard runs this precision on (runtime.ENGINES)
                self.session = runtime.make_engine_session(file.read(), 1, precision, "the Daft baseline")

        @daft.method.batch(return_dtype=DataType.fixed_size_list(DataType.float32(), 1280), batch_size=32)
        def __call__(self, images):
            return list(self.runtime.embed(self.session, np.stack(images.to_pylist()), 8))

    started = time.perf_counter()
    frame = daft.from_glob_path(os.path.join(os.path.abspath(data), "**", "*.jpg"))
    frame = frame.select(col("path"), resize(decode_image(download(col("path"))), 224, 224).alias("image"))
    features = os.path.join(output, "features")
    shutil.rmtree(features, ignore_errors=True)
    frame.select(col("path"), Embed(model, precision)(col("image")).alias("features")).write_parquet(features)
    total = time.perf_counter() - started
    count = daft.read_parquet(features).count_rows()
    return {"kind": "daft", "precision": precision, "images": count, "seconds": total,
            "version": daft.__version__}


if __name__ == "__main__":
    if sys.argv[1] == "daft":
        result = run_daft(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "fp32")
    else:
        result = run(sys.argv[1], sys.argv[2], sys.argv[3])
    print(json.dumps(result))
