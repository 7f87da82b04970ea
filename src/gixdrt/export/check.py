"""Graph checks before a TensorRT build: only ops TensorRT's ONNX parser supports, static shapes, no
data-dependent output shapes.

The operator table is transcribed from TensorRT's ONNX parser support matrix, ``docs/operators.md`` of
onnx/onnx-tensorrt for TensorRT 10.x ("TensorRT 10.0 supports operators in the inclusive range of opset 9 to
opset 20"). It lists the operators marked supported (Y) there; where a restriction matters to an exporter
it is kept next to the name and the ones we can check statically are checked. Update it when the TensorRT
release we build with changes: the table is data, the checks below do not change.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..errors import GixdrtError

__all__ = [
    "DATA_DEPENDENT_OPS",
    "TRT_OPSETS",
    "TRT_SUPPORTED_OPS",
    "GraphCheckError",
    "GraphReport",
    "check_graph",
]

#: opsets of the default ONNX domain TensorRT 10.0's parser accepts
TRT_OPSETS = range(9, 21)

#: TensorRT 10.x ONNX parser: supported operators → restriction ("" when none is documented)
TRT_SUPPORTED_OPS: dict[str, str] = {
    "Abs": "", "Acos": "", "Acosh": "", "Add": "", "AffineGrid": "", "And": "", "ArgMax": "", "ArgMin": "",
    "Asin": "", "Asinh": "", "Atan": "", "Atanh": "",
    "AveragePool": "2D or 3D pooling only",
    "BatchNormalization": "", "BlackmanWindow": "", "Cast": "", "CastLike": "", "Ceil": "", "Celu": "",
    "Clip": "", "Concat": "", "Constant": "", "ConstantOfShape": "",
    "Conv": "2D or 3D only; weights must be an initializer",
    "ConvTranspose": "2D or 3D only; weights must be an initializer",
    "Cos": "", "Cosh": "", "CumSum": "axis must be an initializer", "DepthToSpace": "",
    "DequantizeLinear": "", "Div": "", "Dropout": "", "Einsum": "no ellipsis, no diagonal, no broadcasting",
    "Elu": "", "Equal": "", "Erf": "", "Exp": "", "Expand": "", "EyeLike": "", "Flatten": "", "Floor": "",
    "Gather": "", "GatherElements": "", "GatherND": "", "Gelu": "", "Gemm": "", "GlobalAveragePool": "",
    "GlobalLpPool": "", "GlobalMaxPool": "", "Greater": "", "GreaterOrEqual": "", "GridSample": "",
    "GroupNormalization": "", "GRU": "", "HammingWindow": "", "HannWindow": "", "HardSigmoid": "",
    "HardSwish": "", "Hardmax": "", "Identity": "", "If": "", "ImageScaler": "",
    "InstanceNormalization": "scale and bias must be initializers", "IsInf": "", "IsNaN": "",
    "LayerNormalization": "", "LeakyRelu": "", "Less": "", "LessOrEqual": "", "Log": "", "LogSoftmax": "",
    "Loop": "", "LRN": "", "LSTM": "", "LpNormalization": "", "LpPool": "", "MatMul": "", "Max": "",
    "MaxPool": "2D or 3D pooling only; no Indices output",
    "Mean": "", "MeanVarianceNormalization": "", "Min": "", "Mish": "", "Mod": "", "Mul": "", "Neg": "",
    "NonMaxSuppression": "data-dependent output shape",
    "NonZero": "data-dependent output shape",
    "Not": "", "OneHot": "", "Or": "", "Pad": "", "ParametricSoftplus": "", "Pow": "", "PRelu": "",
    "QuantizeLinear": "", "RandomNormal": "", "RandomNormalLike": "", "RandomUniform": "",
    "RandomUniformLike": "", "Range": "", "Reciprocal": "", "ReduceL1": "", "ReduceL2": "",
    "ReduceLogSum": "", "ReduceLogSumExp": "", "ReduceMax": "", "ReduceMean": "", "ReduceMin": "",
    "ReduceProd": "", "ReduceSum": "", "ReduceSumSquare": "", "Relu": "", "Reshape": "",
    "Resize": "modes nearest/linear/cubic; coordinate modes half_pixel, pytorch_half_pixel, "
    "tf_half_pixel_for_nn, asymmetric, align_corners; nearest modes floor, ceil, round_prefer_floor, "
    "round_prefer_ceil",
    "ReverseSequence": "", "RNN": "", "RoiAlign": "opset 16 semantics", "Round": "", "ScaledTanh": "",
    "Scan": "", "Scatter": "", "ScatterElements": "", "ScatterND": "", "Selu": "", "Shape": "", "Shrink": "",
    "Sigmoid": "", "Sign": "", "Sin": "", "Sinh": "", "Size": "", "Slice": "", "Softmax": "", "Softplus": "",
    "Softsign": "", "SpaceToDepth": "", "Split": "", "Sqrt": "", "Squeeze": "", "Sub": "", "Sum": "",
    "Tan": "", "Tanh": "", "ThresholdedRelu": "", "Tile": "",
    "TopK": "K must be an initializer, K < 3840",
    "Transpose": "", "Trilu": "", "Unsqueeze": "", "Upsample": "", "Where": "", "Xor": "",
}

#: supported ops whose output shape depends on the data: they rule out CUDA-graph capture of an engine
DATA_DEPENDENT_OPS = frozenset({"NonMaxSuppression", "NonZero"})

_TOPK_MAX = 3840
_RESIZE_MODES = {"nearest", "linear", "cubic"}
_RESIZE_COORDS = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
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
    and in :data:`TRT_SUPPORTED_OPS`; no op of :data:`DATA_DEPENDENT_OPS` (unless ``allow_data_dependent``);
    the restrictions we can see statically (Conv weights are initializers, TopK's K is a constant below
    3840, Resize modes, MaxPool without Indices); every tensor (inputs, outputs, intermediates after shape
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
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: custom domain {node.domain!r} (needs a TensorRT plugin)")
            continue
        if node.op_type not in TRT_SUPPORTED_OPS:
            problems.append(f"{where}: not supported by TensorRT's ONNX parser")
            continue
        if node.op_type in DATA_DEPENDENT_OPS and not allow_data_dependent:
            problems.append(f"{where}: data-dependent output shape (no CUDA-graph capture)")
        if node.op_type in ("Conv", "ConvTranspose") and node.input[1] not in consts:
            problems.append(f"{where}: weights are not an initializer")
        elif node.op_type == "TopK":
            k = consts.get(node.input[1]) if len(node.input) > 1 else None
            if k is None:
                problems.append(f"{where}: K is not a constant")
            elif int(numpy_helper.to_array(k).reshape(-1)[0]) >= _TOPK_MAX:
                problems.append(f"{where}: K = {int(numpy_helper.to_array(k).reshape(-1)[0])} ≥ {_TOPK_MAX}")
        elif node.op_type == "Resize":
            mode = _attr(node, "mode", "nearest")
            coord = _attr(node, "coordinate_transformation_mode", "half_pixel")
            nearest = _attr(node, "nearest_mode", "round_prefer_floor")
            if mode not in _RESIZE_MODES or coord not in _RESIZE_COORDS or (mode == "nearest" and nearest not in _RESIZE_NEAREST):
                problems.append(f"{where}: mode {mode}/{coord}/{nearest} not supported")
        elif node.op_type == "MaxPool" and len([o for o in node.output if o]) > 1:
            problems.append(f"{where}: Indices output not supported")

    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
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
