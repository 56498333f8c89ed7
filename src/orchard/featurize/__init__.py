"""Featurisation: MobileNetV2 as ONNX (mobilenet), weights (weights), inference (runtime), int8 (quantize).

The submodules are imported where they are used: ONNX Runtime inference (`runtime`) needs neither the
`onnx` package nor the graph builder, which keeps `orchard predict` quick to start.
"""
