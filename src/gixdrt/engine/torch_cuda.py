"""The ``torch-cuda`` backend: the detector on one CUDA GPU with nothing image-sized crossing to the host.

Stage by stage, on the current PyTorch stream of the device::

    raw frame (uploaded once) ─ polar remap ─ contrast ─▶ dense graph ─▶ decode_topk ─ nms_fixed ─ padded
    proposals ─▶ RoIAlign ─▶ head graph ─▶ decode_final ─ nms_fixed ─▶ count + boxes + scores (+ intensities)

- The **dense** stage (normalise, ResNet body, FPN, RPN head, then the per-level flattening of
  :func:`gixdrt.model.detector.flatten_rpn` into logits float32[N, A] and deltas float32[N, A, 4]) and the
  **head** stage (fc6, fc7, predictor) run in PyTorch on a copy of the model with BatchNorm folded
  (:func:`gixdrt.export.fold.fold_batchnorm`), in fp16 (channels-last) or fp32. Inputs are cast inside and
  both stages return fp32, so all box arithmetic stays fp32. Each stage has static input/output buffers per
  (H, W, N) and is captured once into a ``torch.cuda.CUDAGraph`` (warm-up on a side stream first, as PyTorch
  documents); a failed capture is logged and that stage runs eagerly.
- Between the graphs run gixdrt's own CUDA code on those buffers, with no copy: the Numba CUDA kernels of
  :mod:`gixdrt.kernels.cuda.boxes` (``decode_topk``, ``nms_fixed`` grouped by level, ``decode_final``, the final
  ``nms_fixed``) on the PyTorch tensors through ``__cuda_array_interface__``, and the CUDA RoIAlign of
  :mod:`gixdrt._ext`, which writes straight into the head graph's static input buffer (rows i·R … i·R + R − 1
  for image i, R = ``rpn_post_nms_top_n``; padding rows hold zero boxes and are never read back).
- Only the final per-image results come back to the host: the kept count, boxes and scores (and, for raw
  frames, the intensities summed on the device and the constant-frame flags), in one pinned copy.

:meth:`TorchCudaStages.from_raw` also keeps preprocessing on the device: raw frames are uploaded once, the
polar remap and the contrast chain run as the Numba CUDA kernels of :class:`gixdrt.preprocess.Preprocessor`
(backend ``"cuda"``), and the contrast image is written straight into the dense graph's static input.
:class:`gixdrt.pipeline.Pipeline` takes this path for raw frames when its detector's backend is ``torch-cuda``.

Precision: ``fp32`` forces IEEE fp32 convolutions and matmuls (no TF32) while the stages run, so results match
the CPU within ~1e-6 relative; ``fp16`` runs the graphs in half precision (fp32 accumulation, no reduced-
precision split-K reductions). Kernels chosen at capture time are baked into the graphs.

``device="cpu"`` is not a backend: it runs the same stage sequence with the host kernels (Numba CPU, C++
RoIAlign) in fp32 without graphs, so that the sequencing (flattening order, padding, RoI layout, gathers,
intensities) is tested on machines without a GPU.

:func:`benchmark_raw_frames` times uploaded raw uint16 frames → peaks and the dense stage alone.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import EngineUnavailableError

log = logging.getLogger(__name__)

__all__ = ["DENSE_GFLOP_512X1024", "PRECISIONS", "TorchCudaStages", "benchmark_raw_frames", "torch_cuda_status"]

PRECISIONS = ("fp32", "fp16")
#: floating-point operations of the dense stage for one 512×1024 frame (GFLOP; scales with H·W)
DENSE_GFLOP_512X1024 = 87.0
#: eager runs on a side stream before a CUDA graph is captured (PyTorch's documented warm-up)
WARMUP_RUNS = 3


# -------------------------------------------------------------------------------------------------
# Availability
# -------------------------------------------------------------------------------------------------
def torch_cuda_status() -> str | None:
    """None when the torch-cuda backend can run here, else every reason it cannot ("; "-joined).

    Needs: PyTorch with a CUDA device, :mod:`gixdrt._ext` built with its CUDA RoIAlign, and Numba CUDA on a real
    GPU (the simulator, NUMBA_ENABLE_CUDASIM=1, runs kernels on host arrays and cannot take PyTorch CUDA tensors).
    Probes each time (cheap after the first call); :func:`gixdrt.engine.backend_status` caches it.
    """
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed (pip install gixdrt[torch])"
    reasons = []
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        reasons.append(f"PyTorch has no CUDA device (torch {torch.__version__}, {build})")
    from ..kernels import roi_align as ra

    if ra._ext is None:
        reasons.append(f"gixdrt._ext is not built, so there is no CUDA RoIAlign ({ra._EXT_IMPORT_ERROR})")
    elif not hasattr(ra._ext, "roi_align_cuda"):
        reasons.append("gixdrt._ext was built without CUDA (no CUDA compiler at build time, or "
                       "GIXDRT_DISABLE_CUDA=ON), so there is no CUDA RoIAlign")
    from ..kernels.registry import cudasim

    if cudasim():
        reasons.append("numba.cuda unavailable: NUMBA_ENABLE_CUDASIM=1 selects Numba's CPU simulator, which "
                       "cannot run kernels on PyTorch CUDA tensors")
    else:
        try:
            from numba import cuda as ncuda

            ok, detail = bool(ncuda.is_available()), "Numba finds no CUDA GPU or driver"
        except Exception as exc:  # noqa: BLE001 - any import/driver failure is a reason, never a crash
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        if not ok:
            reasons.append(f"numba.cuda unavailable: {detail} (pip install gixdrt[gpu] installs numba-cuda)")
    return "; ".join(reasons) or None


# -------------------------------------------------------------------------------------------------
# The two graph stages as modules (defined on first use: torch is imported lazily)
# -------------------------------------------------------------------------------------------------
_MODULES: tuple[type, type] | None = None


def _stage_modules() -> tuple[type, type]:
    """(DenseStage, HeadStage) module classes."""
    global _MODULES
    if _MODULES is None:
        import torch
        from torch import nn

        class DenseStage(nn.Module):
            """images float32[N, 1, H, W] → (p2 float32[N, C, H/8, W/4] NCHW-contiguous, logits float32[N, A],
            deltas float32[N, A, 4]) in the order of :func:`gixdrt.model.detector.flatten_rpn`, level by level.

            The normalisation runs in fp32, the body and RPN head in ``dtype`` (channels-last if asked).
            ``level_shapes`` holds the (h, w) of each level after a forward (for the anchors).
            """

            def __init__(self, model, dtype, channels_last: bool):
                super().__init__()
                self.transform_img = model.transform_img
                self.backbone = model.backbone.to(dtype)
                self.rpn_head = model.rpn_head.to(dtype)
                if channels_last:
                    self.backbone.to(memory_format=torch.channels_last)
                    self.rpn_head.to(memory_format=torch.channels_last)
                self.dtype = dtype
                self.channels_last = channels_last
                self.level_shapes: list[tuple[int, int]] | None = None
                self.eval()

            def forward(self, images):
                x = self.transform_img(images)
                if x.dtype != self.dtype:
                    x = x.to(self.dtype)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                features = self.backbone(x)
                logits, deltas = self.rpn_head(features)
                self.level_shapes = [(int(lg.shape[-2]), int(lg.shape[-1])) for lg in logits]
                p2 = features[0].to(torch.float32, memory_format=torch.contiguous_format)
                flat_logits, flat_deltas = [], []
                for lg, dl in zip(logits, deltas):
                    n, a, h, w = lg.shape
                    # reshape, not view: a channels-last tensor has no [N, A, 4, h, w] view
                    flat_logits.append(lg.permute(0, 2, 3, 1).reshape(n, h * w * a))
                    flat_deltas.append(dl.reshape(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, h * w * a, 4))
                out_logits = torch.cat(flat_logits, 1).to(torch.float32).contiguous()
                out_deltas = torch.cat(flat_deltas, 1).to(torch.float32).contiguous()
                return p2, out_logits, out_deltas

        class HeadStage(nn.Module):
            """roi_features float32[K, C, P, P] → (logits float32[K], deltas float32[K, 4]); runs in ``dtype``."""

            def __init__(self, model, dtype):
                super().__init__()
                self.box_head = model.box_head.to(dtype)
                self.box_predictor = model.box_predictor.to(dtype)
                self.dtype = dtype
                self.eval()

            def forward(self, roi_features):
                x = roi_features if roi_features.dtype == self.dtype else roi_features.to(self.dtype)
                logits, deltas = self.box_predictor(self.box_head(x))
                return logits.to(torch.float32).contiguous(), deltas.to(torch.float32).contiguous()

        _MODULES = (DenseStage, HeadStage)
    return _MODULES


# -------------------------------------------------------------------------------------------------
# The between-graph kernels on torch tensors: device (Numba CUDA + _ext CUDA) or host (check path)
# -------------------------------------------------------------------------------------------------
class _StreamlessView:
    """A Numba device array re-exported as ``__cuda_array_interface__`` version 2 (no ``stream`` entry), so that
    importing it never synchronises: producer and consumer share one stream here. Keeps the array alive."""

    def __init__(self, array):
        cai = dict(array.__cuda_array_interface__)
        cai.pop("stream", None)
        cai["version"] = 2
        self.__cuda_array_interface__ = cai
        self.owner = array


class _DeviceKernels:
    """gixdrt's CUDA kernels on PyTorch CUDA tensors, launched on the current PyTorch stream of ``device``.

    Inputs are passed as they are (``__cuda_array_interface__``, no copy); the Numba outputs are wrapped as
    PyTorch tensors without a copy (``torch.as_tensor`` keeps the Numba array alive through the view). Numba
    follows the CUDA context PyTorch made current, so callers run inside ``torch.cuda.device(device)``.
    """

    on_device = True

    def __init__(self, device):
        self.device = device

    def stream(self):
        import torch

        return torch.cuda.current_stream(self.device)

    def array(self, t):
        return t

    def tensor(self, arr):
        import torch

        return torch.as_tensor(_StreamlessView(arr), device=self.device)

    def decode_topk(self, logits, deltas, anchors, starts, **kw):
        from .. import kernels as K

        out = K.decode_topk(logits, deltas, anchors, starts, backend="cuda", stream=self.stream(), **kw)
        return tuple(self.tensor(o) for o in out)

    def nms_fixed(self, boxes, scores, valid, iou, max_out, groups=None):
        from .. import kernels as K

        out = K.nms_fixed(boxes, scores, valid, iou, max_out, groups, backend="cuda", stream=self.stream())
        return tuple(self.tensor(o) for o in out)

    def decode_final(self, logits, deltas, proposals, valid, **kw):
        from .. import kernels as K

        out = K.decode_final(logits, deltas, proposals, valid, backend="cuda", stream=self.stream(), **kw)
        return tuple(self.tensor(o) for o in out)

    def roi_align(self, features, rois, out, output_size, scale, sampling_ratio, aligned):
        from ..kernels.roi_align import roi_align

        roi_align(features, rois, output_size, scale, sampling_ratio, aligned, out=out, stream=self.stream())


class _HostKernels(_DeviceKernels):
    """The same calls with the host kernels on NumPy views of CPU tensors (``device="cpu"``: the check path)."""

    on_device = False

    def __init__(self, backend: str | None = None):
        self.backend = backend

    def stream(self):
        return None

    def array(self, t):
        return t.numpy()

    def tensor(self, arr):
        import torch

        return torch.from_numpy(np.ascontiguousarray(arr))

    def decode_topk(self, logits, deltas, anchors, starts, **kw):
        from .. import kernels as K

        out = K.decode_topk(logits.numpy(), deltas.numpy(), anchors.numpy(), starts, backend=self.backend, **kw)
        return tuple(self.tensor(o) for o in out)

    def nms_fixed(self, boxes, scores, valid, iou, max_out, groups=None):
        from .. import kernels as K

        g = None if groups is None else groups.numpy()
        out = K.nms_fixed(boxes.numpy(), scores.numpy(), valid.numpy(), iou, max_out, g, backend=self.backend)
        return tuple(self.tensor(o) for o in out)

    def decode_final(self, logits, deltas, proposals, valid, **kw):
        from .. import kernels as K

        out = K.decode_final(logits.numpy(), deltas.numpy(), proposals.numpy(), valid.numpy(), backend=self.backend, **kw)
        return tuple(self.tensor(o) for o in out)

    def roi_align(self, features, rois, out, output_size, scale, sampling_ratio, aligned):
        from ..kernels.roi_align import roi_align

        roi_align(features.numpy(), rois.numpy(), output_size, scale, sampling_ratio, aligned, out=out.numpy())


# -------------------------------------------------------------------------------------------------
# Small device-side helpers (plain PyTorch ops: no host synchronisation)
# -------------------------------------------------------------------------------------------------
def _take(values, keep):
    """values [N, M, ...] at keep int32[N, K] (−1 = padding) → [N, K, ...] with zeros at the padding."""
    import torch

    n, k = int(keep.shape[0]), int(keep.shape[1])
    tail = tuple(values.shape[2:])
    if k == 0 or values.shape[1] == 0:
        return values.new_zeros((n, k, *tail))
    ones = (1,) * len(tail)
    idx = keep.to(torch.int64).clamp_min(0).reshape(n, k, *ones).expand(n, k, *tail)
    return torch.gather(values, 1, idx).masked_fill((keep < 0).reshape(n, k, *ones), 0)


def _box_sums(images, boxes):
    """float64[N, K]: per image, the sum of images[i] over the pixels whose centres lie in boxes[i, k], exactly as
    :func:`gixdrt.peaks.box_sums` (summed-area table in float64, non-finite pixels count 0)."""
    import torch

    n, h, w = (int(s) for s in images.shape)
    k = int(boxes.shape[1])
    if k == 0:
        return images.new_zeros((n, 0), dtype=torch.float64)
    sat = images.new_zeros((n, h + 1, w + 1), dtype=torch.float64)
    clean = torch.nan_to_num(images.to(torch.float64), nan=0.0, posinf=0.0, neginf=0.0)
    sat[:, 1:, 1:] = clean.cumsum(1).cumsum(2)
    b = boxes.to(torch.float64)
    c0 = torch.ceil(b[..., 0]).clamp(0, w).to(torch.int64)
    c1 = (torch.floor(b[..., 2]) + 1).clamp(0, w).to(torch.int64)
    r0 = torch.ceil(b[..., 1]).clamp(0, h).to(torch.int64)
    r1 = (torch.floor(b[..., 3]) + 1).clamp(0, h).to(torch.int64)
    c1 = torch.maximum(c1, c0)
    r1 = torch.maximum(r1, r0)
    flat = sat.reshape(n, -1)

    def at(r, c):
        return flat.gather(1, r * (w + 1) + c)

    return at(r1, c1) - at(r0, c1) - at(r1, c0) + at(r0, c0)


_INT_VIEW = {"uint16": "int16", "uint32": "int32", "uint64": "int64"}


def _frame_constant(frame):
    """0-dim bool tensor: every frame of ``frame`` ([H, W] or [G, H, W]) is constant on its own (as
    :func:`gixdrt.pipeline._constant_frames`; NaN makes a frame non-constant)."""
    import torch

    rows = frame.reshape(-1, int(frame.shape[-2]) * int(frame.shape[-1]))
    name = str(rows.dtype).removeprefix("torch.")
    if name in _INT_VIEW:  # min/max need not exist for unsigned types; equality of bit patterns is the same
        rows = rows.view(getattr(torch, _INT_VIEW[name]))
    if rows.shape[1] == 0:
        return torch.zeros((), dtype=torch.bool, device=frame.device)
    return (rows.amin(1) == rows.amax(1)).all()


def _constant_inside(polar, inside):
    """0-dim bool tensor: the polar image is constant over the pixels that sample the detector (as
    :func:`gixdrt.pipeline._constant_inside`)."""
    import torch

    # Python scalars, not tensors made from them: building a CUDA tensor from a host value would synchronise
    lo = torch.where(inside, polar, float("inf")).amin()
    hi = torch.where(inside, polar, float("-inf")).amax()
    return inside.any() & (lo == hi)


def _minmax_into(polar, out) -> None:
    """out = min–max normalised polar (``contrast.disable``), as :func:`gixdrt.preprocess._minmax`."""
    import torch

    finite = torch.isfinite(polar)
    lo = torch.where(finite, polar, float("inf")).amin()
    hi = torch.where(finite, polar, float("-inf")).amax()
    span = hi - lo
    res = (torch.where(finite, polar, lo) - lo) / torch.where(span > 0, span, 1.0)
    out.copy_(torch.where(hi > lo, res, 0.0))


# -------------------------------------------------------------------------------------------------
# Plans: static buffers (and graphs) per shape
# -------------------------------------------------------------------------------------------------
@dataclass
class _DensePlan:
    height: int
    width: int
    batch: int
    images: Any  # float32[N, 1, H, W]: the dense stage's static input
    graph: Any  # torch.cuda.CUDAGraph or None (eager)
    outputs: Any  # the graph's static outputs (p2, logits, deltas), None when eager
    anchors: Any  # float32[A, 4] on the device
    starts: np.ndarray  # int64[L + 1] level starts (host)


@dataclass
class _HeadPlan:
    batch: int
    rois: Any  # float32[N·R, 5] (batch index, x0, y0, x1, y1): column 0 filled once
    features: Any  # float32[N·R, C, P, P]: the head stage's static input, RoIAlign's output
    graph: Any
    outputs: Any  # (logits float32[N·R], deltas float32[N·R, 4]) when graphed
    groups: Any  # int32[N, R] zeros for the final NMS (device), None on the host


class TorchCudaStages:
    """``model`` (a :class:`gixdrt.model.GixdDetector`) as PyTorch CUDA graphs with gixdrt's CUDA kernels
    between them (see the module docstring).

    device: ``"cuda"``/``"cuda:N"`` (``"cpu"``: the fp32 host check path, no graphs). precision: ``"fp16"`` or
    ``"fp32"``. cuda_graphs: capture the dense and head stages (False: eager, same kernels). channels_last:
    None → on for fp16 on the GPU. cudnn_benchmark: let cuDNN time its algorithms during the warm-up (faster,
    but the chosen kernels, hence the last bits, may vary from one process to the next). timed: default for
    :meth:`__call__`'s ``timed``. kernel_backend: the host kernels' registry backend (``device="cpu"`` only).
    Thresholds (``score_threshold``, ``nms_iou``, ``max_detections``) are read from ``model`` at each call;
    ``model`` itself is not modified (the stages run on a folded copy).
    Raises :class:`gixdrt.engine.EngineUnavailableError` (with :func:`torch_cuda_status`'s reasons) when a CUDA
    device is asked for and the backend cannot run.
    """

    def __init__(self, model, *, device: str = "cuda", precision: str = "fp16", cuda_graphs: bool = True,
                 channels_last: bool | None = None, cudnn_benchmark: bool = False, timed: bool = False,
                 kernel_backend: str | None = None):
        import torch

        from ..export.fold import fold_batchnorm

        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"invalid device {device!r}: {exc}") from None
        if dev.type == "cuda":
            why = torch_cuda_status()
            if why:
                raise EngineUnavailableError(f"the torch-cuda backend cannot run here: {why}")
            if dev.index is None:
                dev = torch.device("cuda", torch.cuda.current_device())
        elif dev.type == "cpu":
            if precision != "fp32":
                raise ValueError("device='cpu' is the fp32 host check of the stage sequence; fp16 needs a CUDA device")
        else:
            raise ValueError(f"invalid device {device!r}: expected cuda[:N] (or cpu for the host check path)")
        self.model = model
        self.config = model.config
        self.device = dev
        self.on_gpu = dev.type == "cuda"
        self.precision = precision
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.cuda_graphs = bool(cuda_graphs) and self.on_gpu
        self.channels_last = (self.on_gpu and precision == "fp16") if channels_last is None else bool(channels_last)
        self.cudnn_benchmark = bool(cudnn_benchmark)
        self.timed = bool(timed)
        dense_cls, head_cls = _stage_modules()
        with torch.no_grad():
            folded = fold_batchnorm(model)
            self.dense_net = dense_cls(folded, self.dtype, self.channels_last).to(dev)
            self.head_net = head_cls(folded, self.dtype).to(dev)
            for p in (*self.dense_net.parameters(), *self.head_net.parameters()):
                p.requires_grad_(False)
        self.roi_scale = tuple(float(v) for v in model.roi_align.scales[0])  # (s_y, s_x) on P2
        self.kernels = _DeviceKernels(dev) if self.on_gpu else _HostKernels(kernel_backend)
        self._dense: dict[tuple[int, int, int], _DensePlan] = {}
        self._head: dict[int, _HeadPlan] = {}
        self._inside: dict[int, tuple[Any, Any]] = {}
        self.timings: dict[str, float] = {}
        #: why a graph capture failed (each also logged as a warning); the stage then runs eagerly
        self.graph_failures: list[str] = []

    def describe(self) -> str:
        graphs = "CUDA graphs" if self.cuda_graphs else "eager"
        return f"torch-cuda on {self.device}, {self.precision}, {graphs}"

    def close(self) -> None:
        """Drop the static buffers and graphs (rebuilt on the next call)."""
        self._dense.clear()
        self._head.clear()
        self._inside.clear()

    # --- settings and plans ---------------------------------------------------------------------
    def _device_scope(self):
        import torch

        return torch.cuda.device(self.device) if self.on_gpu else contextlib.nullcontext()

    @contextlib.contextmanager
    def _math(self):
        """The numerics the stages run (and are captured) with; the previous settings are restored after.

        fp32: IEEE fp32 convolutions and matmuls (no TF32), through the fp32_precision API where PyTorch has it
        (mixing it with the legacy allow_tf32 flags is an error in recent PyTorch). fp16: no reduced-precision
        split-K reductions. cudnn_benchmark: cuDNN times its algorithms.
        """
        import torch

        if not self.on_gpu:
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

    def _prepare(self, net, static_input, name: str, *, shapes: bool):
        """Warm ``net`` up on ``static_input`` and capture it → (graph, static outputs), or (None, None) to run it
        eagerly (no graphs asked for, the CPU, or a failed capture: logged). ``shapes``: one eager run even
        without graphs (the dense stage records its level shapes)."""
        import torch

        with torch.no_grad(), self._math():
            if not self.on_gpu:
                if shapes:
                    net(static_input)
                return None, None
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_RUNS if self.cuda_graphs else int(shapes)):
                    net(static_input)
            torch.cuda.current_stream(self.device).wait_stream(side)
            if not self.cuda_graphs:
                return None, None
            try:
                graph = torch.cuda.CUDAGraph()
                # thread_local: CUDA calls of other threads (a loader) do not invalidate this capture
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    outputs = net(static_input)
            except Exception as exc:  # noqa: BLE001 - any capture failure falls back to eager
                msg = f"CUDA graph capture of the {name} stage failed ({type(exc).__name__}: {exc}); it runs eagerly"
                log.warning(msg)
                self.graph_failures.append(msg)
                with contextlib.suppress(Exception):
                    torch.cuda.synchronize(self.device)
                return None, None
        return graph, outputs

    def dense_plan(self, height: int, width: int, batch: int) -> _DensePlan:
        """The dense stage's static input float32[N, 1, H, W], graph and anchors for this shape (built once)."""
        import torch

        key = (int(height), int(width), int(batch))
        plan = self._dense.get(key)
        if plan is None:
            with self._device_scope():
                images = torch.zeros((batch, self.config.in_channels, height, width), dtype=torch.float32,
                                     device=self.device)
                graph, outputs = self._prepare(self.dense_net, images, f"dense {height}×{width}×{batch}", shapes=True)
                shapes = list(self.dense_net.level_shapes)
                per_level = self.model.anchors((height, width), shapes, self.device)
                anchors = torch.cat(per_level).to(torch.float32).contiguous()
                starts = np.cumsum([0] + [len(a) for a in per_level]).astype(np.int64)
            plan = _DensePlan(height, width, batch, images, graph, outputs, anchors, starts)
            self._dense[key] = plan
        return plan

    def head_plan(self, batch: int) -> _HeadPlan:
        """The head stage's static input float32[N·R, C, P, P] (RoIAlign's output), RoI rows and graph (built once)."""
        import torch

        plan = self._head.get(batch)
        if plan is None:
            cfg = self.config
            r = cfg.rpn_post_nms_top_n
            p = cfg.roi_output_size
            with self._device_scope():
                rois = torch.zeros((batch * r, 5), dtype=torch.float32, device=self.device)
                rois[:, 0] = torch.arange(batch, device=self.device, dtype=torch.float32).repeat_interleave(r)
                features = torch.zeros((batch * r, cfg.fpn_channels, p, p), dtype=torch.float32, device=self.device)
                graph, outputs = self._prepare(self.head_net, features, f"head ×{batch * r}", shapes=False)
                groups = torch.zeros((batch, r), dtype=torch.int32, device=self.device) if self.on_gpu else None
            plan = _HeadPlan(batch, rois, features, graph, outputs, groups)
            self._head[batch] = plan
        return plan

    def _run(self, net, plan, static_input):
        if plan.graph is not None:
            plan.graph.replay()
            return plan.outputs
        with self._math():
            return net(static_input)

    # --- running --------------------------------------------------------------------------------
    def __call__(self, images, *, timed: bool | None = None) -> list[dict[str, Any]]:
        """images: float32[N, 1, H, W] tensor on this device (other devices/dtypes are copied in once) → per image
        {"boxes": float32[K, 4], "scores": float32[K]} CPU tensors by decreasing score, as
        :meth:`gixdrt.model.GixdDetector.forward`. With ``timed`` the device is synchronised after each stage
        and ``timings`` holds seconds per stage (:data:`gixdrt.model.STAGES`); otherwise ``timings`` is empty."""
        import torch

        n = int(images.shape[0])
        height, width = self.model.check_input(images)
        if n == 0:
            self.timings = {}
            return []
        with self._device_scope(), torch.no_grad():
            plan = self.dense_plan(height, width, n)
            if images.data_ptr() != plan.images.data_ptr():
                plan.images.copy_(images)
            dets, _ = self._detect(plan, n, self.timed if timed is None else timed, {}, time.perf_counter())
        return dets

    def preprocessor(self, config):
        """A :class:`gixdrt.preprocess.Preprocessor` for ``config`` with the kernels this device needs."""
        from ..preprocess import Preprocessor

        return Preprocessor(config, backend="cuda" if self.on_gpu else None)

    def _upload(self, frame):
        """One raw frame (or group) as a contiguous tensor on this device: its one host→device copy, none when
        it is there already."""
        import torch

        if not isinstance(frame, torch.Tensor):
            a = np.ascontiguousarray(frame)
            try:
                frame = torch.from_numpy(a)
            except TypeError:  # a pixel dtype this PyTorch lacks (uint16/uint32 before 2.3)
                frame = torch.from_numpy(a.astype(np.float32 if a.dtype.kind == "u" and a.itemsize <= 2 else np.float64))
        frame = frame.to(self.device)
        return frame if frame.is_contiguous() else frame.contiguous()

    def _inside_mask(self, pmap):
        import torch

        hit = self._inside.get(id(pmap))
        if hit is None or hit[0] is not pmap:
            hit = (pmap, torch.from_numpy(np.ascontiguousarray(pmap.inside)).to(self.device))
            self._inside[id(pmap)] = hit
        return hit[1]

    def from_raw(self, frames, preprocessor, *, polar: bool = False, image: bool = False,
                 timed: bool | None = None) -> list[dict[str, Any]]:
        """Raw detector frames → detections, every image-sized step on this device.

        frames: a sequence of N raw frames, each [H, W] or [G, H, W] (G frames summed by the remap), as PyTorch
            tensors on this device (used in place) or host arrays (uploaded once, uint16/uint32/int32/float);
            or one array [N, H, W] of N single frames, or one frame [H, W].
        preprocessor: a :class:`gixdrt.preprocess.Preprocessor` (backend None or ``"cuda"`` on the GPU; see
            :meth:`preprocessor`) or a :class:`gixdrt.geometry.Config`.
        The polar image of frame i goes to a fresh device buffer, its contrast image straight into the dense
        stage's static input (zeroed for a constant frame, as :class:`gixdrt.pipeline.Pipeline` does).
        → per image {"boxes" float32[K, 4], "scores" float32[K] (CPU tensors, by decreasing score),
        "intensity" float64[K] (NumPy: the polar image summed over each box on the device, as
        :func:`gixdrt.peaks.box_sums`), "constant" (bool)}, plus "polar" (float32[n_phi, n_q] device tensor) with
        ``polar`` and "image" (a device copy of the detector input) with ``image``. ``timings`` gains "upload",
        "polar" and "contrast" when timed. No DataWarning is raised here: "constant" says what the host path
        warns about.
        """
        import torch

        from ..geometry import Config

        pre = self.preprocessor(preprocessor) if isinstance(preprocessor, Config) else preprocessor
        if isinstance(frames, (list, tuple)):
            items = list(frames)
        elif frames.ndim == 2:  # one frame
            items = [frames]
        else:
            items = [frames[i] for i in range(frames.shape[0])]
        timed = self.timed if timed is None else timed
        n = len(items)
        if n == 0:
            self.timings = {}
            return []
        pmap = pre.map
        ph, pw = (int(s) for s in pmap.shape)
        self.model.check_input(torch.empty((1, self.config.in_channels, ph, pw), device="meta"))
        kern = self.kernels
        timings: dict[str, float] = {}
        clock = time.perf_counter
        with self._device_scope(), torch.no_grad():
            t0 = clock()
            raw = [self._upload(f) for f in items]
            t = self._tick(timed, timings, "upload", t0)
            plan = self.dense_plan(ph, pw, n)
            polars = torch.empty((n, ph, pw), dtype=torch.float32, device=self.device)
            stream = kern.stream()
            for i, f in enumerate(raw):
                pre.polar(kern.array(f), out=kern.array(polars[i]), stream=stream)
            t = self._tick(timed, timings, "polar", t)
            inside = self._inside_mask(pmap)
            constant = torch.zeros(n, dtype=torch.bool, device=self.device)
            cc = pre.config.contrast
            for i, f in enumerate(raw):
                img = plan.images[i, 0]
                if cc.disable:
                    _minmax_into(polars[i], img)
                else:
                    pre.contrast(kern.array(polars[i]), out=kern.array(img), stream=stream)
                flag = _frame_constant(f) | _constant_inside(polars[i], inside)
                img.masked_fill_(flag, 0.0)
                constant[i] = flag
            t = self._tick(timed, timings, "contrast", t)
            copies = plan.images[:, 0].clone() if image else None
            dets, extra = self._detect(plan, n, timed, timings, t, polars=polars, constant=constant)
        for i, d in enumerate(dets):
            d["intensity"] = extra["intensity"][i]
            d["constant"] = extra["constant"][i]
            if polar:
                d["polar"] = polars[i]
            if image:
                d["image"] = copies[i]
        return dets

    def _tick(self, timed: bool, timings: dict[str, float], name: str, t0: float) -> float:
        if not timed:
            return t0
        if self.on_gpu:
            import torch

            torch.cuda.synchronize(self.device)
        t1 = time.perf_counter()
        timings[name] = t1 - t0
        return t1

    def _detect(self, plan: _DensePlan, n: int, timed: bool, timings: dict[str, float], t: float, *,
                polars=None, constant=None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The stages on ``plan.images`` (already filled) → (detections, host extras); fills ``timings``."""
        model, cfg, kern = self.model, self.config, self.kernels
        height, width = plan.height, plan.width
        r = cfg.rpn_post_nms_top_n
        head = self.head_plan(n)
        p2, logits, deltas = self._run(self.dense_net, plan, plan.images)
        t = self._tick(timed, timings, "dense", t)
        boxes, scores, levels, valid = kern.decode_topk(
            logits, deltas, plan.anchors, plan.starts, k=cfg.rpn_pre_nms_top_n, height=height, width=width,
            bbox_clip=cfg.bbox_clip, min_size=cfg.rpn_min_size,
        )  # fmt: skip
        keep, count = kern.nms_fixed(boxes, scores, valid, cfg.rpn_nms_iou, r, levels)
        proposals = _take(boxes, keep)  # float32[N, R, 4]: image i's proposals at [i, :count[i]], zeros after
        t = self._tick(timed, timings, "proposals", t)
        head.rois[:, 1:].copy_(proposals.reshape(n * r, 4))
        kern.roi_align(p2, head.rois, head.features, cfg.roi_output_size, self.roi_scale, cfg.roi_sampling_ratio,
                       cfg.roi_aligned)
        t = self._tick(timed, timings, "roi_align", t)
        head_logits, head_deltas = self._run(self.head_net, head, head.features)
        t = self._tick(timed, timings, "head", t)
        fb, fs, fc = kern.decode_final(
            head_logits.reshape(n, r), head_deltas.reshape(n, r, 4), proposals, count, height=height, width=width,
            score_threshold=float(model.score_threshold), bbox_clip=cfg.bbox_clip, min_size=cfg.min_size,
        )  # fmt: skip
        cap = max(int(model.max_detections), 0)
        final, kept = kern.nms_fixed(fb, fs, fc, float(model.nms_iou), cap, head.groups)
        out_boxes = _take(fb, final)
        out_scores = _take(fs, final)
        device_out = [kept, out_boxes, out_scores]
        if polars is not None:
            device_out += [_box_sums(polars, out_boxes), constant]
        host = self._to_host(device_out)
        kept_h = host[0].numpy()
        dets = []
        for i in range(n):
            c = int(kept_h[i])
            dets.append({"boxes": host[1][i, :c].clone(), "scores": host[2][i, :c].clone()})
        extra: dict[str, Any] = {}
        if polars is not None:
            extra["intensity"] = [host[3][i, : int(kept_h[i])].numpy().copy() for i in range(n)]
            extra["constant"] = [bool(v) for v in host[4].numpy()]
        self._tick(timed, timings, "postprocess", t)
        self.timings = timings
        return dets, extra

    def _to_host(self, tensors: Sequence[Any]) -> list[Any]:
        """The final small results on the host: pinned non-blocking copies, then one wait on the stream."""
        import torch

        if not self.on_gpu:
            return list(tensors)
        host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
        for h, d in zip(host, tensors):
            h.copy_(d, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return host

    def time_dense(self, plan: _DensePlan, runs: int) -> list[float]:
        """Seconds of the dense stage alone (graph replay or eager run), ``runs`` times, by CUDA events."""
        import torch

        if not self.on_gpu:
            raise RuntimeError("time_dense measures the GPU stage; this instance runs on the CPU")
        out = []
        with self._device_scope(), torch.no_grad():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            for _ in range(runs):
                start.record()
                self._run(self.dense_net, plan, plan.images)
                end.record()
                end.synchronize()
                out.append(start.elapsed_time(end) / 1e3)
        return out


# -------------------------------------------------------------------------------------------------
# Benchmark hook
# -------------------------------------------------------------------------------------------------
def benchmark_raw_frames(model, config, batch: int = 16, runs: int = 50, *, precision: str = "fp16",
                         cuda_graphs: bool = True, cudnn_benchmark: bool = True, warmup: int = 5,
                         frames: Any = None, device: str = "cuda") -> dict[str, Any]:
    """Time raw uint16 frames already uploaded to the GPU → peaks (detections + intensities on the host).

    model: a :class:`gixdrt.model.GixdDetector` or a name/path for :func:`gixdrt.model.load`; config: a
    :class:`gixdrt.geometry.Config` or a config path; batch: frames per call; runs: timed calls after ``warmup``
    untimed ones (the first also captures the graphs). frames: raw frame(s) [H, W] or [K, H, W] to cycle through
    the batch (default: a fixed Poisson(20) uint16 frame stack of the detector's shape; pass real frames for a
    realistic number of peaks).
    → {"device", "precision", "cuda_graphs", "batch", "runs", "polar_shape", "median_s", "p99_s" (per batch),
    "frames_per_s", "dense_median_s", "dense_p99_s" (the dense stage alone, CUDA events), "dense_frames_per_s",
    "dense_gflop_per_frame" (87 GFLOP × H·W / (512·1024)), "dense_tflops" (achieved; divide by the GPU's fp16
    tensor-core peak for the roofline fraction), "upload_median_s" (pinned host → device copy of the batch),
    "stage_s" (one timed call, seconds per stage), "graph_failures"}.
    """
    import torch

    from ..geometry import Config, load_config

    if not hasattr(model, "config"):
        from ..model import load

        model = load(model)
    if not isinstance(config, Config):
        config = load_config(config)
    if batch < 1 or runs < 1:
        raise ValueError(f"batch and runs must be ≥ 1, got {batch} and {runs}")
    stages = TorchCudaStages(model, device=device, precision=precision, cuda_graphs=cuda_graphs,
                             cudnn_benchmark=cudnn_benchmark)
    if not stages.on_gpu:
        raise ValueError("benchmark_raw_frames times the GPU path: pass a CUDA device")
    pre = stages.preprocessor(config)
    rows, cols = config.geometry.frame_shape
    if frames is None:
        host = np.random.default_rng(0).poisson(20.0, size=(batch, rows, cols)).astype(np.uint16)
    else:
        src = np.asarray(frames)
        src = src[None] if src.ndim == 2 else src
        host = np.ascontiguousarray(np.stack([src[i % len(src)] for i in range(batch)]))
    pinned = torch.from_numpy(host).pin_memory()
    on_device = pinned.to(stages.device)
    items = list(on_device.unbind(0))
    for _ in range(max(int(warmup), 1)):
        stages.from_raw(items, pre)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        stages.from_raw(items, pre)
        times.append(time.perf_counter() - t0)
    stages.from_raw(items, pre, timed=True)
    stage_s = dict(stages.timings)
    ph, pw = (int(s) for s in pre.map.shape)
    dense = stages.time_dense(stages.dense_plan(ph, pw, batch), runs)
    uploads = []
    for _ in range(runs):
        t0 = time.perf_counter()
        on_device.copy_(pinned, non_blocking=True)
        torch.cuda.synchronize(stages.device)
        uploads.append(time.perf_counter() - t0)
    median = float(np.median(times))
    dense_median = float(np.median(dense))
    gflop = DENSE_GFLOP_512X1024 * (ph * pw) / (512 * 1024)
    return {
        "device": torch.cuda.get_device_name(stages.device),
        "precision": precision,
        "cuda_graphs": stages.cuda_graphs,
        "batch": int(batch),
        "runs": int(runs),
        "polar_shape": (ph, pw),
        "median_s": median,
        "p99_s": float(np.percentile(times, 99)),
        "frames_per_s": batch / median,
        "dense_median_s": dense_median,
        "dense_p99_s": float(np.percentile(dense, 99)),
        "dense_frames_per_s": batch / dense_median,
        "dense_gflop_per_frame": gflop,
        "dense_tflops": gflop * batch / dense_median / 1e3,
        "upload_median_s": float(np.median(uploads)),
        "stage_s": stage_s,
        "graph_failures": list(stages.graph_failures),
    }
