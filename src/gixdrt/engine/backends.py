"""Backends: a runtime for the graphs plus a kernel set for the stages between them, on one device.

============  ===========================================  ======================================
backend       graphs run by                                between the graphs
============  ===========================================  ======================================
tensorrt      :class:`TensorRTRunner` (engines built       CUDA kernels on device buffers
              from the exported graphs, cached)            (:class:`DeviceKernels`)
torch-cuda    :class:`TorchRunner`, BN folded, fp16/fp32,  CUDA kernels on device buffers
              CUDA graphs
onnxruntime   :class:`OnnxRuntimeRunner` (CPU provider,    host kernels (:class:`HostKernels`);
              or CUDA where onnxruntime-gpu and a GPU      on a GPU the CUDA kernels
              exist)
torch         :class:`TorchRunner`, eager (the reference)  host kernels (CUDA kernels on a GPU)
============  ===========================================  ======================================

A :class:`Runtime` is one backend on one device and precision. It opens a runner for any graph of a
:class:`GraphSource` (the model's graph artifacts: ONNX files, TensorRT engines, torch modules; the model's
side provides them, the runtime knows no model) and holds the kernel set. ``auto`` takes the first available of
:data:`PREFERENCE` (each on a GPU before the CPU) and logs its choice once; a named backend that cannot run here
raises :class:`~gixdrt.engine.base.EngineUnavailableError` with the reason.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from .base import EngineUnavailableError, Runner, TensorMeta, cuda_gpu
from .kernelsets import DeviceKernels, HostKernels, KernelSet

log = logging.getLogger(__name__)

__all__ = ["PRECISIONS", "PREFERENCE", "GraphSource", "Runtime", "available_backends", "backend_status", "choose",
           "parse_device"]

#: every backend, in the order ``auto`` prefers them. torch-cuda comes after TensorRT (it is the yardstick
#: TensorRT engines have to beat) and before ONNX Runtime's CUDA provider; on a CPU-only machine ``auto`` ends
#: at ONNX Runtime on the CPU.
PREFERENCE = ("tensorrt", "torch-cuda", "onnxruntime", "torch")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
_CHOICES = (("tensorrt", "cuda"), ("torch-cuda", "cuda"), ("onnxruntime", "cuda"), ("onnxruntime", "cpu"),
            ("torch", "cpu"))
#: backends that run on a GPU only: a named one without a device goes to CUDA
_GPU_ONLY = ("tensorrt", "torch-cuda")


class GraphSource(Protocol):
    """A model's graphs as the runtimes take them (see :class:`gixdrt.gixd.artifacts.ModelGraphs`)."""

    def onnx(self, artifact: str, *, precision: str, shapes: Mapping[str, tuple[int, ...]] | None,
             static: bool) -> tuple[Path, dict[str, int]]:
        """The ONNX file of ``artifact`` and the values of its dynamic dimensions for the input ``shapes``."""

    def torch_module(self, graph: str, *, precision: str, fold: bool, channels_last: bool) -> Any:
        """The graph as a ``torch.nn.Module``."""

    def can_provide(self, artifact: str) -> str | None:
        """None when ``artifact`` can be made here, else why not."""


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _ext_info() -> dict[str, Any] | None:
    """``gixdrt._ext.build_info()``, or None where the compiled extension is not built."""
    try:
        from .. import _ext
    except ImportError:
        return None
    return dict(_ext.build_info())


def _cuda_kernels_status() -> str | None:
    """None when the CUDA kernel set can run here (PyTorch CUDA, Numba CUDA, gixdrt's CUDA RoIAlign), else why."""
    reasons = []
    if not _has("torch"):
        return "PyTorch is not installed (pip install gixdrt[torch]): the device buffers are PyTorch tensors"
    import torch

    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        reasons.append(f"PyTorch has no CUDA device (torch {torch.__version__}, {build})")
    from ..kernels.registry import cuda_unavailable_reason, cudasim

    info = _ext_info()
    if info is None:
        reasons.append("gixdrt._ext is not built, so there is no CUDA RoIAlign (reinstall gixdrt)")
    elif not info.get("roi_align_cuda"):
        reasons.append("gixdrt._ext was built without CUDA (no CUDA compiler at build time, or "
                       "GIXDRT_DISABLE_CUDA=ON), so there is no CUDA RoIAlign")
    if cudasim():
        reasons.append("numba.cuda unavailable: NUMBA_ENABLE_CUDASIM=1 selects Numba's CPU simulator, which "
                       "cannot run kernels on PyTorch CUDA tensors")
    else:
        why = cuda_unavailable_reason()
        if why:
            reasons.append(f"numba.cuda unavailable: {why} (pip install gixdrt[gpu] installs numba-cuda)")
    return "; ".join(reasons) or None


@functools.lru_cache(maxsize=1)
def backend_status() -> dict[tuple[str, str], str | None]:
    """(backend, device kind) → None when it can run here, else why not. Probes once per process: the GPU
    through the CUDA driver (never TensorRT); only where there is one, PyTorch's CUDA, Numba CUDA and TensorRT
    (so a CPU machine imports neither PyTorch nor Numba to find out); ONNX Runtime's providers."""
    torch_ok = _has("torch")
    no_torch = "PyTorch is not installed (pip install gixdrt[torch])"
    status: dict[tuple[str, str], str | None] = {}
    status["torch", "cpu"] = None if torch_ok else no_torch
    status["tensorrt", "cpu"] = "TensorRT runs on a CUDA GPU only"
    status["torch-cuda", "cpu"] = "torch-cuda runs on a CUDA GPU only (use onnxruntime or torch on the CPU)"
    gpu, why_gpu = cuda_gpu()
    if _has("onnxruntime"):
        from .onnxrt import onnxruntime_devices

        ort = onnxruntime_devices()
    else:
        ort = dict.fromkeys(("cpu", "cuda"), "ONNX Runtime is not installed (pip install onnxruntime)")
    status["onnxruntime", "cpu"] = ort["cpu"]
    if not gpu:
        no_gpu = f"no CUDA GPU ({why_gpu})"
        for backend in ("torch", "tensorrt", "torch-cuda", "onnxruntime"):
            status[backend, "cuda"] = no_gpu
        return status
    from .trt import tensorrt_status

    kernels = _cuda_kernels_status()
    cuda_torch = None
    if torch_ok:
        import torch

        cuda_torch = None if torch.cuda.is_available() else "PyTorch sees no CUDA GPU"
    status["torch", "cuda"] = no_torch if not torch_ok else (cuda_torch or kernels)
    trt = tensorrt_status()
    status["tensorrt", "cuda"] = trt or (f"TensorRT is installed, but the kernels between the engines cannot run: {kernels}"
                                         if kernels else None)
    status["torch-cuda", "cuda"] = kernels
    status["onnxruntime", "cuda"] = ort["cuda"] or kernels
    return status


def available_backends() -> tuple[str, ...]:
    """The backends that can run here on some device, in :data:`PREFERENCE` order."""
    status = backend_status()
    return tuple(b for b in PREFERENCE if any(status[b, d] is None for d in ("cuda", "cpu")))


def parse_device(device: str | None) -> tuple[str, int | None] | None:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"`` → (kind, index); None → None. ValueError naming the valid forms."""
    if device is None:
        return None
    text = str(device).strip()
    kind, sep, index = text.partition(":")
    if kind not in ("cpu", "cuda") or (sep and (kind == "cpu" or not index.isdigit())):
        raise ValueError(f"invalid device {device!r}: expected cpu, cuda or cuda:N")
    return kind, (int(index) if sep else None)


_logged: set[tuple[str, str]] = set()


def choose(backend: str = "auto", device: str | None = None) -> tuple[str, str]:
    """(backend, device) to run: ``auto`` takes the first available of :data:`_CHOICES` on ``device``'s kind (None:
    any); a named backend is checked. Raises :class:`EngineUnavailableError` with every reason, ValueError for an
    unknown name."""
    if backend != "auto" and backend not in PREFERENCE:
        raise ValueError(f"unknown backend {backend!r}; expected auto or one of {', '.join(PREFERENCE)}")
    parsed = parse_device(device)
    kind = None if parsed is None else parsed[0]
    if kind == "cuda":
        ok, why = cuda_gpu()
        if not ok:
            raise EngineUnavailableError(f"device {device!r} was asked for, but there is no CUDA GPU here ({why})")
    status = backend_status()
    if backend == "auto":
        candidates = [(b, d) for b, d in _CHOICES if kind in (None, d)]
        if kind == "cuda":
            candidates.append(("torch", "cuda"))
        for choice in candidates:
            if status[choice] is None:
                if choice not in _logged:
                    skipped = "; ".join(f"{b} on {d}: {status[b, d]}" for b, d in candidates[: candidates.index(choice)])
                    log.info("backend auto → %s on %s%s", *choice, f" (not {skipped})" if skipped else "")
                    _logged.add(choice)
                return choice[0], device or choice[1]
        reasons = "; ".join(f"{b} on {d}: {status[b, d]}" for b, d in candidates)
        raise EngineUnavailableError(f"no backend can run here ({reasons})")
    kind = kind or ("cuda" if backend in _GPU_ONLY else "cpu")
    why = status[backend, kind]
    if why:
        raise EngineUnavailableError(f"backend {backend!r} on {kind} is not available here: {why}")
    return backend, device or kind


def _cpu_int8(path: Path) -> bytes:
    """The int8 graph at ``path`` as ONNX Runtime's CPU provider runs it fastest (:func:`gixdrt.export.quantize.cpu_int8`)."""
    if not _has("onnx"):
        raise EngineUnavailableError("precision int8 on the CPU needs the onnx package (pip install onnx)")
    from ..export.quantize import cpu_int8

    return cpu_int8(path)


class Runtime:
    """One backend on one device and precision: opens runners for a :class:`GraphSource`'s graphs and holds the
    kernel set. See the module docstring for what each backend uses.

    threads: ONNX Runtime's CPU threads (None: one per core). engine_cache: where TensorRT engines are kept
    (None: the source's ONNX files' folder). workspace_gib: the TensorRT builder's workspace limit.
    """

    def __init__(self, backend: str, device: str, precision: str = "fp32", *, threads: int | None = None,
                 engine_cache: Path | None = None, workspace_gib: float = 4.0):
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; expected fp32, fp16, bf16 or int8")
        if precision == "bf16" and backend != "torch":
            raise ValueError(f"precision bf16 runs on the torch backend on the CPU (autocast; fast on CPUs with AMX or "
                             f"AVX512-BF16); {backend} runs fp32, fp16 or int8")
        if precision == "int8" and backend != "onnxruntime":
            raise ValueError(f"precision int8 runs on onnxruntime (its Q/DQ graph passes TensorRT's op check, but "
                             f"gixdrt does not build int8 engines yet); {backend} runs fp32 or fp16")
        if backend == "torch" and precision not in ("fp32", "bf16"):
            raise ValueError(f"precision {precision} is for onnxruntime, torch-cuda and tensorrt; the torch backend "
                             "runs fp32 (the reference) or bf16")
        kind, _ = parse_device(device)
        if backend == "torch-cuda" and kind != "cuda":
            raise EngineUnavailableError("torch-cuda runs on a CUDA GPU only (use onnxruntime or torch on the CPU)")
        self.backend = backend
        self.device = device
        self.precision = precision
        self.threads = threads
        self.engine_cache = engine_cache
        self.workspace_gib = float(workspace_gib)
        self.kernels: KernelSet = DeviceKernels(device) if kind == "cuda" else HostKernels("cpu")

    def describe(self) -> str:
        return f"{self.backend} on {self.device}, {self.precision}"

    def fuses(self, artifact: str, source: GraphSource) -> bool:
        """Whether this runtime runs ``artifact`` (a graph that includes a kernel stage, see
        :class:`~gixdrt.engine.plan.Fusion`) when a plan offers it: TensorRT with gixdrt's plugin library."""
        if self.backend != "tensorrt":
            return False
        from .plugins import plugin_status

        why = plugin_status() or source.can_provide(artifact)
        if why:
            log.info("TensorRT: %s is not used (%s); RoIAlign runs as a CUDA kernel between the engines", artifact, why)
        return why is None

    def runner(self, source: GraphSource, graph: str, artifact: str, inputs: Mapping[str, TensorMeta],
               outputs: Sequence[str]) -> Runner:
        """A runner (not yet active) for ``artifact`` of graph ``graph`` with these input shapes."""
        shapes = {k: m.shape for k, m in inputs.items()}
        if self.backend == "onnxruntime":
            from .onnxrt import OnnxRuntimeRunner

            path, dims = source.onnx(artifact, precision=self.precision, shapes=shapes, static=False)
            source_graph: Any = path
            if self.precision == "int8" and graph == "dense" and parse_device(self.device)[0] == "cpu":
                source_graph = _cpu_int8(path)  # uint8 activations: ONNX Runtime's fast int8 convolutions on x86
            # no spinning: kernels run between the graphs and need the cores the idle pool would spin on
            return OnnxRuntimeRunner(source_graph, device=self.device, threads=self.threads, spin=False, dims=dims)
        if self.backend in ("torch", "torch-cuda"):
            from .pyt import TorchRunner

            gpu = self.backend == "torch-cuda"
            spec = {k: (m.dtype, m.shape) for k, m in inputs.items()}
            if self.precision == "bf16":
                # the dense graph BN-folded, channels-last, under CPU autocast in bfloat16 (oneDNN's AMX/AVX512-BF16
                # convolutions); the head (1 of 88 GFLOP) stays fp32
                dense = graph == "dense"
                module = source.torch_module(graph, precision="fp32", fold=dense, channels_last=dense)
                return TorchRunner(module, spec, outputs, device=self.device, precision="bf16" if dense else "fp32")
            module = source.torch_module(graph, precision=self.precision, fold=gpu,
                                         channels_last=gpu and self.precision == "fp16")
            return TorchRunner(module, spec, outputs, device=self.device, precision=self.precision, cuda_graph=gpu)
        if self.backend == "tensorrt":
            return self._tensorrt_runner(source, artifact, shapes)
        raise ValueError(f"unknown backend {self.backend!r}")  # pragma: no cover - checked in __init__

    def _tensorrt_runner(self, source: GraphSource, artifact: str, shapes: Mapping[str, tuple[int, ...]]) -> Runner:
        """The static graph exported (cached) and its engine, built on activation when missing or when the cached
        one does not fit this machine (a first build takes minutes)."""
        from .trt import TensorRTRunner

        onnx_path, _ = source.onnx(artifact, precision=self.precision, shapes=shapes, static=True)
        folder = Path(self.engine_cache) if self.engine_cache is not None else onnx_path.parent
        engine_path = folder / f"{onnx_path.stem}.engine"
        return TensorRTRunner(engine_path, device=self.device, onnx_path=onnx_path, cuda_graph=True,
                              build={"precision": self.precision, "workspace_gib": self.workspace_gib})
