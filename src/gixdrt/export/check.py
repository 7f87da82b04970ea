"""Graph checks before a TensorRT build: only ops TensorRT's ONNX parser supports, static shapes, no
data-dependent output shapes.

Where the operator table comes from: the "Operator Support Matrix" of ``docs/operators.md`` ("Supported ONNX
Operators") in onnx/onnx-tensorrt, the TensorRT ONNX parser's own document, in its TensorRT 10.15 revision
("TensorRT 10.15 supports operators in the inclusive range of opset 9 to opset 24"). :data:`TRT_SUPPORTED_OPS`
lists every operator marked supported (Y) there, with the restriction the document gives ("" where it gives
none); the restrictions we can see statically are checked below. Operators the document marks N (AffineGrid,
Compress, DFT, Unique, the Sequence*, String* and Bitwise* families...) are absent. Releases older than 10.15
support a subset (operators such as Attention, RMSNormalization, RotaryEmbedding and TensorScatter came
later), and the parser has the final word: a graph that passes here can still fail to parse on an older
TensorRT 10 release. The opset range, :data:`TRT_OPSETS`, is the
one every TensorRT 10 release accepts (the TensorRT 10.0 revision of the same document: "opset 9 to opset
20"). Update the table with the document when the TensorRT we build with changes: it is data, the checks do
not change.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..errors import GixdrtError

__all__ = [
    "DATA_DEPENDENT_OPS",
    "PLUGIN_OPS",
    "TRT_OPSETS",
    "TRT_SUPPORTED_OPS",
    "GraphCheckError",
    "GraphReport",
    "check_graph",
]

#: ops of gixdrt's TensorRT plugin library (:mod:`gixdrt.engine.plugins`), by ONNX domain: TensorRT's parser turns
#: a node it does not know into the registered plugin of the same name, once the library is loaded
PLUGIN_OPS = {"gixdrt": frozenset({"GixdrtRoIAlign"})}

#: opsets of the default ONNX domain every TensorRT 10 parser accepts (10.0: 9 to 20; 10.15: 9 to 24)
TRT_OPSETS = range(9, 21)

_REDUCE_AXES = "`axes` must be an initializer"
_RNN_DIRECTIONS = "for bidirectional {}s, activation functions must be the same for both the forward and reverse pass"

#: TensorRT's ONNX parser (docs/operators.md, TensorRT 10.15): supported operators → documented restriction
TRT_SUPPORTED_OPS: dict[str, str] = {
    "Abs": "", "Acos": "", "Acosh": "", "Add": "", "And": "", "ArgMax": "", "ArgMin": "", "Asin": "", "Asinh": "",
    "Atan": "", "Atanh": "",
    "Attention": "Q, K, V and attn_mask must be 4D; past_key, past_value and nonpad_kv_seqlen inputs, present_key, "
    "present_value and qk_matmul_output outputs, qk_matmul_output_mode and softcap attributes unsupported",
    "AveragePool": "2D or 3D pooling only; dilations must be empty or all ones",
    "BatchNormalization": "", "BlackmanWindow": "", "Cast": "", "CastLike": "", "Ceil": "", "Celu": "", "Clip": "",
    "Concat": "",
    "Constant": "sparse_value, value_string and value_strings attributes unsupported",
    "ConstantOfShape": "", "Conv": "", "ConvTranspose": "", "Cos": "", "Cosh": "",
    "CumSum": "axis must be a build-time constant",
    "DeformConv": "input must have 1D or 2D spatial dimensions; pads at the beginning and end of each spatial axis "
    "must be the same",
    "DepthToSpace": "",
    "DequantizeLinear": "x_zero_point must be zero",
    "Div": "",
    "Dropout": "is_training must be an initializer and evaluate to False",
    "Einsum": "", "Elu": "", "Equal": "", "Erf": "", "Exp": "", "Expand": "",
    "EyeLike": "input must have static dimensions",
    "Flatten": "", "Floor": "", "Gather": "", "GatherElements": "", "GatherND": "", "Gelu": "", "Gemm": "",
    "GlobalAveragePool": "", "GlobalLpPool": "", "GlobalMaxPool": "", "Greater": "", "GreaterOrEqual": "",
    "GridSample": "input must be 4D",
    "GroupNormalization": "",
    "GRU": _RNN_DIRECTIONS.format("GRU"),
    "HammingWindow": "", "HannWindow": "", "HardSigmoid": "", "HardSwish": "",
    "Hardmax": "the axis dimension of the input must be a build-time constant",
    "Identity": "",
    "If": "outputs of the two branches must have the same rank and different names",
    "ImageScaler": "", "InstanceNormalization": "", "IsInf": "", "IsNaN": "",
    "LayerNormalization": "only the first output Y is supported",
    "LeakyRelu": "", "Less": "", "LessOrEqual": "", "Log": "", "LogSoftmax": "",
    "Loop": "scan output length cannot be dynamic; loop-carried dependencies keep their shape across iterations",
    "LRN": "",
    "LSTM": _RNN_DIRECTIONS.format("LSTM") + "; input_forget must be 0; layout must be 0",
    "LpNormalization": "",
    "LpPool": "dilations must be empty or all ones",
    "MatMul": "", "Max": "",
    "MaxPool": "2D or 3D pooling only; no Indices output; dilations must be empty or all ones",
    "Mean": "", "MeanVarianceNormalization": "", "Min": "", "Mish": "", "Mod": "", "Mul": "", "Neg": "",
    "NonMaxSuppression": "", "NonZero": "", "Not": "",
    "OneHot": "depth must be a build-time constant",
    "Or": "", "Pad": "", "ParametricSoftplus": "", "Pow": "", "PRelu": "",
    "QuantizeLinear": "y_zero_point must be 0",
    "RandomNormal": "seed is ignored", "RandomNormalLike": "seed is ignored", "RandomUniform": "seed is ignored",
    "RandomUniformLike": "seed is ignored",
    "Range": "", "Reciprocal": "",
    "ReduceL1": _REDUCE_AXES, "ReduceL2": _REDUCE_AXES, "ReduceLogSum": _REDUCE_AXES, "ReduceLogSumExp": _REDUCE_AXES,
    "ReduceMax": _REDUCE_AXES, "ReduceMean": _REDUCE_AXES, "ReduceMin": _REDUCE_AXES, "ReduceProd": _REDUCE_AXES,
    "ReduceSum": _REDUCE_AXES, "ReduceSumSquare": _REDUCE_AXES,
    "Relu": "", "Reshape": "",
    "Resize": "coordinate transformation modes half_pixel, pytorch_half_pixel, tf_half_pixel_for_nn, asymmetric, "
    "align_corners; modes nearest, linear; nearest modes floor, ceil, round_prefer_floor, round_prefer_ceil; "
    "aspect ratio policy stretch; with a scales tensor, axes must be an iota vector of length rank(input); "
    "no antialiasing",
    "ReverseSequence": "", "RMSNormalization": "",
    "RNN": _RNN_DIRECTIONS.format("RNN"),
    "RoiAlign": "",
    "RotaryEmbedding": "position_ids must be INT64",
    "Round": "",
    "STFT": "frame_step and window must be initializers; the input must be real-valued",
    "ScaledTanh": "", "Scan": "", "Scatter": "", "ScatterElements": "",
    "ScatterND": "reduction other than none unsupported",
    "Selu": "", "Shape": "", "Shrink": "", "Sigmoid": "", "Sign": "", "Sin": "", "Sinh": "", "Size": "", "Slice": "",
    "Softmax": "", "Softplus": "", "Softsign": "", "SpaceToDepth": "", "Split": "", "Sqrt": "",
    "Squeeze": "axes must be resolvable to a constant",
    "Sub": "", "Sum": "", "Tan": "", "Tanh": "",
    "TensorScatter": "past_cache and update must be 4D; axis must be -2",
    "ThresholdedRelu": "", "Tile": "",
    "TopK": "sorted must be 1; K must be less than 3840",
    "Transpose": "", "Trilu": "",
    "Unsqueeze": "axes must be resolvable to a constant",
    "Upsample": "", "Where": "", "Xor": "",
}

#: supported ops whose output shape depends on the data: they rule out CUDA-graph capture of an engine
DATA_DEPENDENT_OPS = frozenset({"NonMaxSuppression", "NonZero"})

_TOPK_MAX = 3840
_RESIZE_MODES = {"nearest", "linear"}
_RESIZE_COORDS = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
_POOLS_WITHOUT_DILATION = {"AveragePool", "MaxPool", "LpPool"}
#: element types the document lists (DOUBLE is cast down with clamping: refused here; FP8, FP4, INT4 only as
#: quantized types, which gixdrt's graphs do not use)
_TRT_DTYPES = {"FLOAT", "FLOAT16", "BFLOAT16", "INT32", "INT64", "INT8", "UINT8", "BOOL"}


class GraphCheckError(GixdrtError, ValueError):
    """A graph TensorRT would not parse, or one with dynamic shapes. ``report`` has the details."""

    def __init__(self, report: GraphReport):
        self.report = report
        lines = "\n  ".join(report.problems)
        super().__init__(f"{report.source}: {len(report.problems)} problem(s) for TensorRT:\n  {lines}")


@dataclass
class GraphReport:
    """What :func:`check_graph` found. inputs/outputs: name → (element type, shape)."""

    source: str
    opset: int
    ir_version: int
    ops: Counter
    inputs: dict[str, tuple[str, tuple[int | str | None, ...]]]
    outputs: dict[str, tuple[str, tuple[int | str | None, ...]]]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        ops = ", ".join(f"{k}×{v}" for k, v in sorted(self.ops.items()))
        io = "; ".join(f"{n} {t}{list(s)}" for n, (t, s) in {**self.inputs, **self.outputs}.items())
        state = "ok" if self.ok else f"{len(self.problems)} problem(s)"
        return f"{self.source}: opset {self.opset}, IR {self.ir_version}, {state}; ops {ops}; tensors {io}"


def _type_and_shape(vi) -> tuple[str, tuple[int | str | None, ...]]:
    from onnx import TensorProto

    tt = vi.type.tensor_type
    dims = []
    for d in tt.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    return TensorProto.DataType.Name(tt.elem_type), tuple(dims)


def _static(shape: tuple) -> bool:
    return all(isinstance(d, int) and d >= 0 for d in shape)


def _attr(node, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def check_graph(graph: str | os.PathLike | Any, *, allow_data_dependent: bool = False) -> GraphReport:
    """Check an ONNX graph (path or ``onnx.ModelProto``) for a TensorRT build → :class:`GraphReport`.

    Checked: the ONNX checker passes; opset within :data:`TRT_OPSETS`; every node is in the default domain
    and in :data:`TRT_SUPPORTED_OPS`, or one of gixdrt's plugin ops (:data:`PLUGIN_OPS`); no op of :data:`DATA_DEPENDENT_OPS` (unless ``allow_data_dependent``);
    the documented restrictions we can see statically (TopK: sorted, K a constant below 3840; Resize:
    modes, no antialiasing, aspect ratio policy stretch; pooling: no dilations, MaxPool without Indices);
    every tensor (inputs, outputs, intermediates after shape
    inference) has a fully static shape and a TensorRT element type. Raises :class:`GraphCheckError` with
    the report when anything fails.
    """
    import onnx
    from onnx import numpy_helper, shape_inference

    if isinstance(graph, onnx.ModelProto):
        model, source = graph, "<in-memory graph>"
    else:
        source = os.fspath(graph)
        model = onnx.load(source)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    g = model.graph
    report = GraphReport(
        source=source, opset=opset, ir_version=model.ir_version, ops=Counter(n.op_type for n in g.node),
        inputs={i.name: _type_and_shape(i) for i in g.input}, outputs={o.name: _type_and_shape(o) for o in g.output},
    )
    problems = report.problems
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        problems.append(f"ONNX checker: {str(exc).splitlines()[0]}")
    if opset not in TRT_OPSETS:
        problems.append(f"opset {opset} outside TensorRT's {TRT_OPSETS.start}..{TRT_OPSETS.stop - 1}")

    consts = {i.name: i for i in g.initializer}
    for node in g.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                consts[node.output[0]] = value
    for node in g.node:
        where = f"{node.op_type} {node.name or node.output[0]!r}"
        if node.op_type in PLUGIN_OPS.get(node.domain, ()):
            continue  # parsed into gixdrt's plugin (the library must be loaded when the engine is built)
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: custom domain {node.domain!r} (needs a TensorRT plugin)")
            continue
        if node.op_type not in TRT_SUPPORTED_OPS:
            problems.append(f"{where}: not supported by TensorRT's ONNX parser")
            continue
        if node.op_type in DATA_DEPENDENT_OPS and not allow_data_dependent:
            problems.append(f"{where}: data-dependent output shape (no CUDA-graph capture)")
        if node.op_type == "TopK":
            k = consts.get(node.input[1]) if len(node.input) > 1 else None
            if k is None:  # not a parser restriction since 10.x, but a runtime K makes the output shape data-dependent
                problems.append(f"{where}: K is not a constant (the output shape would depend on the data)")
            elif int(numpy_helper.to_array(k).reshape(-1)[0]) >= _TOPK_MAX:
                problems.append(f"{where}: K = {int(numpy_helper.to_array(k).reshape(-1)[0])} ≥ {_TOPK_MAX}")
            if _attr(node, "sorted", 1) != 1:
                problems.append(f"{where}: sorted=0 not supported")
        elif node.op_type == "Resize":
            mode = _attr(node, "mode", "nearest")
            coord = _attr(node, "coordinate_transformation_mode", "half_pixel")
            nearest = _attr(node, "nearest_mode", "round_prefer_floor")
            if mode not in _RESIZE_MODES or coord not in _RESIZE_COORDS or (mode == "nearest" and nearest not in _RESIZE_NEAREST):
                problems.append(f"{where}: mode {mode}/{coord}/{nearest} not supported")
            if _attr(node, "antialias", 0):
                problems.append(f"{where}: antialiasing not supported")
            if _attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
                problems.append(f"{where}: keep_aspect_ratio_policy {_attr(node, 'keep_aspect_ratio_policy')} not supported")
        if node.op_type in _POOLS_WITHOUT_DILATION and any(d != 1 for d in _attr(node, "dilations", None) or ()):
            problems.append(f"{where}: dilations {list(_attr(node, 'dilations'))} not supported (all ones only)")
        if node.op_type == "MaxPool" and len([o for o in node.output if o]) > 1:
            problems.append(f"{where}: Indices output not supported")

    plugins = any(n.op_type in PLUGIN_OPS.get(n.domain, ()) for n in g.node)
    try:  # ONNX has no schema for a plugin op: its output's shape comes from the graph's value_info instead
        inferred = shape_inference.infer_shapes(model, strict_mode=not plugins, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises InferenceError (a subclass of Exception) on inconsistent graphs
        problems.append(f"shape inference failed: {str(exc).splitlines()[0]}")
        inferred = model
    known = {vi.name: _type_and_shape(vi) for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]}
    for node in inferred.graph.node:
        for out in node.output:
            if out and out not in known:
                problems.append(f"{out}: shape not inferred (output of {node.op_type})")
    for name, (dtype, shape) in known.items():
        if name in consts:
            continue
        if not _static(shape):
            problems.append(f"{name}: shape {list(shape)} is not static")
        if dtype not in _TRT_DTYPES:
            problems.append(f"{name}: element type {dtype} not supported by TensorRT")
    if problems:
        raise GraphCheckError(report)
    return report
