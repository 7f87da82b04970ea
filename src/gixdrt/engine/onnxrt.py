"""ONNX Runtime runner: the CPU execution provider by default, the CUDA one where onnxruntime-gpu and a GPU exist.

ONNX Runtime is imported when a runner is activated, never at import time. On the CPU, ``infer`` takes
NumPy arrays (or CPU torch tensors, viewed without a copy) and returns NumPy arrays that ONNX Runtime
allocated. On a GPU (``device="cuda[:N]"``) inputs and outputs are bound with IO binding: torch CUDA tensors
are bound by pointer (no copy), NumPy inputs are copied to the device once, and the outputs are written
into torch CUDA tensors the runner owns (reused, so overwritten by the next call), or copied to NumPy
when PyTorch has no CUDA. The CUDA path runs only where onnxruntime-gpu and a GPU are both present.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .base import EngineUnavailableError, Runner, TensorMeta, cuda_gpu

__all__ = ["OnnxRuntimeRunner", "onnxruntime_devices", "session_from_onnx"]

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _import_ort():
    try:
        import onnxruntime
    except ImportError as exc:
        raise EngineUnavailableError(f"ONNX Runtime is not installed (pip install onnxruntime): {exc}") from None
    return onnxruntime


def _parse_device(device: str) -> tuple[str, int]:
    kind, _, index = str(device).partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise ValueError(f"invalid device {device!r} for ONNX Runtime: use cpu, cuda or cuda:N")
    return kind, int(index or 0)


def onnxruntime_devices() -> dict[str, str | None]:
    """{"cpu": why not or None, "cuda": why not or None} for ONNX Runtime on this machine (imports it)."""
    try:
        ort = _import_ort()
    except EngineUnavailableError as exc:
        return {"cpu": str(exc), "cuda": str(exc)}
    cuda = None
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        cuda = "this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    else:
        ok, why = cuda_gpu()
        cuda = None if ok else f"no CUDA GPU ({why})"
    return {"cpu": None, "cuda": cuda}


def session_from_onnx(graph: str | os.PathLike | bytes, *, device: str = "cpu", threads: int | None = None,
                      spin: bool = True, dims: Mapping[str, int] | None = None):
    """Loader: an ``onnxruntime.InferenceSession`` for a graph file or serialized graph on ``device``.

    threads: intra-op threads of the CPU provider (None: ONNX Runtime's default, one per core). spin: let
    idle pool threads spin for new work; turn it off when other CPU work (kernels between graphs)
    follows each run, or the spinning threads take the cores from it. dims: values of the graph's named
    dynamic dimensions (``{"batch": 1, "height": 512, "width": 1024}``): ONNX Runtime then plans and optimises
    the session for those static shapes (free-dimension overrides), as fast as a graph exported for them.
    Raises :class:`EngineUnavailableError` when the device's provider cannot run here.
    """
    ort = _import_ort()
    kind, index = _parse_device(device)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: the optimizer's notes are not the user's business
    if threads:
        opts.intra_op_num_threads = int(threads)
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for name, value in (dims or {}).items():
        opts.add_free_dimension_override_by_name(str(name), int(value))
    if kind == "cuda":
        why = onnxruntime_devices()["cuda"]
        if why:
            raise EngineUnavailableError(f"ONNX Runtime on {device}: {why}")
        providers: list[Any] = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    source = graph if isinstance(graph, bytes) else os.fspath(graph)
    return ort.InferenceSession(source, opts, providers=providers)


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX graph with ONNX Runtime.

    graph: a path, a serialized graph (bytes), or a zero-argument loader returning an InferenceSession.
    device: ``"cpu"`` (default) or ``"cuda[:N]"``; threads: CPU intra-op threads (None: all cores); spin and
    dims: see :func:`session_from_onnx`.
    The graph's inputs and outputs must have static shapes once ``dims`` are applied.
    """

    name = "onnxruntime"

    def __init__(self, graph: str | os.PathLike | bytes | Callable[[], Any], *, device: str = "cpu",
                 threads: int | None = None, spin: bool = True, dims: Mapping[str, int] | None = None):
        super().__init__()
        self.spin = spin
        self.dims = dict(dims or {})
        self._kind, self._index = _parse_device(device)
        self.device = device
        self.threads = threads
        self._graph = graph
        self.session = None
        self._outputs: dict[str, TensorMeta] = {}
        self._out_buffers: dict[str, Any] | None = None

    @property
    def providers(self) -> list[str]:
        self._require_active()
        return self.session.get_providers()

    def metadata(self) -> dict[str, str]:
        """The graph's custom metadata properties (gixdrt writes ``gixdrt.*`` keys)."""
        self._require_active()
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def output_metadata(self) -> dict[str, TensorMeta]:
        self._require_active()
        return dict(self._outputs)

    def activate_impl(self) -> None:
        if callable(self._graph) and not isinstance(self._graph, (str, bytes, os.PathLike)):
            self.session = self._graph()
        else:
            self.session = session_from_onnx(self._graph, device=self.device, threads=self.threads, spin=self.spin,
                                             dims=self.dims)
        if self._kind == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            self.session = None
            raise EngineUnavailableError(f"ONNX Runtime did not enable CUDA for {self.device}")
        self._outputs = {o.name: self._meta(o) for o in self.session.get_outputs()}

    def _meta(self, arg) -> TensorMeta:
        if arg.type not in _ORT_TYPES:
            raise ValueError(f"{self.name}: tensor {arg.name!r} has unsupported type {arg.type}")
        if not all(isinstance(d, int) for d in arg.shape):
            raise ValueError(f"{self.name}: tensor {arg.name!r} has a dynamic shape {arg.shape}; export with static "
                             "shapes or give the dynamic dimensions' values (dims=)")
        return TensorMeta(np.dtype(_ORT_TYPES[arg.type]), tuple(arg.shape))

    def input_metadata_impl(self) -> Mapping[str, TensorMeta]:
        return {i.name: self._meta(i) for i in self.session.get_inputs()}

    def infer_impl(self, feed: Mapping[str, Any]) -> dict[str, Any]:
        if self._kind == "cuda":
            return self._infer_cuda(feed)
        host = {}
        for name, x in feed.items():
            if type(x).__module__.startswith("torch"):
                x = x.detach().numpy()  # a CPU tensor: a view, no copy (a CUDA tensor raises here)
            host[name] = x
        return dict(zip(self._outputs, self.session.run(list(self._outputs), host)))

    def _infer_cuda(self, feed: Mapping[str, Any]) -> dict[str, Any]:
        ort = _import_ort()
        torch = _torch_cuda()
        binding = self.session.io_binding()
        keep = []  # what the binding points into must outlive the run
        if torch is not None:
            torch.cuda.current_stream(self._index).synchronize()  # inputs produced on torch's stream are ready
        for name, meta in (self._inputs or {}).items():
            x = feed[name]
            if torch is not None and isinstance(x, torch.Tensor) and x.is_cuda:
                x = x.contiguous()
                binding.bind_input(name, "cuda", x.device.index or 0, meta.dtype, tuple(x.shape), x.data_ptr())
            else:
                x = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(np.asarray(x)), "cuda", self._index)
                binding.bind_ortvalue_input(name, x)
            keep.append(x)
        if torch is not None:
            if self._out_buffers is None:
                dev = torch.device("cuda", self._index)
                self._out_buffers = {
                    n: torch.empty(m.shape, dtype=getattr(torch, str(m.dtype)), device=dev) for n, m in self._outputs.items()
                }
            for name, meta in self._outputs.items():
                buf = self._out_buffers[name]
                binding.bind_output(name, "cuda", self._index, meta.dtype, meta.shape, buf.data_ptr())
        else:
            for name in self._outputs:
                binding.bind_output(name, "cuda", self._index)
        binding.synchronize_inputs()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        if torch is not None:
            return dict(self._out_buffers)
        return dict(zip(self._outputs, binding.copy_outputs_to_cpu()))

    def deactivate_impl(self) -> None:
        self.session = None
        self._out_buffers = None


def _torch_cuda():
    """torch when it is installed with CUDA, else None (the CUDA path then returns NumPy outputs)."""
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None
