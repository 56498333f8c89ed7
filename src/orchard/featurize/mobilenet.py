"""MobileNetV2 1.0/224 (top removed, global average pooling) as an ONNX graph built from Keras weights.

The graph is written directly with `onnx.helper` from the layer weights of the standard Keras file, so
neither the driver nor the executors need TensorFlow. It mirrors `keras.applications.MobileNetV2(
include_top=False, pooling="avg")` layer by layer: same names, paddings (Keras pads stride-2 layers
bottom/right only), ReLU6, BatchNorm epsilon 1e-3. BatchNorm is folded into the preceding convolution.
Input is uint8 NHWC; the Keras scaling x / 127.5 - 1 is the first op of the graph.

`calibrate=True` builds a variant whose BatchNorms normalise with the statistics of the batch itself and
expose those statistics as outputs: one pass over a sample batch gives every BN's moving mean/variance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from orchard.featurize.contract import FEATURE_DIM, GRAPH_VERSION, INPUT_NAME, OUTPUT_NAME

BN_EPSILON = 1e-3
OPSET = 17

Weights = dict[str, dict[str, np.ndarray]]


@dataclass(frozen=True)
class Block:
    """One inverted-residual block: Keras' `_inverted_res_block` arguments."""

    block_id: int
    expansion: int
    stride: int
    filters: int

    @property
    def prefix(self) -> str:
        """The Keras layer-name prefix of this block's weights (`expanded_conv_`, `block_N_`)."""
        return "expanded_conv_" if self.block_id == 0 else f"block_{self.block_id}_"


BLOCKS = tuple(
    Block(i, e, s, f)
    for i, (e, s, f) in enumerate(
        [(1, 1, 16), (6, 2, 24), (6, 1, 24), (6, 2, 32), (6, 1, 32), (6, 1, 32), (6, 2, 64), (6, 1, 64),
         (6, 1, 64), (6, 1, 64), (6, 1, 96), (6, 1, 96), (6, 1, 96), (6, 2, 160), (6, 1, 160),
         (6, 1, 160), (6, 1, 320)]
    )
)


@dataclass(frozen=True)
class ConvSpec:
    """A convolution followed by BatchNorm (and ReLU6 unless `relu6` is False)."""

    conv: str
    bn: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    depthwise: bool
    relu6: bool = True

    @property
    def kernel_shape(self) -> tuple[int, ...]:
        """Shape of the kernel in the Keras file."""
        if self.depthwise:
            return (self.kernel, self.kernel, self.in_channels, 1)
        return (self.kernel, self.kernel, self.in_channels, self.out_channels)


def layer_specs() -> list[ConvSpec | str]:
    """The network as a flat list: conv specs, plus 'block_start:ID' / 'add' markers for residuals."""
    specs: list[ConvSpec | str] = [ConvSpec("Conv1", "bn_Conv1", 3, 32, 3, 2, False)]
    channels = 32
    for block in BLOCKS:
        p, expanded = block.prefix, channels * block.expansion
        specs.append(f"block_start:{block.block_id}")
        if block.expansion != 1:
            specs.append(ConvSpec(f"{p}expand", f"{p}expand_BN", channels, expanded, 1, 1, False))
        specs.append(ConvSpec(f"{p}depthwise", f"{p}depthwise_BN", expanded, expanded, 3, block.stride, True))
        specs.append(ConvSpec(f"{p}project", f"{p}project_BN", expanded, block.filters, 1, 1, False, False))
        if block.stride == 1 and channels == block.filters:
            specs.append("add")
        channels = block.filters
    specs.append(ConvSpec("Conv_1", "Conv_1_bn", channels, FEATURE_DIM, 1, 1, False))
    return specs


def conv_specs() -> list[ConvSpec]:
    """The convolutions of `layer_specs()`, in graph order (without the residual additions)."""
    return [spec for spec in layer_specs() if isinstance(spec, ConvSpec)]


def kernel_key(spec: ConvSpec) -> str:
    """The Keras weight name holding the layer's kernel: `depthwise_kernel` or `kernel`."""
    return "depthwise_kernel" if spec.depthwise else "kernel"


def kernel_of(weights: Weights, spec: ConvSpec) -> np.ndarray | None:
    """The layer's kernel; Keras 2 files say 'depthwise_kernel' for depthwise layers, Keras 3 'kernel'."""
    layer = weights.get(spec.conv, {})
    return layer.get(kernel_key(spec), layer.get("kernel"))


def check_weights(weights: Weights) -> None:
    """Raise ValueError naming the first missing layer or wrong shape."""
    for spec in conv_specs():
        kernel = kernel_of(weights, spec)
        if kernel is None:
            raise ValueError(f"layer {spec.conv!r} has no {kernel_key(spec)}")
        if tuple(kernel.shape) != spec.kernel_shape:
            raise ValueError(f"layer {spec.conv!r}: kernel shape {kernel.shape}, expected {spec.kernel_shape}")
        for key in ("gamma", "beta", "moving_mean", "moving_variance"):
            value = weights.get(spec.bn, {}).get(key)
            if value is None or value.shape != (spec.out_channels,):
                raise ValueError(f"layer {spec.bn!r}: missing or mis-shaped {key}")


def build_model(weights: Weights, *, calibrate: bool = False) -> onnx.ModelProto:
    """Build the ONNX model. Input uint8 [N,224,224,3]; output float32 [N,1280] (plus BN stats if calibrate)."""
    check_weights(weights)
    graph = _GraphBuilder(weights, calibrate)
    x = graph.input_scaling()
    block_input = x
    for spec in layer_specs():
        if isinstance(spec, str):
            if spec.startswith("block_start"):
                block_input = x
            else:
                x = graph.node("Add", [block_input, x])
            continue
        x = graph.conv_bn(x, spec)
    pooled = graph.node("GlobalAveragePool", [x])
    graph.node("Flatten", [pooled], name=OUTPUT_NAME, axis=1)
    return graph.finish()


class _GraphBuilder:
    def __init__(self, weights: Weights, calibrate: bool):
        self.weights, self.calibrate = weights, calibrate
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.outputs = [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", FEATURE_DIM])]
        self._count = 0

    def node(self, op: str, inputs: list[str], name: str | None = None, **attrs) -> str:
        self._count += 1
        output = name or f"{op.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def input_scaling(self) -> str:
        x = self.node("Cast", [INPUT_NAME], to=TensorProto.FLOAT)
        x = self.node("Mul", [x, self.constant("scale", np.array(1 / 127.5, np.float32))])
        x = self.node("Sub", [x, self.constant("one", np.array(1.0, np.float32))])
        return self.node("Transpose", [x], perm=[0, 3, 1, 2])

    def conv_bn(self, x: str, spec: ConvSpec) -> str:
        kernel = kernel_of(self.weights, spec).astype(np.float32)
        # Keras (kh, kw, in, out) -> ONNX (out, in, kh, kw); depthwise (kh, kw, C, 1) -> (C, 1, kh, kw)
        w = kernel.transpose(2, 3, 0, 1) if spec.depthwise else kernel.transpose(3, 2, 0, 1)
        bn = {k: v.astype(np.float64) for k, v in self.weights[spec.bn].items()}
        if spec.stride == 2:
            pads = [0, 0, 1, 1]  # Keras: ZeroPadding2D(((0, 1), (0, 1))) or 'same' on even input
        else:
            half = spec.kernel // 2
            pads = [half, half, half, half]
        attrs = dict(kernel_shape=[spec.kernel, spec.kernel], strides=[spec.stride, spec.stride], pads=pads,
                     group=spec.in_channels if spec.depthwise else 1)
        if self.calibrate:
            y = self.node("Conv", [x, self.constant(f"{spec.conv}/w", w)], **attrs)
            y = self._batch_statistics_norm(y, spec.bn, bn)
        else:
            scale = bn["gamma"] / np.sqrt(bn["moving_variance"] + BN_EPSILON)
            folded_w = (w.astype(np.float64) * scale[:, None, None, None]).astype(np.float32)
            folded_b = (bn["beta"] - bn["moving_mean"] * scale).astype(np.float32)
            y = self.node("Conv", [x, self.constant(f"{spec.conv}/w", folded_w),
                                   self.constant(f"{spec.conv}/b", folded_b)], **attrs)
        if spec.relu6:
            y = self.node("Clip", [y, self.constant(f"{spec.conv}/min", np.array(0, np.float32)),
                                   self.constant(f"{spec.conv}/max", np.array(6, np.float32))])
        return y

    def _batch_statistics_norm(self, x: str, name: str, bn: dict[str, np.ndarray]) -> str:
        """Training-mode BatchNorm: normalise with the batch's own mean/variance and output them."""
        mean = self.node("ReduceMean", [x], axes=[0, 2, 3], keepdims=1)
        centered = self.node("Sub", [x, mean])
        var = self.node("ReduceMean", [self.node("Mul", [centered, centered])], axes=[0, 2, 3], keepdims=1)
        for stat, tensor in (("mean", mean), ("var", var)):
            out = f"{name}/{stat}"
            self.node("Flatten", [tensor], name=out, axis=1)
            self.outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, None]))
        channels = bn["gamma"].shape[0]
        eps = self.constant(f"{name}/eps", np.array(BN_EPSILON, np.float32))
        std = self.node("Sqrt", [self.node("Add", [var, eps])])
        gamma = self.constant(f"{name}/gamma", bn["gamma"].astype(np.float32).reshape(1, channels, 1, 1))
        beta = self.constant(f"{name}/beta", bn["beta"].astype(np.float32).reshape(1, channels, 1, 1))
        return self.node("Add", [self.node("Mul", [self.node("Div", [centered, std]), gamma]), beta])

    def finish(self) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "mobilenet_v2_1.0_224_avgpool",
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["N", 224, 224, 3])],
            self.outputs,
            self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="orchard", producer_version=GRAPH_VERSION)
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model
