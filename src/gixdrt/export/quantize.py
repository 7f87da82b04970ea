"""INT8 dense graph: static Q/DQ quantisation of the fp32 dense graph, calibrated on simulated and real frames.

What :func:`quantize_dense` makes (``precision="int8"``):

- every Conv gets QuantizeLinear/DequantizeLinear pairs on its input and output activations (int8, symmetric:
  zero point 0, one scale per tensor) and on its weights (int8, symmetric, one scale per output channel,
  ``axis=0``); biases are int32 with scale = input scale × weight scale. Adds, Concats, MaxPool and Resize
  between quantised tensors are quantised as ONNX Runtime's quantiser does. That is TensorRT's explicit
  quantisation (Q/DQ pairs, int8, zero point 0), so the same graph serves TensorRT (:func:`static_int8` fixes
  its shapes) and ONNX Runtime.
- BatchNorm is folded first (ONNX Runtime's basic graph optimisation: BN into the convolutions, the fp16 weight
  Casts into float32 initialisers), so that the folded weights are what gets quantised.
- calibration: :class:`Calibration` (method, simulated images, the published real frame's contrast image).
  Percentile (99.999) with the RPN's output convolutions left in fp32 was chosen by measured accuracy
  (benchmarks/results/int8-eval.json: MinMax, Entropy, Percentile, and which convolutions stay fp32).

On x86 CPUs ONNX Runtime runs int8 convolutions fast with unsigned activations and signed weights (VNNI), and
slowly with signed activations: :func:`cpu_int8` shifts every activation Q/DQ pair from int8 (zero point 0)
to uint8 (zero point 128), which represents the same values exactly (q_u8 = q_s8 + 128), before a CPU session
loads the graph. The head graph (about 1 GFLOP against the dense graph's 87) stays fp32.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["QUANT_VERSION", "RPN_OUTPUTS", "Calibration", "calibration_images", "cpu_int8", "qdq_summary", "quantize_dense",
           "static_int8"]

#: bump when the quantised graphs change, so cached ones are rebuilt
QUANT_VERSION = 1
_METHODS = ("MinMax", "Entropy", "Percentile")
#: the RPN's output convolutions (objectness logits and box deltas, 64 → 2 and 64 → 8 channels on each level): left
#: in fp32 by default, which measurably keeps the detected rate (benchmarks/results/int8-eval.json)
RPN_OUTPUTS = tuple(f"/rpn_head/{k}{s}/Conv" for k in ("cls_logits", "bbox_pred") for s in ("", "_1", "_2"))


@dataclass(frozen=True)
class Calibration:
    """How the int8 dense graph is calibrated.

    method: ONNX Runtime's calibration (``MinMax``, ``Entropy`` or ``Percentile``); sim_images: simulated
    images (:class:`gixdrt.sim.Simulator`, seed ``sim_seed``, size ``sim_size`` H×W px); real_frame: add the
    published real frame's contrast image (512×1024); percentile: for ``Percentile``; exclude: names of nodes
    left in fp32 (default: the RPN's output convolutions, :data:`RPN_OUTPUTS`). The defaults were chosen by
    measured accuracy (benchmarks/results/int8-eval.json).
    """

    method: str = "Percentile"
    sim_images: int = 32
    sim_seed: int = 20261206
    sim_size: tuple[int, int] = (512, 1024)
    real_frame: bool = True
    percentile: float = 99.999
    exclude: tuple[str, ...] = RPN_OUTPUTS

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ValueError(f"calibration method {self.method!r}: expected one of {', '.join(_METHODS)}")
        if self.sim_images < 0 or (self.sim_images == 0 and not self.real_frame):
            raise ValueError("calibration needs at least one image (sim_images ≥ 1 or real_frame)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sim_size"] = list(self.sim_size)
        d["exclude"] = list(self.exclude)
        d["quant_version"] = QUANT_VERSION
        return d

    def key(self) -> str:
        """12 hex digits identifying these settings (cached graphs are named by it)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def calibration_images(cal: Calibration) -> list[np.ndarray]:
    """The calibration images of ``cal``: float32[H, W] contrast images in [0, 1] (the real frame first when asked
    for and its files are available; a missing real frame is logged and left out)."""
    from ..sim import Simulator

    images: list[np.ndarray] = []
    if cal.real_frame:
        try:
            from ..gixd.preprocess import published_image

            images.append(published_image()[0])
        except Exception as exc:  # noqa: BLE001 - offline: calibrate on the simulated images alone
            log.warning("int8 calibration without the published real frame (%s)", exc)
    sim = Simulator(seed=cal.sim_seed, size=cal.sim_size)
    images.extend(np.ascontiguousarray(sim.sample(i).image, np.float32) for i in range(cal.sim_images))
    return images


class _Reader:
    """ONNX Runtime calibration data reader over float32[H, W] images, one image per call. ``set_range`` and
    ``__len__`` let the calibrator collect a few images at a time (its ``CalibStridedMinMax``), so the
    intermediate tensors of only that many images are held at once (all 33 at 512×1024: about 17 GB)."""

    def __init__(self, images: Sequence[np.ndarray], input_name: str = "images"):
        self.images = list(images)
        self.input_name = input_name
        self._it = iter(self.images)

    def __len__(self) -> int:
        return len(self.images)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self.images[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {self.input_name: np.ascontiguousarray(x, np.float32)[None, None]}

    def __iter__(self):
        return self

    def __next__(self):
        x = self.get_next()
        if x is None:
            raise StopIteration
        return x


def _fold_for_quantisation(src: str | os.PathLike, dst: Path) -> None:
    """ONNX Runtime's basic optimisation of ``src`` (constant folding: BatchNorm into the convolutions, fp16 weight
    Casts into float32 initialisers), standard ONNX ops only → ``dst``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = os.fspath(dst)
    opts.log_severity_level = 3
    ort.InferenceSession(os.fspath(src), opts, providers=["CPUExecutionProvider"])


def quantize_dense(src: str | os.PathLike, dst: str | os.PathLike, *, calibration: Calibration = Calibration(),
                   images: Sequence[np.ndarray] | None = None, metadata: dict[str, str] | None = None) -> Path:
    """Quantise the fp32 dense graph ``src`` (dynamic or static shapes) → the int8 Q/DQ graph ``dst`` (returned;
    written atomically). images: the calibration images float32[H, W] (default: :func:`calibration_images`).
    metadata: ``gixdrt.*`` properties to keep (the source graph's are kept too); ``gixdrt.precision`` becomes
    ``int8`` and ``gixdrt.calibration`` the settings."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from ..io.atomic import atomic_path
    from .graphs import IR_VERSION, graph_metadata

    cal = calibration
    if images is None:
        images = calibration_images(cal)
    meta = {**graph_metadata(src), **(metadata or {})}
    with tempfile.TemporaryDirectory(prefix="gixdrt-int8-") as tmp:
        folded = Path(tmp) / "folded.onnx"
        _fold_for_quantisation(src, folded)
        out = Path(tmp) / "int8.onnx"
        extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "CalibStridedMinMax": 1}
        if cal.method == "Percentile":
            extra["CalibPercentile"] = cal.percentile
        root = logging.getLogger()
        level = root.level
        root.setLevel(max(level, logging.ERROR))  # the quantiser's advice to "pre-process" (we fold BN ourselves)
        try:
            with contextlib.redirect_stdout(sys.stderr):  # the calibrator prints its progress
                quantize_static(
                    os.fspath(folded), os.fspath(out), _Reader(images), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, cal.method), nodes_to_exclude=list(cal.exclude),
                    extra_options=extra,
                )
        finally:
            root.setLevel(level)
        model = onnx.load(os.fspath(out))
    model.ir_version = IR_VERSION
    model.producer_name = "gixdrt"
    del model.metadata_props[:]
    meta.update({"gixdrt.precision": "int8", "gixdrt.calibration": json.dumps(cal.to_dict(), sort_keys=True),
                 "gixdrt.calibration_images": str(len(images))})
    onnx.helper.set_model_props(model, {k: str(v) for k, v in meta.items()})
    onnx.checker.check_model(model)
    dst = Path(dst)
    with atomic_path(dst) as tmp_path:
        onnx.save(model, os.fspath(tmp_path))
    return dst


def cpu_int8(graph: str | os.PathLike | Any) -> bytes:
    """The int8 graph for ONNX Runtime on an x86 CPU (serialized), computing the same quantised values:

    - each ``Q(s, 0) → DQ → Relu → Q(s, 0)`` (the ReLU between two quantisations of one scale: in the int8
      domain, max(q, 0)) becomes one ``Q(s)`` to uint8 with zero point 0, whose range starts at 0: the ReLU is
      the quantisation's lower clamp (the upper one moves from 127·s to 255·s, so values above the calibrated
      range are clipped later, not sooner);
    - every other activation Q/DQ zero point int8 0 → uint8 128 (the same real values, q_u8 = q_s8 + 128);
      weights stay int8.

    ONNX Runtime then fuses each DQ → Conv → Q into a u8s8 QLinearConv (VNNI) instead of its slow s8s8 path,
    with no float ReLU between the convolutions."""
    import onnx
    from onnx import numpy_helper

    if isinstance(graph, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(graph)  # the caller's graph stays as it is
    else:
        model = onnx.load(os.fspath(graph))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    _fold_relus(model, inits)
    weights = {n.input[0] for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    weight_zps = {n.input[2] for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in weights
                  and len(n.input) > 2}
    for n in g.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(n.input) < 3 or n.input[0] in weights:
            continue
        zp = n.input[2]
        if zp in weight_zps or zp not in inits or inits[zp].data_type != onnx.TensorProto.INT8:
            continue
        z = numpy_helper.to_array(inits[zp]).astype(np.int16) + 128
        inits[zp].CopyFrom(numpy_helper.from_array(z.astype(np.uint8), zp))
    return model.SerializeToString()


def _fold_relus(model, inits: dict) -> int:
    """The ReLU folding of :func:`cpu_int8` (in place) → how many ReLUs were folded."""
    from onnx import numpy_helper

    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}

    def value(name: str) -> np.ndarray | None:
        return numpy_helper.to_array(inits[name]) if name in inits else None

    def zero(node) -> bool:
        z = value(node.input[2]) if len(node.input) > 2 else None
        return z is not None and z.dtype == np.int8 and z.size == 1 and int(z) == 0

    drop: list = []
    zp_name = "gixdrt_relu_zero_point_u8"
    for relu in [n for n in g.node if n.op_type == "Relu"]:
        dq_a = producer.get(relu.input[0])
        q_b = consumers.get(relu.output[0], [])
        if dq_a is None or dq_a.op_type != "DequantizeLinear" or len(q_b) != 1 or q_b[0].op_type != "QuantizeLinear":
            continue
        q_b = q_b[0]
        q_a = producer.get(dq_a.input[0])
        if q_a is None or q_a.op_type != "QuantizeLinear" or len(consumers.get(q_a.output[0], [])) != 1:
            continue
        if len(consumers.get(dq_a.output[0], [])) != 1 or {q_a.output[0], dq_a.output[0], relu.output[0],
                                                            q_b.output[0]} & outputs:
            continue
        s_a, s_b = value(q_a.input[1]), value(q_b.input[1])
        if s_a is None or s_b is None or s_a.size != 1 or not np.array_equal(s_a, s_b) or not (zero(q_a) and zero(q_b)):
            continue
        if zp_name not in inits:
            g.initializer.append(numpy_helper.from_array(np.array(0, np.uint8), zp_name))
            inits[zp_name] = g.initializer[-1]
        q_a.input[2] = zp_name
        for dq in consumers.get(q_b.output[0], []):
            if dq.op_type != "DequantizeLinear":
                raise AssertionError(f"{q_b.name}: feeds {dq.op_type}, expected DequantizeLinear")  # QDQ format
            dq.input[0], dq.input[1], dq.input[2] = q_a.output[0], q_a.input[1], zp_name
        drop.extend([dq_a, relu, q_b])
    for n in drop:
        g.node.remove(n)
    return len(drop) // 3


def static_int8(src: str | os.PathLike, dst: str | os.PathLike, dims: dict[str, int]) -> Path:
    """The int8 dense graph ``src`` with its dynamic dimensions fixed to ``dims`` (``{"batch": 1, "height": 512,
    ...}``, :meth:`gixdrt.gixd.artifacts.ModelGraphs.dims`) and its shape arithmetic folded: what a TensorRT build
    takes (same scales and weights) → ``dst``."""
    import onnx
    from onnx import shape_inference

    from ..io.atomic import atomic_path
    from .graphs import _fold_static_shapes

    model = onnx.load(os.fspath(src))
    for vi in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in dims:
                d.dim_value = int(dims[d.dim_param])
    _fold_static_shapes(model)
    inferred = shape_inference.infer_shapes(model, strict_mode=True)
    shapes = {vi.name: vi for vi in inferred.graph.output}
    for out in model.graph.output:
        out.type.CopyFrom(shapes[out.name].type)
    onnx.checker.check_model(model)
    dst = Path(dst)
    with atomic_path(dst) as tmp:
        onnx.save(model, os.fspath(tmp))
    return dst


def qdq_summary(graph: str | os.PathLike | Any) -> dict[str, Any]:
    """What an int8 graph holds: {"quantize": Q nodes, "dequantize": DQ nodes, "convs": Conv nodes, "convs_int8":
    Convs whose activation and weight inputs both come from DQ nodes, "per_channel": weight DQs with one scale
    per output channel (axis 0), "zero_points": the distinct zero-point values}."""
    import onnx
    from onnx import numpy_helper

    model = graph if isinstance(graph, onnx.ModelProto) else onnx.load(os.fspath(graph))
    g = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    per_channel = 0
    convs_int8 = 0
    for n in g.node:
        if n.op_type != "Conv":
            continue
        x, w = (producer.get(n.input[0]), producer.get(n.input[1]))
        if x is None or w is None or x.op_type != "DequantizeLinear" or w.op_type != "DequantizeLinear":
            continue
        convs_int8 += 1
        scale = inits.get(w.input[1])
        weight = inits.get(w.input[0])
        axis = next((a.i for a in w.attribute if a.name == "axis"), 1)
        if scale is not None and weight is not None and scale.ndim == 1 and axis == 0 and scale.size == weight.shape[0]:
            per_channel += 1
    zps = sorted({int(v) for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2
                  and n.input[2] in inits for v in np.unique(inits[n.input[2]])})
    return {
        "quantize": sum(n.op_type == "QuantizeLinear" for n in g.node),
        "dequantize": sum(n.op_type == "DequantizeLinear" for n in g.node),
        "convs": sum(n.op_type == "Conv" for n in g.node),
        "convs_int8": convs_int8,
        "per_channel": per_channel,
        "zero_points": zps,
    }
