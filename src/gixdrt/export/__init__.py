"""torch → ONNX export of the detector graphs with static shapes, and the checks a TensorRT build needs.

>>> from gixdrt.export import export_dense, export_head, check_graph
>>> export_dense(model, "dense.onnx", shape=(512, 1024), batch=1)      # BN folded, opset 17, fp32 or fp16
>>> export_head(model, "head.onnx", rois=1000)
>>> print(check_graph("dense.onnx"))                                   # raises GraphCheckError on a problem

Attributes load lazily: importing this package needs neither PyTorch nor onnx.
"""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "export_dense": "graphs",
    "export_head": "graphs",
    "dense_outputs": "graphs",
    "graph_metadata": "graphs",
    "model_digest": "graphs",
    "to_fp16": "graphs",
    "DenseGraph": "graphs",
    "HeadGraph": "graphs",
    "DENSE_INPUTS": "graphs",
    "HEAD_INPUTS": "graphs",
    "HEAD_OUTPUTS": "graphs",
    "OPSET": "graphs",
    "IR_VERSION": "graphs",
    "EXPORT_VERSION": "graphs",
    "fold_batchnorm": "fold",
    "fold_conv_bn": "fold",
    "check_graph": "check",
    "GraphReport": "check",
    "GraphCheckError": "check",
    "TRT_SUPPORTED_OPS": "check",
    "DATA_DEPENDENT_OPS": "check",
    "TRT_OPSETS": "check",
}

__all__ = [
    "DATA_DEPENDENT_OPS",
    "DENSE_INPUTS",
    "EXPORT_VERSION",
    "HEAD_INPUTS",
    "HEAD_OUTPUTS",
    "IR_VERSION",
    "OPSET",
    "TRT_OPSETS",
    "TRT_SUPPORTED_OPS",
    "DenseGraph",
    "GraphCheckError",
    "GraphReport",
    "HeadGraph",
    "check_graph",
    "dense_outputs",
    "export_dense",
    "export_head",
    "fold_batchnorm",
    "fold_conv_bn",
    "graph_metadata",
    "model_digest",
    "to_fp16",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals(), __all__)
