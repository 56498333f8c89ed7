"""The model's interface, shared by the graph builder (mobilenet) and the runtime: names and sizes only."""

FEATURE_DIM = 1280  # MobileNetV2 1.0 after global average pooling
INPUT_NAME = "images"  # uint8 [N, 224, 224, 3]
OUTPUT_NAME = "features"  # float32 [N, FEATURE_DIM]
