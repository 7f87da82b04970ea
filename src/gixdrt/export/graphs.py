"""torch → ONNX export of the detector's two graphs, with only ops TensorRT parses.

- **dense** (:class:`gixdrt.model.graphs.DenseGraph`): ``images`` float32[N, 1, H, W] (contrast image in [0, 1]) →
  ``p2`` float32[N, 64, H/8, W/4], ``logits`` float32[N, A] and ``deltas`` float32[N, A, 4]: the RPN outputs
  flattened level by level in anchor order (:func:`gixdrt.model.config.anchors`).
- **head** (:class:`gixdrt.model.graphs.HeadGraph`): ``roi_features`` float32[R, 64, 16, 16] → ``logits``
  float32[R], ``deltas`` float32[R, 4] (relative to the proposals).
- **pooled head** (TensorRT only, :func:`export_head_pooled`): ``p2`` and ``rois`` float32[N·R, 5] → the same
  outputs, pooling through gixdrt's ``GixdrtRoIAlign`` TensorRT plugin (:mod:`gixdrt.engine.plugins`) first.

Shapes: with ``shape``/``batch``/``rois`` given, every shape is static (what TensorRT engines and CUDA graphs
need); left out, the batch, image size and RoI count are named dynamic dimensions (:data:`DYNAMIC_DIMS`), and
ONNX Runtime fixes them per session (free-dimension overrides), so one file serves every image size. That is
how the ``default`` model ships its graphs in the package.

Precision: dynamic fp32 graphs keep the BatchNorm layers (the runtime folds them; the weights stay the model's
values exactly); static graphs come with BatchNorm folded (in float64). ``weights_fp16`` stores every float weight that float16 represents exactly as float16 with a Cast
back to float32 (lossless for a model trained or stored in fp16: half the file). ``fp16=True`` folds BatchNorm
(in float64) and converts weights and activations to float16 inside the graph; inputs and outputs stay
float32, so all box arithmetic (outside) stays fp32.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. For these plain convolutional
graphs it is exact and needs no extra package (the dynamo exporter needs onnxscript). The fp16 variant is
converted from the fp32 graph here (:func:`to_fp16`): tracing a half model on the CPU runs PyTorch's fp16
convolutions, which take minutes.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..model.config import DENSE_INPUTS, DENSE_OUTPUTS, HEAD_INPUTS, HEAD_OUTPUTS

__all__ = [
    "DENSE_INPUTS",
    "DENSE_OUTPUTS",
    "DYNAMIC_DIMS",
    "EXPORT_VERSION",
    "HEAD_INPUTS",
    "HEAD_OUTPUTS",
    "IR_VERSION",
    "OPSET",
    "PLUGIN_DOMAIN",
    "export_dense",
    "export_head",
    "export_head_pooled",
    "graph_metadata",
    "model_digest",
    "ship_graphs",
    "store_weights_fp16",
    "to_fp16",
]

#: ONNX opset of the exported graphs (TensorRT 10 parses opsets 9 to 20)
OPSET = 17
#: IR version written into every graph: onnx 1.23 writes 14 by default, which ONNX Runtime 1.31 rejects
IR_VERSION = 10
#: bump when the graphs change, so cached exports are rebuilt (2: RPN outputs flattened, dynamic dimensions)
EXPORT_VERSION = 2
#: ONNX domain of the nodes that gixdrt's TensorRT plugin library implements
PLUGIN_DOMAIN = "gixdrt"

#: the named dynamic dimensions of graphs exported without a fixed shape: tensor → {axis: name}
DYNAMIC_DIMS: dict[str, dict[str, dict[int, str]]] = {
    "dense": {
        "images": {0: "batch", 2: "height", 3: "width"},
        "p2": {0: "batch", 2: "p2_height", 3: "p2_width"},
        "logits": {0: "batch", 1: "anchors"},
        "deltas": {0: "batch", 1: "anchors"},
    },
    "head": {"roi_features": {0: "rois"}, "logits": {0: "rois"}, "deltas": {0: "rois"}},
}


def _torch():
    import torch

    return torch


# -------------------------------------------------------------------------------------------------
# Identity of a model: what cached exports are keyed by
# -------------------------------------------------------------------------------------------------
def model_digest(model) -> str:
    """sha256 (hex) over the model's architecture config and its state dict (names, dtypes, shapes, bytes)."""
    torch = _torch()
    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "to_dict"):
        h.update(json.dumps(cfg.to_dict(), sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def graph_metadata(path_or_model) -> dict[str, str]:
    """The ``gixdrt.*`` metadata properties of an exported graph (kind, shapes, precision, digest...)."""
    import onnx

    m = path_or_model if isinstance(path_or_model, onnx.ModelProto) else onnx.load(os.fspath(path_or_model), load_external_data=False)
    return {p.key: p.value for p in m.metadata_props if p.key.startswith("gixdrt.")}


# -------------------------------------------------------------------------------------------------
# Export
# -------------------------------------------------------------------------------------------------
def _export(module, example, input_names, output_names, dynamic_axes=None):
    """Trace ``module`` on ``example`` with the TorchScript exporter → onnx.ModelProto (fixed shapes unless
    ``dynamic_axes``: tensor → {axis: name})."""
    import onnx

    torch = _torch()
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice; our choice is deliberate
        # Dynamic graphs are exported in PRESERVE mode (the module is in eval mode): a BatchNorm stays a
        # BatchNormalization node, where EVAL would fold it into the convolution in float32 and the stored weights
        # would no longer be the model's values (nor exact in fp16); ONNX Runtime folds it when it loads the graph.
        # Static graphs (TensorRT) come BN-folded (fold_batchnorm, in float64) and use EVAL, whose constant
        # folding also removes the shape arithmetic.
        mode = torch.onnx.TrainingMode.PRESERVE if dynamic_axes else torch.onnx.TrainingMode.EVAL
        torch.onnx.export(
            module, (example,), buf, dynamo=False, opset_version=OPSET, input_names=list(input_names),
            output_names=list(output_names), do_constant_folding=True, dynamic_axes=dynamic_axes, training=mode,
        )
    module.eval()  # the exporter restores the training flag of the top module only, recursively: keep eval
    return onnx.load_from_string(buf.getvalue())


#: ops of the shape arithmetic that :func:`_fold_static_shapes` evaluates once the shapes are known
_SHAPE_OPS = {"Shape", "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Mod", "Div", "Mul", "Add", "Sub", "Cast",
              "Constant", "Equal", "Where", "ConstantOfShape", "Reshape", "Range", "ReduceProd", "Floor", "Neg"}
_SHAPE_VALUES = 64  # largest tensor (elements) treated as shape arithmetic


def _fold_static_shapes(model) -> None:
    """Replace the shape arithmetic of a static-shape graph by constants, then prune.

    The tracer records ``x.shape`` uses (the FPN's resize to the lateral's size, flatten/unflatten) as
    Shape → Slice → Concat … subgraphs. With static inputs every shape is known: each Shape node becomes a
    constant, and every small integer node whose inputs are all constants is evaluated (ONNX's reference
    evaluator) and replaced by its value, so the graph keeps no shape arithmetic (TensorRT and CUDA graphs want
    none).
    """
    import onnx
    from onnx import helper, numpy_helper, shape_inference
    from onnx.reference import ReferenceEvaluator

    g = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    opset = list(model.opset_import)
    changed = True
    while changed:  # each round: shapes inferred with the constants found so far, then every foldable node folded
        changed = False
        inferred = shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
        shapes = {}
        for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
            tt = vi.type.tensor_type
            if tt.HasField("shape"):
                shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        for node in list(g.node):
            if node.op_type not in _SHAPE_OPS or any(o in consts for o in node.output):
                continue
            if node.op_type == "Shape":
                dims = shapes.get(node.input[0])
                if dims is None or any(d is None for d in dims):
                    continue
                start = next((a.i for a in node.attribute if a.name == "start"), 0)
                end = next((a.i for a in node.attribute if a.name == "end"), len(dims))
                values = [np.asarray(dims[start:end], np.int64)]
            elif all(i in consts for i in node.input if i):
                if any(i and consts[i].size > _SHAPE_VALUES for i in node.input):
                    continue
                single = helper.make_model(
                    helper.make_graph([node], "fold", [], [helper.make_tensor_value_info(o, 0, None) for o in node.output]),
                    opset_imports=opset, ir_version=IR_VERSION)
                values = [np.asarray(v) for v in ReferenceEvaluator(single).run(None, {i: consts[i] for i in node.input if i})]
                if node.op_type != "Constant" and any(v.size > _SHAPE_VALUES or v.dtype.kind == "f" for v in values):
                    continue  # data, not shape arithmetic
            else:
                continue
            for name, value in zip(node.output, values):
                consts[name] = value
                g.initializer.append(numpy_helper.from_array(value, name))
            g.node.remove(node)
            changed = True
    _prune(model)
    onnx.checker.check_model(model)


def _drop_identities(model) -> None:
    """Bypass Identity nodes (the folded BatchNorms export as nn.Identity) unless they produce a graph output."""
    outputs = {o.name for o in model.graph.output}
    alias = {}
    for node in model.graph.node:
        if node.op_type == "Identity" and node.output[0] not in outputs:
            alias[node.output[0]] = alias.get(node.input[0], node.input[0])
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name in alias:
                node.input[k] = alias[name]


def _prune(model) -> None:
    """Remove nodes whose outputs reach no graph output, and initializers nothing reads."""
    needed = {o.name for o in model.graph.output}
    keep = []
    for node in reversed(model.graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    del model.graph.node[:]
    model.graph.node.extend(keep)
    unused = [i for i in model.graph.initializer if i.name not in needed]
    for init in unused:
        model.graph.initializer.remove(init)
    for vi in [v for v in model.graph.value_info if v.name not in needed]:
        model.graph.value_info.remove(vi)


#: inputs that must stay float32 in an fp16 graph (op type → input positions): Resize's roi and scales
_FP32_ONLY_INPUTS = {"Resize": (1, 2)}


def to_fp16(model):
    """float32 graph → the same graph with float16 weights and activations, float32 inputs and outputs.

    Every float32 initializer and Constant becomes float16 (except inputs ONNX requires in float32, e.g.
    Resize scales); each float32 graph input gets a Cast to float16 and each output a Cast back. Modifies
    and returns ``model``.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    fp32_only = set()
    for node in g.node:
        for pos in _FP32_ONLY_INPUTS.get(node.op_type, ()):
            if pos < len(node.input) and node.input[pos]:
                fp32_only.add(node.input[pos])
    for i, init in enumerate(g.initializer):
        if init.data_type == TensorProto.FLOAT and init.name not in fp32_only:
            arr = numpy_helper.to_array(init).astype(np.float16)
            g.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))
    for node in g.node:
        if node.op_type == "Constant" and node.output[0] not in fp32_only:
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16)))
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
    casts_in = []
    for inp in g.input:
        if inp.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half = f"{inp.name}_fp16"
        for node in g.node:
            for k, name in enumerate(node.input):
                if name == inp.name:
                    node.input[k] = half
        casts_in.append(helper.make_node("Cast", [inp.name], [half], name=f"cast_in/{inp.name}", to=TensorProto.FLOAT16))
    casts_out = []
    for out in g.output:
        if out.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half = f"{out.name}_fp16"
        for node in g.node:
            for k, name in enumerate(node.output):
                if name == out.name:
                    node.output[k] = half
            for k, name in enumerate(node.input):
                if name == out.name:
                    node.input[k] = half
        casts_out.append(helper.make_node("Cast", [half], [out.name], name=f"cast_out/{out.name}", to=TensorProto.FLOAT))
    nodes = casts_in + list(g.node) + casts_out
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]  # stale element types; shape inference recomputes them
    onnx.checker.check_model(model)
    return model


def _finish(model, path, meta: dict[str, Any]):
    """Set the IR version and metadata, check, write atomically → Path."""
    import onnx

    from ..io.atomic import atomic_path

    model.ir_version = IR_VERSION
    model.producer_name = "gixdrt"
    from .. import __version__

    model.producer_version = __version__
    del model.metadata_props[:]
    meta = {"gixdrt.version": __version__, "gixdrt.export_version": str(EXPORT_VERSION), **meta}
    onnx.helper.set_model_props(model, {k: str(v) for k, v in meta.items()})
    # the full check runs ONNX's shape inference, which knows no plugin op: plain structural check for those
    onnx.checker.check_model(model, full_check=not any(n.domain == PLUGIN_DOMAIN for n in model.graph.node))
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save(model, os.fspath(tmp))
    return path


def store_weights_fp16(model):
    """Store every float32 initializer that float16 represents exactly as float16, with a Cast back to float32
    in front of its users → ``model`` (modified). The graph computes exactly what it computed before; for a
    model whose weights are float16 values (trained or stored in fp16) the file is half the size."""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    casts = []
    for i, init in enumerate(g.initializer):
        if init.data_type != TensorProto.FLOAT or not init.dims:
            continue
        values = numpy_helper.to_array(init)
        half = values.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), values, equal_nan=True):
            continue  # not exact in fp16 (BN statistics, folded constants): stays float32
        name = init.name  # (init is overwritten below)
        stored = f"{name}.fp16"
        g.initializer[i].CopyFrom(numpy_helper.from_array(half, stored))
        casts.append(helper.make_node("Cast", [stored], [name], name=f"weight_fp32/{name}", to=TensorProto.FLOAT))
    nodes = casts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    return model


def _check_size(model, shape, batch) -> tuple[int, int, int]:
    """(N, H, W) of the example to trace with; ValueError for sizes the network cannot take."""
    if batch is not None and (isinstance(batch, bool) or int(batch) < 1):
        raise ValueError(f"batch must be ≥ 1, got {batch}")
    cfg = model.config
    h, w = (int(v) for v in shape) if shape is not None else (2 * cfg.height_multiple, 16 * cfg.width_multiple)
    cfg.check_image_size(h, w)
    return int(batch or 1), h, w


def export_dense(model, path: str | os.PathLike, *, shape: tuple[int, int] | None = None, batch: int | None = None,
                 fp16: bool = False, weights_fp16: bool = False):
    """Export the dense graph (normalisation, backbone, FPN, RPN head, flattened RPN outputs) of ``model`` →
    ``path`` (returned).

    model: :class:`gixdrt.model.GixdDetector` (not modified). shape: (H, W) of the polar image, multiples of the
    model's strides (32, 4), and batch: images per call; each fixes that dimension (None: dynamic, named as in
    :data:`DYNAMIC_DIMS`). Static shapes are what TensorRT builds need. fp16 / weights_fp16: see the module
    docstring. Graph: ``images`` float32[N, 1, H, W] → ``p2``, ``logits``, ``deltas`` (float32).
    """
    from ..model.graphs import DenseGraph
    from .fold import fold_batchnorm

    torch = _torch()
    n, h, w = _check_size(model, shape, batch)
    dynamic = {k: v for k, v in DYNAMIC_DIMS["dense"].items()}
    if shape is not None:  # the image size is fixed: keep only the batch dynamic (when it is)
        dynamic = {k: {a: d for a, d in axes.items() if d == "batch"} for k, axes in dynamic.items()}
    if batch is not None:
        dynamic = {k: {a: d for a, d in axes.items() if d != "batch"} for k, axes in dynamic.items()}
    dynamic = {k: v for k, v in dynamic.items() if v} or None
    example = torch.zeros(n, model.config.in_channels, h, w)
    net = fold_batchnorm(model) if (fp16 or dynamic is None) else model
    proto = _export(DenseGraph(_cpu_float(net)), example, DENSE_INPUTS, DENSE_OUTPUTS, dynamic)
    _drop_identities(proto)
    if dynamic is None:
        _fold_static_shapes(proto)
    else:
        _prune(proto)
    if fp16:
        to_fp16(proto)
    elif weights_fp16:
        store_weights_fp16(proto)
    meta = {"gixdrt.graph": "dense", "gixdrt.image_shape": f"{h}x{w}" if shape is not None else "dynamic",
            "gixdrt.batch": int(batch) if batch is not None else "dynamic", "gixdrt.precision": "fp16" if fp16 else "fp32",
            "gixdrt.model_sha256": model_digest(model), **_model_meta(model)}
    return _finish(proto, path, meta)


def export_head(model, path: str | os.PathLike, *, rois: int | None = None, fp16: bool = False,
                weights_fp16: bool = False):
    """Export the box head (fc6, fc7, predictor) of ``model`` → ``path`` (returned).

    rois: RoIs per call, fixed (usually ``rpn_post_nms_top_n`` × batch: 1000 per image); None: dynamic.
    Graph: ``roi_features`` float32[R, C, P, P] (C = 64, P = 16) → ``logits`` float32[R], ``deltas`` float32[R, 4].
    """
    proto = _head_proto(model, rois, fp16)
    if weights_fp16 and not fp16:
        store_weights_fp16(proto)
    meta = {"gixdrt.graph": "head", "gixdrt.rois": int(rois) if rois is not None else "dynamic",
            "gixdrt.precision": "fp16" if fp16 else "fp32", "gixdrt.model_sha256": model_digest(model),
            **_model_meta(model)}
    return _finish(proto, path, meta)


def _head_proto(model, rois: int | None, fp16: bool):
    from ..model.graphs import HeadGraph

    torch = _torch()
    if rois is not None and (isinstance(rois, bool) or int(rois) < 1):
        raise ValueError(f"rois must be ≥ 1, got {rois}")
    cfg = model.config
    example = torch.zeros(int(rois or 8), cfg.fpn_channels, cfg.roi_output_size, cfg.roi_output_size)
    dynamic = DYNAMIC_DIMS["head"] if rois is None else None
    proto = _export(HeadGraph(_cpu_float(model)), example, HEAD_INPUTS, HEAD_OUTPUTS, dynamic)
    _drop_identities(proto)
    _prune(proto)
    if fp16:
        to_fp16(proto)
    return proto


def export_head_pooled(model, path: str | os.PathLike, *, batch: int, p2_shape: tuple[int, int], fp16: bool = False):
    """The TensorRT head graph: RoIAlign through gixdrt's plugin, then the box head → ``path`` (returned).

    Graph: ``p2`` float32[N, C, p2_shape] (P2 of an H×W image is H/8 × W/4) and ``rois`` float32[N·R, 5] (rows i·R … i·R + R − 1 of image i:
    batch index, x0, y0, x1, y1 in image pixels; R = ``rpn_post_nms_top_n``) → node ``GixdrtRoIAlign`` (domain
    :data:`PLUGIN_DOMAIN`; its attributes are the plugin's fields, plus ``plugin_version`` and
    ``plugin_namespace``, which TensorRT's ONNX parser uses to find the plugin creator) → ``roi_features`` →
    ``logits`` float32[N·R], ``deltas`` float32[N·R, 4]. The plugin computes in float32; with ``fp16`` the head
    after it runs in float16. ONNX Runtime cannot run this graph (it uses the plain head graph and gixdrt's
    RoIAlign kernel between the graphs); TensorRT needs the plugin library loaded to parse it.
    """
    from onnx import TensorProto, helper

    from ..engine.plugins import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION

    if isinstance(batch, bool) or int(batch) < 1:
        raise ValueError(f"batch must be ≥ 1, got {batch}")
    n = int(batch)
    p2h, p2w = (int(v) for v in p2_shape)
    cfg = model.config
    r = n * cfg.rpn_post_nms_top_n
    proto = _head_proto(model, r, fp16)
    g = proto.graph
    (feat_in,) = [i for i in g.input if i.name == HEAD_INPUTS[0]]
    g.input.remove(feat_in)
    c, p = cfg.fpn_channels, cfg.roi_output_size
    sy, sx = _roi_scale(model)
    g.input.extend([
        helper.make_tensor_value_info("p2", TensorProto.FLOAT, [n, c, p2h, p2w]),
        helper.make_tensor_value_info("rois", TensorProto.FLOAT, [r, 5]),
    ])
    pool = helper.make_node(
        PLUGIN_NAME, ["p2", "rois"], [HEAD_INPUTS[0]], name="gixdrt_roi_align", domain=PLUGIN_DOMAIN,
        out_h=p, out_w=p, scale_y=float(sy), scale_x=float(sx), sampling_ratio=int(cfg.roi_sampling_ratio),
        aligned=int(bool(cfg.roi_aligned)), plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_NAMESPACE,
    )  # fmt: skip
    nodes = [pool, *g.node]
    del g.node[:]
    g.node.extend(nodes)
    g.value_info.append(helper.make_tensor_value_info(HEAD_INPUTS[0], TensorProto.FLOAT, [r, c, p, p]))
    proto.opset_import.append(helper.make_opsetid(PLUGIN_DOMAIN, 1))
    meta = {"gixdrt.graph": "head_pooled", "gixdrt.rois": r, "gixdrt.batch": n, "gixdrt.p2_shape": f"{p2h}x{p2w}",
            "gixdrt.precision": "fp16" if fp16 else "fp32", "gixdrt.model_sha256": model_digest(model),
            **_model_meta(model)}
    return _finish(proto, path, meta)


def _cpu_float(model):
    """``model`` itself when it is a float32 CPU model, else a float32 CPU copy (the caller's model stays put)."""
    import copy

    first = next(model.parameters(), None)
    if first is None or (first.device.type == "cpu" and first.dtype == _torch().float32):
        return model
    return copy.deepcopy(model).cpu().float()


def _roi_scale(model) -> tuple[float, float]:
    """(s_y, s_x) of RoIAlign on P2, from the model's ``roi_align.scales`` buffer (the checkpoint's value)."""
    return tuple(float(v) for v in model.roi_align.scales[0])


def _model_meta(model) -> dict[str, str]:
    """What a runtime without PyTorch needs besides the card: the RoIAlign scale the weights were loaded with."""
    sy, sx = _roi_scale(model)
    return {"gixdrt.roi_scale": f"{sy!r},{sx!r}",
            "gixdrt.architecture": json.dumps(model.config.to_dict(), sort_keys=True)}


def ship_graphs(model, folder: str | os.PathLike) -> dict[str, Any]:
    """Export the graphs a model ships with into ``folder``: ``dense.onnx`` and ``head.onnx``, batch and image size
    dynamic, fp32 graphs storing the weights as fp16 where that is exact (all of them for weights saved in fp16)
    → the model card's ``graphs`` section (files, sizes, sha256, the RoIAlign scale, the export version). The
    runtime then needs neither PyTorch nor an export for this model on the CPU."""
    folder = Path(folder)
    files = {"dense": export_dense(model, folder / "dense.onnx", weights_fp16=True),
             "head": export_head(model, folder / "head.onnx", weights_fp16=True)}
    from ..io.assets import sha256

    section: dict[str, Any] = {}
    for name, path in files.items():
        section[name] = {"file": path.name, "bytes": path.stat().st_size,
                         "sha256": sha256(path)}
    section.update({"roi_scale": list(_roi_scale(model)), "export_version": EXPORT_VERSION,
                    "model_sha256": model_digest(model), "shapes": "dynamic (batch, height, width; rois)"})
    return section
