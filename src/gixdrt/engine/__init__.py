"""Runners for the detector graphs behind one :class:`Detector` facade.

Runners (one lifecycle: ``activate()``, ``infer(feed) -> dict``, ``deactivate()``, or a ``with`` block):
:class:`TorchRunner` (the reference), :class:`OnnxRuntimeRunner` (CPU provider by default, CUDA where
onnxruntime-gpu and a GPU exist), :class:`TensorRTRunner` (serialized engines from
:func:`build_engine`, checked against their sidecar by :func:`check_sidecar`).
:class:`Detector` chooses a backend (``auto``: tensorrt > torch-cuda > onnxruntime on a GPU > onnxruntime on
the CPU > torch, logged) and says which; :data:`BACKENDS` lists those available here (probed on first access).
Runtimes are imported only when used.
"""
from __future__ import annotations

from .._lazy import lazy_exports
from .base import EngineUnavailableError, Runner, TensorMeta, cuda_gpu
from .detector import PREFERENCE, Detector, backend_status

_LAZY = {
    "BACKENDS": "detector",
    "TorchRunner": "pyt",
    "OnnxRuntimeRunner": "onnxrt",
    "session_from_onnx": "onnxrt",
    "onnxruntime_devices": "onnxrt",
    "TensorRTRunner": "trt",
    "tensorrt_status": "trt",
    "build_engine": "trt",
    "check_sidecar": "trt",
    "EngineMismatchError": "trt",
    "EngineBuildError": "trt",
    "OrtStages": "staged",
    "TorchCudaStages": "torch_cuda",
    "torch_cuda_status": "torch_cuda",
}

__all__ = [
    "BACKENDS",
    "PREFERENCE",
    "Detector",
    "EngineBuildError",
    "EngineMismatchError",
    "EngineUnavailableError",
    "OnnxRuntimeRunner",
    "OrtStages",
    "Runner",
    "TensorMeta",
    "TensorRTRunner",
    "TorchCudaStages",
    "TorchRunner",
    "backend_status",
    "build_engine",
    "check_sidecar",
    "cuda_gpu",
    "onnxruntime_devices",
    "session_from_onnx",
    "tensorrt_status",
    "torch_cuda_status",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals(), __all__)
