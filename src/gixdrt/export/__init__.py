"""torch → ONNX export of the detector graphs with static shapes, and the checks a TensorRT build needs.

>>> from gixdrt.export import export_dense, export_head, check_graph
>>> export_dense(model, "dense.onnx", shape=(512, 1024), batch=1)      # static shapes, opset 17, fp32 or fp16
>>> export_dense(model, "dense.onnx")                                  # batch and image size dynamic
>>> export_head(model, "head.onnx", rois=1000)
>>> print(check_graph("dense.onnx"))                                   # raises GraphCheckError on a problem

Attributes load lazily: importing this package needs neither PyTorch nor onnx.
"""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "export_dense": "graphs",
    "export_head": "graphs",
    "export_head_pooled": "graphs",
    "graph_metadata": "graphs",
    "model_digest": "graphs",
    "store_weights_fp16": "graphs",
    "ship_graphs": "graphs",
    "to_fp16": "graphs",
    "DENSE_INPUTS": "graphs",
    "DENSE_OUTPUTS": "graphs",
    "HEAD_INPUTS": "graphs",
    "HEAD_OUTPUTS": "graphs",
    "DYNAMIC_DIMS": "graphs",
    "OPSET": "graphs",
    "IR_VERSION": "graphs",
    "EXPORT_VERSION": "graphs",
    "PLUGIN_DOMAIN": "graphs",
    "fold_batchnorm": "fold",
    "fold_conv_bn": "fold",
    "check_graph": "check",
    "GraphReport": "check",
    "GraphCheckError": "check",
    "TRT_SUPPORTED_OPS": "check",
    "DATA_DEPENDENT_OPS": "check",
    "TRT_OPSETS": "check",
    "PLUGIN_OPS": "check",
    "Calibration": "quantize",
    "quantize_dense": "quantize",
    "static_int8": "quantize",
    "cpu_int8": "quantize",
    "qdq_summary": "quantize",
    "QUANT_VERSION": "quantize",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals(), __all__)
