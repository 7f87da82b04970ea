"""torch → ONNX export of the detector's two graphs, with fixed shapes and only ops TensorRT parses.

- **dense**: ``images`` float32[B, 1, H, W] (contrast image in [0, 1]) → ``p2`` float32[B, 64, H/8, W/4],
  ``logits_{l}`` float32[B, A, h_l, w_l] and ``deltas_{l}`` float32[B, 4A, h_l, w_l] for the levels l = 0, 1, 2
  (P2, P3, P4; the RPN layout of :class:`gixdrt.model.Dense`). BatchNorm is folded into the convolutions.
- **head**: ``roi_features`` float32[R, 64, 16, 16] → ``logits`` float32[R], ``deltas`` float32[R, 4]
  (relative to the proposals). R is fixed: callers pad the RoIs to R and slice the outputs by the real count.

Proposals, RoIAlign and the final filter stay outside the graphs (their outputs have data-dependent sizes),
so each graph has static shapes and a TensorRT engine built from it can be captured in a CUDA graph.
With ``fp16=True`` weights and activations are float16 inside and the graph casts at its boundaries, so the
inputs and outputs stay float32 and all box arithmetic (outside) stays fp32.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. For fixed shapes and these plain
convolutional graphs it is exact and needs no extra package (the dynamo exporter needs onnxscript). The
fp16 variant is converted from the fp32 graph here (:func:`to_fp16`): tracing a half model on the CPU
runs PyTorch's fp16 convolutions, which take minutes.
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DENSE_INPUTS",
    "EXPORT_VERSION",
    "HEAD_INPUTS",
    "HEAD_OUTPUTS",
    "IR_VERSION",
    "OPSET",
    "DenseGraph",  # noqa: F822 - defined on first access (torch is imported lazily)
    "HeadGraph",  # noqa: F822
    "dense_outputs",
    "export_dense",
    "export_head",
    "graph_metadata",
    "model_digest",
    "to_fp16",
]

#: ONNX opset of the exported graphs (TensorRT 10 parses opsets 9 to 20; RoiAlign needs ≥ 16)
OPSET = 17
#: IR version written into every graph: onnx 1.23 writes 14 by default, which ONNX Runtime 1.31 rejects
IR_VERSION = 10
#: bump when the graphs change, so cached exports are rebuilt
EXPORT_VERSION = 1

DENSE_INPUTS = ("images",)
HEAD_INPUTS = ("roi_features",)
HEAD_OUTPUTS = ("logits", "deltas")


def dense_outputs(levels: int = 3) -> tuple[str, ...]:
    """Output names of the dense graph: ``p2``, then ``logits_0..``, then ``deltas_0..``."""
    return ("p2", *(f"logits_{i}" for i in range(levels)), *(f"deltas_{i}" for i in range(levels)))


def _torch():
    import torch

    return torch


# -------------------------------------------------------------------------------------------------
# The graphs as torch modules (also what TorchRunner runs as the reference)
# -------------------------------------------------------------------------------------------------
def _modules():
    torch = _torch()

    class DenseGraph(torch.nn.Module):
        """images float32[B, 1, H, W] → (p2, logits_0..L-1, deltas_0..L-1): the model's :meth:`dense` stage."""

        def __init__(self, model):
            super().__init__()
            self.transform_img = model.transform_img
            self.backbone = model.backbone
            self.rpn_head = model.rpn_head
            self.eval()

        def forward(self, images):
            features = self.backbone(self.transform_img(images))
            logits, deltas = self.rpn_head(features)
            return (features[0], *logits, *deltas)

    class HeadGraph(torch.nn.Module):
        """roi_features float32[R, 64, 16, 16] → (logits float32[R], deltas float32[R, 4]): :meth:`head`."""

        def __init__(self, model):
            super().__init__()
            self.box_head = model.box_head
            self.box_predictor = model.box_predictor
            self.eval()

        def forward(self, roi_features):
            return self.box_predictor(self.box_head(roi_features))

    return DenseGraph, HeadGraph


def __getattr__(name: str) -> Any:  # DenseGraph, HeadGraph: defined on first use, so torch loads lazily
    if name in ("DenseGraph", "HeadGraph"):
        dense, head = _modules()
        globals().update(DenseGraph=dense, HeadGraph=head)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
def _export(module, example, input_names, output_names):
    """Trace ``module`` on ``example`` with the TorchScript exporter → onnx.ModelProto (fixed shapes)."""
    import onnx

    torch = _torch()
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice; our choice is deliberate
        torch.onnx.export(
            module, (example,), buf, dynamo=False, opset_version=OPSET, input_names=list(input_names),
            output_names=list(output_names), do_constant_folding=True,
        )
    return onnx.load_from_string(buf.getvalue())


def _freeze_resize_sizes(model) -> None:
    """Replace the Shape→Slice→Concat subgraphs that compute Resize ``sizes`` by constants, then prune.

    The FPN resizes to the lateral's size, which the tracer records as a shape computation. With static
    shapes the sizes are known, and a constant keeps the graph free of shape arithmetic.
    """
    import onnx
    from onnx import numpy_helper, shape_inference

    inferred = shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    inits = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Resize" and len(node.input) == 4 and node.input[3] and node.input[3] not in inits:
            out = shapes.get(node.output[0])
            if not out or any(d is None for d in out):
                raise RuntimeError(f"Resize {node.name}: output shape not inferred, cannot freeze its sizes")
            name = f"{node.name}/sizes_const"
            model.graph.initializer.append(numpy_helper.from_array(np.asarray(out, np.int64), name))
            node.input[3] = name
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
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save(model, os.fspath(tmp))
    return path


def export_dense(model, path: str | os.PathLike, *, shape: tuple[int, int] = (512, 1024), batch: int = 1,
                 fp16: bool = False):
    """Export the dense stage (normalisation, backbone, FPN, RPN head) of ``model`` → ``path`` (returned).

    model: :class:`gixdrt.model.GixdDetector` (not modified: BN is folded on a copy). shape: (H, W) of the
    polar image, multiples of the model's strides (32, 4). batch: B images per call, fixed.
    Graph: ``images`` float32[B, 1, H, W] → :func:`dense_outputs` (float32, fixed shapes).
    """
    from .fold import fold_batchnorm

    torch = _torch()
    h, w = (int(v) for v in shape)
    if batch < 1:
        raise ValueError(f"batch must be ≥ 1, got {batch}")
    example = torch.zeros(int(batch), model.config.in_channels, h, w)
    model.check_input(example)
    folded = fold_batchnorm(model).cpu().float()
    levels = len(model.config.anchor_sizes)
    proto = _export(__getattr__("DenseGraph")(folded), example, DENSE_INPUTS, dense_outputs(levels))
    _drop_identities(proto)
    _freeze_resize_sizes(proto)
    if fp16:
        to_fp16(proto)
    meta = {"gixdrt.graph": "dense", "gixdrt.image_shape": f"{h}x{w}", "gixdrt.batch": int(batch),
            "gixdrt.precision": "fp16" if fp16 else "fp32", "gixdrt.model_sha256": model_digest(model)}
    return _finish(proto, path, meta)


def export_head(model, path: str | os.PathLike, *, rois: int = 1000, fp16: bool = False):
    """Export the box head (fc6, fc7, predictor) of ``model`` for a fixed number of RoIs → ``path``.

    Graph: ``roi_features`` float32[R, C, P, P] (C = 64, P = 16) → ``logits`` float32[R], ``deltas``
    float32[R, 4]. R is usually ``rpn_post_nms_top_n`` × batch (1000 per image); pad to it.
    """
    torch = _torch()
    if rois < 1:
        raise ValueError(f"rois must be ≥ 1, got {rois}")
    cfg = model.config
    example = torch.zeros(int(rois), cfg.fpn_channels, cfg.roi_output_size, cfg.roi_output_size)
    net = copy.deepcopy(__getattr__("HeadGraph")(model)).cpu().float()  # the caller's model stays where it is
    proto = _export(net, example, HEAD_INPUTS, HEAD_OUTPUTS)
    _drop_identities(proto)
    _prune(proto)
    if fp16:
        to_fp16(proto)
    meta = {"gixdrt.graph": "head", "gixdrt.rois": int(rois), "gixdrt.precision": "fp16" if fp16 else "fp32",
            "gixdrt.model_sha256": model_digest(model)}
    return _finish(proto, path, meta)
