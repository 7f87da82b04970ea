"""The GIXD peak detector as one plan, from raw detector frames (or polar or processed images) to peaks.

Written once; every backend runs it (:mod:`gixdrt.engine.backends`: the runners and the kernel set differ)::

    raw frames ─ polar_remap_batch ─ fill_holes_batch ─ frame_constant ─ contrast_batch ─▶ [dense graph] ─▶ decode_topk ─ nms_fixed
      (input "raw" only)              (input "polar" starts here)        (input "processed" starts here)
    ─ gather_rows ─ make_rois ─ roi_align ─▶ [head graph] ─▶ decode_final ─ nms_fixed ─ gather_rows ─ box_sums

Buffers for a batch of N images of H×W (polar pixels), with A anchors, L FPN levels, k = ``rpn_pre_nms_top_n``,
R = ``rpn_post_nms_top_n``, D = ``max_detections``, C = FPN channels, P = RoI bins:

- ``frames`` [N, G, H_det, W_det] (raw input, G frames summed per image), ``pixel_mask`` uint8[H_det, W_det] (when
  the run has a mask), ``polar`` float32[N, H, W] with ``polar_masked`` uint8[N, H, W] (0: every sample valid, 1: a
  masked detector pixel left out, 2: no valid sample, filled along φ by ``fill_holes_batch``) and ``masked_counts``
  int64[N, 2] (pixels of code 1 and 2 per image), ``constant`` bool[N] (a constant frame: its image is zeroed, it
  gives no peaks), ``images`` float32[N, 1, H, W];
- dense graph → ``p2`` float32[N, C, H/8, W/4], ``logits`` float32[N, A], ``deltas`` float32[N, A, 4] (flattened in
  the order of ``anchors`` float32[A, 4], ``level_starts`` int64[L + 1]);
- proposals: ``rpn_boxes``/``rpn_scores``/``rpn_levels`` [N, L·k] + ``rpn_valid`` int32[N]; ``rpn_keep`` int32[N, R]
  + ``proposal_count`` int32[N]; ``proposals`` float32[N, R, 4] (image i's at [i, :proposal_count[i]], zeros
  after); ``rois`` float32[N·R, 5];
- ``roi_features`` float32[N·R, C, P, P] → head graph → ``head_logits`` float32[N, R], ``head_deltas``
  float32[N, R, 4];
- final filter: ``final_boxes``/``final_scores`` [N, R] + ``final_count``; ``final_keep`` int32[N, D] + ``count``
  int32[N]; outputs ``boxes`` float32[N, D, 4] and ``scores`` float32[N, D] (image i's peaks at [i, :count[i]],
  by decreasing score) and ``intensity`` float64[N, D] (the uncorrected polar image summed over each box).

An image whose size is not a multiple of the network's strides (H of 32, W of 4 for the published model) is padded
with zeros below and to the right (``pad_images`` → ``padded_images``) for the dense graph; anchors and feature maps
are those of the padded size, and boxes are clipped to the image itself, so peaks come back in its pixels.

Fusion: TensorRT runs RoIAlign inside its head engine (gixdrt's plugin), reading ``p2`` and ``rois``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine.plan import Buffer, Fusion, GraphStage, KernelStage, Plan
from ..model.config import DetectorConfig, Thresholds, anchors

__all__ = ["INPUTS", "RawInput", "detector_plan", "padded_size"]

#: what a plan can start from
INPUTS = ("raw", "polar", "processed")


@dataclass(frozen=True, eq=False)
class RawInput:
    """The raw-frame part of a plan: G frames of ``frame_shape`` and ``dtype`` per image, remapped through ``pmap``
    (:class:`gixdrt.geometry.PolarMap`) and contrast-enhanced with ``contrast`` (:class:`gixdrt.geometry.ContrastConfig`).
    mask: uint8[H_det, W_det] (nonzero = masked) or None; saturation: pixel values at or above it are masked (None:
    none); non-finite pixels and the dtype's flag value are always masked (:func:`gixdrt.kernels.polar_remap`)."""

    pmap: Any
    dtype: str
    group: int = 1
    mask: Any = None
    saturation: float | None = None

    @property
    def inside_count(self) -> int:
        """Polar pixels that sample the detector."""
        return self.pmap.inside_count

    @property
    def key(self) -> tuple:
        """What makes two raw inputs run the same plan."""
        return (id(self.pmap), self.dtype, self.group, id(self.mask), self.saturation)

    @property
    def frame_shape(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.pmap.frame_shape)


def _contrast_params(contrast: Any) -> dict[str, Any]:
    from ..geometry import ContrastConfig

    c = contrast or ContrastConfig()
    return {"coef": float(c.coef), "clip_limit": float(c.limit), "log": bool(c.log), "disable": bool(c.disable)}


def padded_size(config: DetectorConfig, height: int, width: int) -> tuple[int, int]:
    """The smallest (H, W) ≥ (height, width) that are multiples of the network's strides (the size it runs at)."""
    hm, wm = config.height_multiple, config.width_multiple
    return -(-int(height) // hm) * hm, -(-int(width) // wm) * wm


def detector_plan(
    config: DetectorConfig,
    thresholds: Thresholds,
    *,
    batch: int,
    height: int,
    width: int,
    roi_scale: tuple[float, float] | None = None,
    input: str = "processed",
    raw: RawInput | None = None,
    contrast: Any = None,
) -> Plan:
    """The detector's plan for a batch of ``batch`` images of ``height`` × ``width`` polar pixels.

    roi_scale: RoIAlign's (s_y, s_x) on P2 (the checkpoint's ``roi_align.scales``; default the config's).
    input: ``"processed"`` (the detector's input images), ``"polar"`` (polar images: the contrast chain first)
    or ``"raw"`` (raw frames: ``raw`` says how; remap and contrast first). contrast: the
    :class:`gixdrt.geometry.ContrastConfig` (default the published chain).
    """
    if input not in INPUTS:
        raise ValueError(f"unknown input kind {input!r}; expected one of {INPUTS}")
    n, h, w = int(batch), int(height), int(width)
    if n < 1:
        raise ValueError(f"batch must be ≥ 1, got {batch}")
    if h < 1 or w < 1:
        raise ValueError(f"image size {h}×{w}: must be at least 1×1")
    cfg = config
    hp, wp = padded_size(cfg, h, w)  # what the network sees: zeros below and right of the image
    anchor_boxes, starts = anchors(cfg, hp, wp)
    a_total = len(anchor_boxes)
    levels = cfg.levels
    k, r, d = cfg.rpn_pre_nms_top_n, cfg.rpn_post_nms_top_n, thresholds.max_detections
    c, p = cfg.fpn_channels, cfg.roi_output_size
    (p2h, p2w), *_ = cfg.level_shapes(hp, wp)
    f32, i32 = "float32", "int32"
    buffers: dict[str, Buffer] = {}
    stages: list[Any] = []
    outputs = ["boxes", "scores", "count"]

    if input == "raw":
        if raw is None:
            raise ValueError("a plan for raw frames needs raw=RawInput(pmap, dtype, group)")
        if tuple(raw.pmap.shape) != (h, w):
            raise ValueError(f"the polar map gives {raw.pmap.shape[0]}×{raw.pmap.shape[1]} images, the plan is for {h}×{w}")
        buffers["frames"] = Buffer((n, raw.group, *raw.frame_shape), raw.dtype, "input")
        buffers["polar"] = Buffer((n, h, w), f32)
        buffers["polar_masked"] = Buffer((n, h, w), "uint8")
        buffers["masked_counts"] = Buffer((n, 2), "int64")
        buffers["inside"] = Buffer.of(np.ascontiguousarray(raw.pmap.inside, bool))
        buffers["constant"] = Buffer((n,), "bool")
        mask = {}
        if raw.mask is not None:
            buffers["pixel_mask"] = Buffer.of(np.ascontiguousarray(raw.mask, np.uint8))
            mask = {"mask": "pixel_mask"}
        stages += [
            KernelStage("polar", "polar_remap_batch", ("frames",), ("polar", "polar_masked"),
                        {"pmap": raw.pmap, "saturation": raw.saturation}, kwargs=mask, timer="polar"),
            KernelStage("fill", "fill_holes_batch", ("polar", "polar_masked"), ("polar",), timer="polar"),
            KernelStage("masked", "masked_counts", ("polar_masked",), ("masked_counts",), timer="polar"),
            KernelStage("flags", "frame_constant", ("frames", "polar", "inside"), ("constant",), timer="contrast"),
            KernelStage("contrast", "contrast_batch", ("polar",), ("images",), _contrast_params(contrast),
                        kwargs={"skip": "constant"}, timer="contrast"),
        ]
        outputs += ["intensity", "constant", "masked_counts"]
    elif input == "polar":
        buffers["polar"] = Buffer((n, h, w), f32, "input")
        stages.append(KernelStage("contrast", "contrast_batch", ("polar",), ("images",), _contrast_params(contrast),
                                  timer="contrast"))
        outputs.append("intensity")
    buffers["images"] = Buffer((n, cfg.in_channels, h, w), f32, "input" if input == "processed" else "work")
    network_input = "images"
    if (hp, wp) != (h, w):
        network_input = "padded_images"
        buffers[network_input] = Buffer((n, cfg.in_channels, hp, wp), f32)
        stages.append(KernelStage("pad", "pad_images", ("images",), (network_input,), timer="dense"))

    sy, sx = roi_scale if roi_scale is not None else cfg.roi_scale
    buffers.update({
        "p2": Buffer((n, c, p2h, p2w), f32, "graph"),
        "logits": Buffer((n, a_total), f32, "graph"),
        "deltas": Buffer((n, a_total, 4), f32, "graph"),
        "anchors": Buffer.of(anchor_boxes),
        "level_starts": Buffer.of(starts, "host"),
        "rpn_boxes": Buffer((n, levels * k, 4), f32),
        "rpn_scores": Buffer((n, levels * k), f32),
        "rpn_levels": Buffer((n, levels * k), i32),
        "rpn_valid": Buffer((n,), i32),
        "rpn_keep": Buffer((n, r), i32),
        "proposal_count": Buffer((n,), i32),
        "proposals": Buffer((n, r, 4), f32),
        "rois": Buffer((n * r, 5), f32),
        "roi_features": Buffer((n * r, c, p, p), f32),
        "head_logits": Buffer((n, r), f32, "graph"),
        "head_deltas": Buffer((n, r, 4), f32, "graph"),
        "final_boxes": Buffer((n, r, 4), f32),
        "final_scores": Buffer((n, r), f32),
        "final_count": Buffer((n,), i32),
        "final_keep": Buffer((n, d), i32),
        "count": Buffer((n,), i32),
        "boxes": Buffer((n, d, 4), f32),
        "scores": Buffer((n, d), f32),
    })
    if "intensity" in outputs:
        buffers["intensity"] = Buffer((n, d), "float64")
    box = {"height": h, "width": w, "bbox_clip": float(cfg.bbox_clip)}
    stages += [
        GraphStage("dense", "dense", {"images": network_input}, {"p2": "p2", "logits": "logits", "deltas": "deltas"},
                   timer="dense"),
        KernelStage("decode_topk", "decode_topk", ("logits", "deltas", "anchors", "level_starts"),
                    ("rpn_boxes", "rpn_scores", "rpn_levels", "rpn_valid"),
                    {"k": k, "min_size": float(cfg.rpn_min_size), **box}, timer="proposals"),
        KernelStage("rpn_nms", "nms_fixed", ("rpn_boxes", "rpn_scores", "rpn_valid"), ("rpn_keep", "proposal_count"),
                    {"iou": float(cfg.rpn_nms_iou), "max_out": r}, kwargs={"groups": "rpn_levels"}, timer="proposals"),
        KernelStage("proposals", "gather_rows", ("rpn_boxes", "rpn_keep"), ("proposals",), timer="proposals"),
        KernelStage("rois", "make_rois", ("proposals",), ("rois",), timer="roi_align"),
        KernelStage("roi_align", "roi_align", ("p2", "rois"), ("roi_features",),
                    {"output_size": p, "spatial_scale": (float(sy), float(sx)), "sampling_ratio": int(cfg.roi_sampling_ratio),
                     "aligned": bool(cfg.roi_aligned)}, kwargs={"valid": "proposal_count"}, timer="roi_align"),
        GraphStage("head", "head", {"roi_features": "roi_features"}, {"logits": "head_logits", "deltas": "head_deltas"},
                   timer="head"),
        KernelStage("decode_final", "decode_final", ("head_logits", "head_deltas", "proposals", "proposal_count"),
                    ("final_boxes", "final_scores", "final_count"),
                    {"score_threshold": float(thresholds.score_threshold), "min_size": float(cfg.min_size), **box},
                    timer="postprocess"),
        KernelStage("final_nms", "nms_fixed", ("final_boxes", "final_scores", "final_count"), ("final_keep", "count"),
                    {"iou": float(thresholds.nms_iou), "max_out": d}, timer="postprocess"),
        KernelStage("boxes", "gather_rows", ("final_boxes", "final_keep"), ("boxes",), timer="postprocess"),
        KernelStage("scores", "gather_rows", ("final_scores", "final_keep"), ("scores",), timer="postprocess"),
    ]
    if "intensity" in outputs:
        stages.append(KernelStage("intensity", "box_sums", ("polar", "boxes", "count"), ("intensity",),
                                  timer="postprocess"))
    fusion = Fusion(graph="head", kernel="roi_align", artifact="head_pooled", inputs={"p2": "p2", "rois": "rois"})
    return Plan(f"gixd-{input}", buffers, tuple(stages), tuple(outputs), (fusion,))
