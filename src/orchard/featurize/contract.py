"""The model's interface, shared by the graph builder (mobilenet), the weights cache and the runtime.

Names, sizes and the graph version only, so that reading a cached model imports no graph-building code.
"""

FEATURE_DIM = 1280  # MobileNetV2 1.0 after global average pooling
INPUT_NAME = "images"  # uint8 [N, 224, 224, 3]
OUTPUT_NAME = "features"  # float32 [N, FEATURE_DIM]
GRAPH_VERSION = "1"  # bump when the graph mobilenet builds changes, so cached ONNX files are rebuilt
