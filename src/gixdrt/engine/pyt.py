"""PyTorch runner: a graph as a ``torch.nn.Module``, eager or captured in a CUDA graph.

The ``torch`` backend runs it eagerly (the reference the exported graphs are compared with); the ``torch-cuda``
backend runs BN-folded copies in fp16 or fp32, channels-last, each input shape captured once into a
``torch.cuda.CUDAGraph`` (warm-up on a side stream first, as PyTorch documents; a failed capture is logged and
that runner runs eagerly).
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .base import Runner, TensorMeta

log = logging.getLogger(__name__)

__all__ = ["WARMUP_RUNS", "TorchRunner", "cpu_bf16_fast"]


def cpu_bf16_fast() -> bool:
    """Whether this CPU computes bfloat16 convolutions natively (AMX-BF16 or AVX512-BF16, from /proc/cpuinfo on
    Linux; False where that cannot be read): only then is bf16 autocast on the CPU faster than fp32."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"amx_bf16", "avx512_bf16"} & flags)
    except OSError:
        pass
    return False

#: eager runs on a side stream before a CUDA graph is captured (PyTorch's documented warm-up)
WARMUP_RUNS = 3


class TorchRunner(Runner):
    """Runs a ``torch.nn.Module`` (or a zero-argument callable returning one) under ``torch.no_grad``.

    inputs: graph input name → (dtype, shape), in the order of ``forward``'s arguments; outputs: names for
    the module's outputs (a tensor or a tuple of tensors), in order. device: where the module and the inputs go
    (NumPy inputs are wrapped without a copy on the CPU). ``infer`` returns torch tensors on ``device``
    (``np.asarray`` views a CPU tensor without copying).

    On a CUDA device: ``precision`` sets the numerics the module runs (and is captured) with: ``"fp32"`` forces
    IEEE fp32 convolutions and matmuls (no TF32), ``"fp16"`` disallows reduced-precision split-K reductions
    (the module itself must already hold its weights in the dtype it computes in); ``cuda_graph`` captures the
    module after a warm-up, once, with static input and output tensors: ``infer`` then copies the feed into the
    static inputs (a no-op when the feed *is* them) and replays; ``cudnn_benchmark`` lets cuDNN time its
    algorithms during the warm-up (faster, but the last bits may vary from one process to the next).
    ``graph_failure`` says why a capture failed (the runner then runs eagerly).

    On the CPU: ``precision="bf16"`` runs the module under CPU autocast in bfloat16 (convolutions and matmuls in
    bf16 with fp32 accumulation, the rest in fp32) and returns float32 outputs: several times faster on CPUs with
    AMX or AVX512-BF16 (:func:`cpu_bf16_fast` says whether this one has them), slower elsewhere.
    """

    name = "torch"

    def __init__(self, module: Any, inputs: Mapping[str, tuple[Any, Sequence[int]]], outputs: Sequence[str], *,
                 device: str = "cpu", precision: str = "fp32", cuda_graph: bool = False, cudnn_benchmark: bool = False):
        super().__init__()
        self._source: Callable[[], Any] = module if not hasattr(module, "forward") else (lambda: module)
        self._input_spec = {k: TensorMeta(np.dtype(d), tuple(int(s) for s in shape)) for k, (d, shape) in inputs.items()}
        self.output_names = tuple(outputs)
        self.device_name = device
        self.precision = precision
        self.cuda_graph = bool(cuda_graph)
        self.cudnn_benchmark = bool(cudnn_benchmark)
        self.graph_failure: str | None = None
        self.module = None
        self._graph = None
        self._static_in: dict[str, Any] = {}
        self._static_out: tuple[Any, ...] = ()

    # --- lifecycle ----------------------------------------------------------------------------------
    def activate_impl(self) -> None:
        import torch

        dev = torch.device(self.device_name)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        self.device = dev
        self.module = self._source().to(dev).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        if self.cuda_graph and dev.type == "cuda":
            self._capture()

    def input_metadata_impl(self) -> Mapping[str, TensorMeta]:
        return self._input_spec

    def deactivate_impl(self) -> None:
        self.module = None
        self._graph = None
        self._static_in = {}
        self._static_out = ()

    # --- running ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _math(self):
        """The numerics the module runs (and is captured) with on a GPU; the previous settings are restored after.
        fp32 goes through the fp32_precision API where PyTorch has it (mixing it with the legacy allow_tf32 flags
        is an error in recent PyTorch)."""
        import torch

        if self.device.type != "cuda":
            if self.precision == "bf16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    yield
            else:
                yield
            return
        saved: list[tuple[Any, str, Any]] = []

        def put(obj: Any, name: str, value: Any) -> None:
            saved.append((obj, name, getattr(obj, name)))
            setattr(obj, name, value)

        try:
            backends = torch.backends
            if self.precision == "fp32":
                conv = getattr(backends.cudnn, "conv", None)
                if conv is not None and hasattr(conv, "fp32_precision"):
                    put(conv, "fp32_precision", "ieee")
                    put(backends.cuda.matmul, "fp32_precision", "ieee")
                else:  # pragma: no cover - PyTorch < 2.9
                    put(backends.cudnn, "allow_tf32", False)
                    put(backends.cuda.matmul, "allow_tf32", False)
            else:
                put(backends.cuda.matmul, "allow_fp16_reduced_precision_reduction", False)
            if self.cudnn_benchmark:
                put(backends.cudnn, "benchmark", True)
            yield
        finally:
            for obj, name, value in reversed(saved):
                setattr(obj, name, value)

    def _forward(self, args):
        out = self.module(*args)
        out = (out,) if not isinstance(out, (tuple, list)) else tuple(out)
        if self.precision == "bf16" and self.device.type == "cpu":
            out = tuple(o.float() for o in out)
        if len(out) != len(self.output_names):
            raise RuntimeError(f"{self.name}: the module returned {len(out)} outputs, {len(self.output_names)} names given")
        return out

    def _capture(self) -> None:
        """Warm up on a side stream, then capture one CUDA graph on static tensors; on failure run eagerly."""
        import torch

        dev = self.device
        self._static_in = {k: torch.zeros(m.shape, dtype=getattr(torch, m.dtype.name), device=dev)
                           for k, m in self._input_spec.items()}
        args = list(self._static_in.values())
        with torch.no_grad(), torch.cuda.device(dev), self._math():
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_RUNS):
                    self._forward(args)
            torch.cuda.current_stream(dev).wait_stream(side)
            try:
                graph = torch.cuda.CUDAGraph()
                # thread_local: CUDA calls of other threads (a loader) do not invalidate this capture
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    outputs = self._forward(args)
            except Exception as exc:  # noqa: BLE001 - any capture failure falls back to eager
                self.graph_failure = f"CUDA graph capture failed ({type(exc).__name__}: {exc}); the graph runs eagerly"
                log.warning("%s", self.graph_failure)
                with contextlib.suppress(Exception):
                    torch.cuda.synchronize(dev)
                return
        self._graph, self._static_out = graph, outputs

    @property
    def graph_captured(self) -> bool:
        return self._graph is not None

    def infer_impl(self, feed: Mapping[str, Any]) -> dict[str, Any]:
        import torch

        args = []
        for name in self._input_spec:
            x = feed[name]
            x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
            args.append(x.to(self.device))
        if self._graph is not None:
            for (name, static), x in zip(self._static_in.items(), args):
                if x.data_ptr() != static.data_ptr():
                    static.copy_(x)
            self._graph.replay()
            return dict(zip(self.output_names, self._static_out))
        with torch.no_grad(), self._math():
            out = self._forward(args)
        return dict(zip(self.output_names, out))
