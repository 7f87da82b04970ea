"""Kernels with one NumPy reference, a compiled C++ CPU path (gixdrt._ext) and a CUDA path each.

Public entry points pick the implementation through :mod:`gixdrt.kernels.registry`:

- :func:`polar_remap`: raw detector frame(s) → polar (φ, |Q|) image through a :class:`~gixdrt.geometry.PolarMap`;
  masked pixels (a user mask, a saturation value, the dtype's flag value, non-finite values) take no part, and
  each polar pixel's code (0 clean, 1 renormalised, 2 hole) can be written into a ``masked`` buffer.
- :func:`fill_holes`: fills the holes (code 2) of polar image(s) in place along φ.
- :func:`contrast`: the published contrast chain (min–max, log10, uint16, single-tile 16-bit CLAHE, min–max).
- :func:`clahe`: contrast-limited adaptive histogram equalisation with OpenCV's semantics.
- :func:`decode_topk`, :func:`nms_fixed`, :func:`decode_final`: the detector's box stages, fixed-size outputs.
- ``roi_align(...)``: RoIAlign (the callable module :mod:`gixdrt.kernels.roi_align`).

``impl=None`` chooses from where the input lives (NumPy → ``cpu``, device array → ``cuda``);
``impl="reference" | "cpu" | "cuda"`` forces one and raises
:class:`~gixdrt.kernels.registry.BackendUnavailableError` if it cannot run here.
"""
from __future__ import annotations

from typing import Any

from ..published import CONTRAST_COEF, CONTRAST_LIMIT
from .reference.boxes import BBOX_CLIP
from .registry import (
    IMPLS,
    BackendUnavailableError,
    available,
    register,
    registered,
    resolve,
    roi_align_cuda_unavailable_reason,
)

for _backend, _module in (
    ("reference", "gixdrt.kernels.reference"),
    ("cpu", "gixdrt.kernels.cpu"),
    ("cuda", "gixdrt.kernels.cuda"),
):
    register("polar_remap", _backend, f"{_module}.polar:polar_remap")
    register("fill_holes", _backend, f"{_module}.polar:fill_holes")
    register("contrast", _backend, f"{_module}.contrast:contrast")
    register("clahe", _backend, f"{_module}.contrast:clahe")


def polar_remap(
    frames: Any,
    pmap: Any,
    *,
    mask: Any = None,
    saturation: float | None = None,
    out: Any = None,
    masked: Any = None,
    impl: str | None = None,
    stream: Any = None,
) -> Any:
    """Sample raw frame(s) onto the polar grid of ``pmap`` (bilinear, constant border 0), masked pixels excluded.

    frames: [H, W] or [G, H, W] detector counts, float32/float64/uint8/uint16/uint32/int16/int32 (G frames are
        summed, as the published pipeline sums consecutive frames).
    pmap: :class:`gixdrt.geometry.PolarMap` built for this detector shape (flips are folded into it).
    mask: None or a bool/uint8 [H, W] array (a device array for cuda), nonzero = masked pixel.
    saturation: None or a number: a pixel value v ≥ saturation is masked.
    out: optional float32[n_phi, n_q] buffer (a device array for the cuda implementation).
    masked: None or a uint8[n_phi, n_q] buffer (a device array for cuda) receiving each polar pixel's code.
    Returns float32[n_phi, n_q]: rows = φ from 0° (in plane) to 90°, columns = |Q| from 0 to q_max.

    A frame pixel is masked when mask[y, x] ≠ 0 or any of its G values is flagged: not finite (as float32), the
    dtype's flag value (2^bits − 1 for unsigned integers, ±the largest finite value for floats; signed integers
    have none) or ≥ saturation. Masked and off-frame neighbours count 0 in the bilinear interpolation r. Code 0:
    no on-frame neighbour is masked, out = r (the remap without masks, bit for bit). Code 1: out = r·W_in/W_ok,
    the interpolation renormalised over the on-frame unmasked neighbours' weights. Code 2 (a hole): every on-frame
    neighbour is masked, out = 0 (:func:`fill_holes` fills them). Undefined or out-of-detector positions give 0,
    never NaN. The exact specification: :func:`gixdrt.kernels.reference.polar.polar_remap`.

    Host implementations raise one :class:`gixdrt.errors.DataWarning` when values beyond ±1e12
    (``_checks.EXTREME_VALUE``) were sampled from unmasked pixels and no saturation value is given (likely flags
    or saturated pixels); the cuda implementation does not warn (that would need a device→host sync).
    """
    name, fn = resolve("polar_remap", impl, frames)
    kw = dict(mask=mask, saturation=saturation, out=out, masked=masked)
    if name == "cuda":
        kw["stream"] = stream
    return fn(frames, pmap, **kw)


def fill_holes(polar: Any, masked: Any, *, impl: str | None = None, stream: Any = None) -> Any:
    """Fill the holes of polar image(s) in place by linear interpolation along φ; returns ``polar``.

    polar: float32[H, W] or [N, H, W] (a device array for cuda); masked: uint8 of the same shape, the codes of
    :func:`polar_remap` (2 = hole). In every column each maximal run of holes, rows a..b, is interpolated
    between L = polar[a − 1] and R = polar[b + 1]: t = float32(i − (a − 1)) / float32(b − a + 2),
    polar[i] = L + (R − L)·t. A run at the top takes R, one at the bottom L, an all-hole column 0. Other pixels
    are never changed. Specification: :func:`gixdrt.kernels.reference.polar.fill_holes`.
    """
    name, fn = resolve("fill_holes", impl, polar)
    if name == "cuda":
        return fn(polar, masked, stream=stream)
    return fn(polar, masked)


def contrast(
    polar: Any,
    *,
    coef: float = CONTRAST_COEF,
    clip_limit: float = CONTRAST_LIMIT,
    log: bool = True,
    out: Any = None,
    impl: str | None = None,
    stream: Any = None,
) -> Any:
    """The published contrast chain: float32[H, W] polar image → float32[H, W] in [0, 1].

    n(v) = (v − min)/(max − min); a = log10(coef·n(P) + 1) (or n(P) when ``log`` is False);
    u = uint16(coef·n(a)) (truncation); c = CLAHE(u, clip_limit, 1×1 tile, 16 bit); result n(c).
    Constant or non-finite input gives a defined result (non-finite pixels count as the minimum; a
    constant image gives zeros) and a :class:`gixdrt.errors.DataWarning` (host implementations).
    """
    name, fn = resolve("contrast", impl, polar)
    kw = dict(coef=coef, clip_limit=clip_limit, log=log, out=out)
    if name == "cuda":
        kw["stream"] = stream
    return fn(polar, **kw)


def clahe(
    image: Any,
    clip_limit: float = 40.0,
    tile_grid: tuple[int, int] = (8, 8),
    *,
    out: Any = None,
    impl: str | None = None,
    stream: Any = None,
) -> Any:
    """CLAHE with OpenCV's semantics (``cv2.createCLAHE(clip_limit, tile_grid).apply``).

    image: uint8[H, W] (256 bins) or uint16[H, W] (65,536 bins). tile_grid: (tiles_x, tiles_y) as in
    OpenCV. clip_limit ≤ 0 disables clipping. Returns an array of the input dtype.
    """
    name, fn = resolve("clahe", impl, image)
    if name == "cuda":
        return fn(image, clip_limit, tile_grid, out=out, stream=stream)
    return fn(image, clip_limit, tile_grid, out=out)


__all__ = [
    "IMPLS",
    "BackendUnavailableError",
    "available",
    "clahe",
    "contrast",
    "fill_holes",
    "polar_remap",
    "register",
    "registered",
    "resolve",
]

for _backend, _module in (
    ("reference", "gixdrt.kernels.reference"),
    ("cpu", "gixdrt.kernels.cpu"),
    ("cuda", "gixdrt.kernels.cuda"),
):
    register("decode_topk", _backend, f"{_module}.boxes:decode_topk")
    register("nms_fixed", _backend, f"{_module}.boxes:nms_fixed")
    register("decode_final", _backend, f"{_module}.boxes:decode_final")


def decode_topk(
    logits: Any,
    deltas: Any,
    anchors: Any,
    level_starts: Any,
    *,
    k: int = 1000,
    height: int,
    width: int,
    bbox_clip: float = BBOX_CLIP,
    min_size: float = 1e-3,
    out: tuple[Any, Any, Any, Any] | None = None,
    impl: str | None = None,
    stream: Any = None,
) -> tuple[Any, Any, Any, Any]:
    """RPN proposals before NMS, fixed size: per image and level the top-k logits, decoded and clipped.

    logits: float32[N, A_total]; deltas: float32[N, A_total, 4]; anchors: float32[A_total, 4] px;
    level_starts: int[L+1] (host sequence); k per level; boxes clipped to [0, width] × [0, height];
    bbox_clip: upper clamp of dw, dh (log(1000/16)); boxes with a side < min_size are dropped.
    → (boxes float32[N, L·k, 4], scores float32[N, L·k] (sigmoid), levels int32[N, L·k], valid int32[N]):
    image i's entries [:valid[i]] are level by level, by decreasing logit (ties: lower index first).
    out: optional tuple (boxes, scores, levels, valid) of preallocated arrays with exactly these shapes and
    dtypes (NumPy for the host implementations, device arrays for cuda): checked, written and returned.
    The cuda implementation takes and returns device arrays, launched on ``stream``.
    """
    name, fn = resolve("decode_topk", impl, logits)
    kw = dict(k=k, height=height, width=width, bbox_clip=bbox_clip, min_size=min_size, out=out)
    if name == "cuda":
        kw["stream"] = stream
    return fn(logits, deltas, anchors, level_starts, **kw)


def nms_fixed(
    boxes: Any,
    scores: Any,
    valid: Any,
    iou: float,
    max_out: int,
    groups: Any = None,
    *,
    out: tuple[Any, Any] | None = None,
    impl: str | None = None,
    stream: Any = None,
) -> tuple[Any, Any]:
    """Greedy NMS per image (and per group), fixed size.

    boxes: float32[N, M, 4]; scores: float32[N, M]; valid: int32[N] (entries [:valid[i]] count); a box is
    suppressed when its fp32 IoU with a kept box of the same group is > iou; groups: optional int32[N, M].
    → (keep_idx int32[N, max_out] by decreasing score, ties lower index first, padded with −1; count int32[N]).
    out: optional tuple (keep_idx, count) of preallocated arrays with exactly these shapes and dtypes (NumPy
    for the host implementations, device arrays for cuda): checked, written and returned.
    """
    name, fn = resolve("nms_fixed", impl, boxes)
    if name == "cuda":
        return fn(boxes, scores, valid, iou, max_out, groups, out=out, stream=stream)
    return fn(boxes, scores, valid, iou, max_out, groups, out=out)


def decode_final(
    logits: Any,
    deltas: Any,
    proposals: Any,
    valid: Any,
    *,
    height: int,
    width: int,
    score_threshold: float,
    bbox_clip: float = BBOX_CLIP,
    min_size: float = 1e-3,
    out: tuple[Any, Any, Any] | None = None,
    impl: str | None = None,
    stream: Any = None,
) -> tuple[Any, Any, Any]:
    """Second-stage score and decode, fixed size (before the final NMS).

    logits: float32[N, R]; deltas, proposals: float32[N, R, 4]; valid: int32[N] (entries [:valid[i]] count).
    Score 2·sigmoid − 1; boxes decoded against the proposals and clipped to [0, width] × [0, height]; kept
    where score ≥ score_threshold and both sides ≥ min_size.
    → (boxes float32[N, R, 4], scores float32[N, R], count int32[N]): survivors first, in proposal order.
    out: optional tuple (boxes, scores, count) of preallocated arrays with exactly these shapes and dtypes
    (NumPy for the host implementations, device arrays for cuda): checked, written and returned.
    """
    name, fn = resolve("decode_final", impl, logits)
    kw = dict(height=height, width=width, score_threshold=score_threshold, bbox_clip=bbox_clip, min_size=min_size,
              out=out)
    if name == "cuda":
        kw["stream"] = stream
    return fn(logits, deltas, proposals, valid, **kw)


__all__ += ["BBOX_CLIP", "decode_final", "decode_topk", "nms_fixed"]

register("roi_align", "reference", "gixdrt.kernels.reference.roi_align:roi_align")
register("roi_align", "cpu", "gixdrt.kernels.cpu.roi_align:roi_align")
register("roi_align", "cuda", "gixdrt.kernels.cuda.roi_align:roi_align", probe=roi_align_cuda_unavailable_reason)

# gixdrt.kernels.roi_align is the RoIAlign entry point: a module that can be called (see its docstring)
from . import roi_align

__all__ += ["roi_align"]

# Ops between a plan's stages (gixdrt.engine.plan): NumPy on the host (the reference is the host path: they cost
# next to nothing), PyTorch ops on device tensors; and the preprocessing kernels over a batch.
for _op in ("gather_rows", "make_rois", "box_sums", "frame_constant", "masked_counts", "pad_images", "threshold"):
    register(_op, "reference", f"gixdrt.kernels.reference.layout:{_op}")
    register(_op, "cuda", f"gixdrt.kernels.cuda.layout:{_op}")
for _op in ("polar_remap_batch", "fill_holes_batch", "contrast_batch"):
    for _impl in ("reference", "cpu", "cuda"):
        register(_op, _impl, f"gixdrt.kernels.batched:{_op}_{_impl}")

# The powder U-Net plan's kernels (gixdrt.powder.plan): normalisation, spot mask and small-component removal with a
# Numba CPU version; the tile moves run their NumPy reference on the host.
from .registry import numba_unavailable_reason as _numba_probe  # noqa: E402

for _op in ("powder_normalize", "ring_normalize", "spot_mask", "remove_small_components"):
    register(_op, "reference", f"gixdrt.kernels.reference.powder:{_op}")
    register(_op, "cpu", f"gixdrt.kernels.cpu.powder:{_op}", probe=_numba_probe)
    register(_op, "cuda", f"gixdrt.kernels.cuda.powder:{_op}")
for _op in ("extract_tiles", "stitch_logits"):
    register(_op, "reference", f"gixdrt.kernels.reference.powder:{_op}")
    register(_op, "cuda", f"gixdrt.kernels.cuda.powder:{_op}")
