"""The engine: plans run by one executor, with runners for the graphs and kernel sets for the stages between.

- :mod:`~gixdrt.engine.plan`: :class:`Plan` (graph and kernel stages over named fixed-shape buffers);
- :mod:`~gixdrt.engine.executor`: :class:`Executor` (runs any plan);
- runners, one lifecycle (``activate()``, ``infer(feed) -> dict``, ``deactivate()``, or a ``with`` block):
  :class:`OnnxRuntimeRunner`, :class:`TensorRTRunner` (engines from :func:`build_engine`, checked against their
  sidecar by :func:`check_sidecar`), :class:`TorchRunner`, and :class:`ChunkedRunner` (a large batch a few items at
  a time);
- :mod:`~gixdrt.engine.kernelsets`: :class:`HostKernels` (NumPy/C++), :class:`DeviceKernels` (CUDA, one stream);
- :mod:`~gixdrt.engine.backends`: :class:`Runtime` (a backend = a runner kind + a kernel set, on a device),
  :func:`backend_status`, :data:`PREFERENCE`, :func:`available_backends`.

The engine knows no model: a model is a plan plus its graph artifacts (the GIXD detector's are in
:mod:`gixdrt.gixd`). Runtimes are imported only when used.
"""
from __future__ import annotations

from .._lazy import lazy_exports
from .base import EngineUnavailableError as EngineUnavailableError  # re-exported
from .base import Runner as Runner
from .base import TensorMeta as TensorMeta
from .base import cuda_gpu as cuda_gpu

_LAZY = {
    "Plan": "plan",
    "Buffer": "plan",
    "GraphStage": "plan",
    "KernelStage": "plan",
    "Fusion": "plan",
    "PlanError": "plan",
    "Executor": "executor",
    "HostKernels": "kernelsets",
    "DeviceKernels": "kernelsets",
    "Runtime": "backends",
    "PREFERENCE": "backends",
    "backend_status": "backends",
    "available_backends": "backends",
    "choose": "backends",
    "TorchRunner": "pyt",
    "ChunkedRunner": "chunked",
    "OnnxRuntimeRunner": "onnxrt",
    "session_from_onnx": "onnxrt",
    "onnxruntime_devices": "onnxrt",
    "TensorRTRunner": "trt",
    "tensorrt_status": "trt",
    "build_engine": "trt",
    "check_sidecar": "trt",
    "EngineMismatchError": "trt",
    "EngineBuildError": "trt",
}

__all__ = sorted([*_LAZY, "EngineUnavailableError", "Runner", "TensorMeta", "cuda_gpu"])

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals(), __all__)
