"""The :class:`Detector` facade: contrast-processed polar images in, peak tables out, on a chosen backend."""
from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..peaks import PeakTable
from .base import EngineUnavailableError

log = logging.getLogger(__name__)

__all__ = ["BACKENDS",  # noqa: F822 - computed on first access
           "PREFERENCE", "Detector", "backend_status"]

#: every backend name, in the order ``auto`` prefers them (each on a GPU before the CPU).
#: torch-cuda comes after TensorRT (it is the yardstick TensorRT engines have to beat) and before ONNX Runtime's
#: CUDA provider: it runs both graphs as captured CUDA graphs with gixdrt's CUDA kernels between them and no
#: host round trip, where ONNX Runtime on a GPU runs the PyTorch reference ops between its graphs image by
#: image. It needs a GPU, so on a CPU-only machine ``auto`` still ends at ONNX Runtime on the CPU.
PREFERENCE = ("tensorrt", "torch-cuda", "onnxruntime", "torch")
_CHOICES = (("tensorrt", "cuda"), ("torch-cuda", "cuda"), ("onnxruntime", "cuda"), ("onnxruntime", "cpu"),
            ("torch", "cpu"))
#: backends that run on a GPU only: a named one without a device goes to CUDA
_GPU_ONLY = ("tensorrt", "torch-cuda")


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@functools.lru_cache(maxsize=1)
def backend_status() -> dict[tuple[str, str], str | None]:
    """(backend, device kind) → None when the :class:`Detector` can run it here, else why not.

    Probes once per process: the GPU through the CUDA driver (never TensorRT), ONNX Runtime's providers.
    """
    from .torch_cuda import torch_cuda_status
    from .trt import tensorrt_status

    torch_ok = _has("torch")
    no_torch = "PyTorch is not installed (pip install gixdrt[torch])"
    status: dict[tuple[str, str], str | None] = {}
    cuda_torch = None
    if torch_ok:
        import torch

        cuda_torch = None if torch.cuda.is_available() else "PyTorch sees no CUDA GPU"
    status["torch", "cpu"] = None if torch_ok else no_torch
    status["torch", "cuda"] = no_torch if not torch_ok else cuda_torch
    trt = tensorrt_status()
    if trt is None and torch_ok:  # the engines run between gixdrt's CUDA kernels, as torch-cuda does
        why = torch_cuda_status()
        trt = f"TensorRT is installed, but the kernels around the engines cannot run: {why}" if why else None
    status["tensorrt", "cuda"] = trt if torch_ok else no_torch
    status["tensorrt", "cpu"] = "TensorRT runs on a CUDA GPU only"
    status["torch-cuda", "cuda"] = torch_cuda_status() if torch_ok else no_torch
    status["torch-cuda", "cpu"] = "torch-cuda runs on a CUDA GPU only (use onnxruntime or torch on the CPU)"
    if not (_has("onnxruntime") and _has("onnx")):
        why = "ONNX Runtime and onnx are not installed (pip install gixdrt[onnx])"
        status["onnxruntime", "cpu"] = status["onnxruntime", "cuda"] = why
    elif not torch_ok:
        status["onnxruntime", "cpu"] = status["onnxruntime", "cuda"] = f"{no_torch}: it exports the graphs"
    else:
        from .onnxrt import onnxruntime_devices

        devices = onnxruntime_devices()
        status["onnxruntime", "cpu"] = devices["cpu"]
        status["onnxruntime", "cuda"] = devices["cuda"] or cuda_torch
    return status


def _available() -> tuple[str, ...]:
    status = backend_status()
    return tuple(b for b in PREFERENCE if any(status[b, d] is None for d in ("cuda", "cpu")))


def __getattr__(name: str) -> Any:
    if name == "BACKENDS":  # computed on first use: probing imports ONNX Runtime and asks the CUDA driver
        return _available()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_logged: set[tuple[str, str]] = set()


def _choose(device_kind: str | None) -> tuple[str, str]:
    """``auto``: the first available (backend, device kind) of :data:`_CHOICES` on ``device_kind`` (None: any)."""
    status = backend_status()
    candidates = [(b, d) for b, d in _CHOICES if device_kind in (None, d)]
    if device_kind == "cuda":
        candidates.append(("torch", "cuda"))
    for choice in candidates:
        if status[choice] is None:
            if choice not in _logged:
                skipped = "; ".join(f"{b} on {d}: {status[b, d]}" for b, d in candidates[: candidates.index(choice)])
                log.info("backend auto → %s on %s%s", *choice, f" (not {skipped})" if skipped else "")
                _logged.add(choice)
            return choice
    reasons = "; ".join(f"{b} on {d}: {status[b, d]}" for b, d in candidates)
    raise EngineUnavailableError(f"no detector backend can run here ({reasons})")


class Detector:
    """A detection model on one backend and device.

    model: a :class:`gixdrt.model.GixdDetector`, or a name/path for :func:`gixdrt.model.load`
        (``"published"``, ``"default"``, a checkpoint path).
    backend: ``"auto"`` (the first available of TensorRT, torch-cuda, ONNX Runtime on a GPU, ONNX Runtime on the
        CPU, PyTorch; logged) or one of ``"tensorrt"``, ``"torch-cuda"``, ``"onnxruntime"``, ``"torch"``; a named
        backend that cannot run here raises :class:`gixdrt.engine.EngineUnavailableError`. :data:`BACKENDS` lists
        the available ones. ``torch-cuda``: :class:`gixdrt.engine.torch_cuda.TorchCudaStages` (PyTorch CUDA graphs
        with gixdrt's CUDA kernels between them; a :class:`gixdrt.pipeline.Pipeline` keeps raw frames on the GPU).
    device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; None lets ``auto`` choose (the CPU for a named backend
        other than TensorRT and torch-cuda).
    precision: ``"fp32"`` or ``"fp16"`` (ONNX Runtime graphs and torch-cuda; box arithmetic stays fp32).
    threads: ONNX Runtime's CPU threads (None: one per core). onnx_cache: where exported graphs are kept
        (True: ``gixdrt.io.cache_dir() / "onnx"``; a directory; False: a temporary one).
    Thresholds (``score_threshold`` default 0.6, ``nms_iou`` 0.1, ``max_detections`` 250) override the
    model card's when given. ``last_timings`` holds the seconds per stage of the last CPU call.
    """

    def __init__(
        self,
        model: Any = "default",
        *,
        backend: str = "auto",
        device: str | None = None,
        precision: str = "fp32",
        threads: int | None = None,
        onnx_cache: Any = True,
        score_threshold: float | None = None,
        nms_iou: float | None = None,
        max_detections: int | None = None,
    ):
        if backend != "auto" and backend not in PREFERENCE:
            raise ValueError(f"unknown backend {backend!r}; expected auto or one of {', '.join(PREFERENCE)}")
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"unknown precision {precision!r}; expected fp32 or fp16")
        import torch

        try:
            dev = torch.device(device) if device is not None else None
        except RuntimeError as exc:
            raise ValueError(f"invalid device {device!r}: {exc}") from None
        if dev is not None and dev.type not in ("cpu", "cuda"):
            raise ValueError(f"invalid device {device!r}: expected cpu or cuda[:N]")
        if dev is not None and dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for but PyTorch sees no CUDA GPU")
        if backend == "auto":
            backend, kind = _choose(None if dev is None else dev.type)
        else:
            kind = dev.type if dev is not None else ("cuda" if backend in _GPU_ONLY else "cpu")
            why = backend_status()[backend, kind]
            if why:
                raise EngineUnavailableError(f"backend {backend!r} on {kind} is not available here: {why}")
        if precision != "fp32" and backend == "torch":
            raise ValueError("precision fp16 is for the exported graphs (onnxruntime) and torch-cuda; torch runs fp32")
        self.backend = backend
        self.device = dev if dev is not None else torch.device(kind)
        self.precision = precision
        self.last_timings: dict[str, float] = {}

        from .. import model as model_pkg

        self.model_spec = model if isinstance(model, str) else getattr(model, "card", None) or "in-memory model"
        net = model_pkg.load(model) if not isinstance(model, torch.nn.Module) else model
        self.model = net.to(self.device).eval()
        if score_threshold is not None:
            self.model.score_threshold = float(score_threshold)
        if nms_iou is not None:
            self.model.nms_iou = float(nms_iou)
        if max_detections is not None:
            self.model.max_detections = int(max_detections)
        self._stages = None
        if backend == "onnxruntime":
            from .staged import OrtStages

            self._stages = OrtStages(self.model, device=str(self.device), precision=precision, threads=threads,
                                     cache=onnx_cache)
        elif backend == "torch-cuda":
            from .torch_cuda import TorchCudaStages

            self._stages = TorchCudaStages(self.model, device=str(self.device), precision=precision)
        elif backend == "tensorrt":
            from .trt_stages import TrtStages

            self._stages = TrtStages(self.model, device=str(self.device), precision=precision,
                                     engine_cache=onnx_cache if onnx_cache is not False else True)

    @property
    def card(self) -> dict[str, Any] | None:
        return getattr(self.model, "card", None)

    @property
    def thresholds(self) -> dict[str, float]:
        m = self.model
        return {"score_threshold": m.score_threshold, "nms_iou": m.nms_iou, "max_detections": m.max_detections}

    def describe(self) -> str:
        """One line: backend, device, precision."""
        return f"{self.backend} on {self.device}, {self.precision}"

    def close(self) -> None:
        """Release the runtime sessions (a later call opens them again)."""
        if self._stages is not None:
            self._stages.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def boxes(self, images: Any) -> list[tuple[np.ndarray, np.ndarray]]:
        """images: float32[N, H, W] or [H, W] processed polar images in [0, 1] (NumPy or torch)
        → per image (boxes float32[K, 4] (x0, y0, x1, y1) polar px, scores float32[K]), by decreasing score."""
        import torch

        x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images, np.float32))
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3:
            raise ValueError(f"expected images [N, H, W] or [H, W], got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            return []
        x = x[:, None].to(self.device, torch.float32)
        if self._stages is not None:
            dets = self._stages(x)
            self.last_timings = dict(self._stages.timings)
        else:
            with torch.inference_mode():
                trace = self.model.trace(x, timed=self.device.type == "cpu")
            dets, self.last_timings = trace.detections, dict(trace.timings)
        return [(d["boxes"].cpu().numpy(), d["scores"].cpu().numpy()) for d in dets]

    def detect(
        self,
        images: Any,
        *,
        polar: Sequence[np.ndarray] | np.ndarray | None = None,
        q_max: float | None = None,
        first_frame: int = 0,
        sources: Sequence[str] | None = None,
    ) -> list[PeakTable]:
        """Detect peaks in a batch of processed polar images → one :class:`PeakTable` per image.

        polar: the uncorrected polar images (for the ``intensity`` column), q_max: |Q| of the last column
        in Å⁻¹ (for the physical columns); frames are numbered from ``first_frame``.
        """
        results = self.boxes(images)
        shape = tuple(np.shape(images)[-2:])
        tables = []
        for i, (b, s) in enumerate(results):
            tables.append(
                PeakTable.from_boxes(
                    b,
                    s,
                    frame=first_frame + i,
                    source=sources[i] if sources is not None else "",
                    image_shape=shape,
                    q_max=q_max,
                    polar=None if polar is None else polar[i],
                )
            )
        return tables
