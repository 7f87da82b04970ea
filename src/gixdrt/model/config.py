"""The GIXD detector's architecture and inference parameters, without PyTorch.

Everything that runs the detector outside PyTorch needs from the model is here: the
:class:`DetectorConfig` (the model card's ``architecture``), the size of each FPN level for an image size,
and the anchors in the order of the flattened RPN outputs. :mod:`gixdrt.model.network` builds the PyTorch
network from the same config, and :class:`gixdrt.model.anchors.AnchorGenerator` wraps :func:`grid_anchors`.

Anchors: per level l with stride (s_y, s_x) = image size // feature size and sizes ((h, w), ...), anchor a
at feature cell (i, j) is [j·s_x − w/2, i·s_y − h/2, j·s_x + w/2, i·s_y + h/2] in float32 (centres on the
cell corners, no half-stride offset). Order: level, then row i, then column j, then anchor a: the order in
which the dense graph flattens its RPN outputs (``logits`` float32[N, A], ``deltas`` float32[N, A, 4]).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from .. import published
from ..kernels.reference.boxes import BBOX_CLIP

__all__ = [
    "DENSE_INPUTS",
    "DENSE_OUTPUTS",
    "HEAD_INPUTS",
    "HEAD_OUTPUTS",
    "PUBLISHED_ANCHOR_SIZES",
    "STAGES",
    "DetectorConfig",
    "Thresholds",
    "anchors",
    "grid_anchors",
]

#: (h, w) in image pixels per FPN level P2, P3, P4 (strides (8, 4), (16, 4), (32, 4) for the published model)
PUBLISHED_ANCHOR_SIZES: tuple[tuple[tuple[float, float], ...], ...] = (
    ((50.0, 10.0), (100.0, 10.0)),
    ((200.0, 10.0), (300.0, 10.0)),
    ((400.0, 10.0), (500.0, 10.0)),
)

#: tensor names of the detector's two graphs (:mod:`gixdrt.model.graphs`, the exported ONNX files, the engines)
DENSE_INPUTS = ("images",)
DENSE_OUTPUTS = ("p2", "logits", "deltas")
HEAD_INPUTS = ("roi_features",)
HEAD_OUTPUTS = ("logits", "deltas")

#: the detector's stages, in order: the keys of every backend's per-stage timings
STAGES = ("dense", "proposals", "roi_align", "head", "postprocess")


@dataclass(frozen=True)
class Thresholds:
    """The final filter: keep peaks scoring ≥ ``score_threshold`` (on 2·sigmoid − 1), suppress a box whose IoU
    with a better one is > ``nms_iou``, keep at most ``max_detections`` per image. The published values are the
    defaults (the gixi config's ``postprocessing_config``: ``score_level`` 0.6, ``nms_level`` 0.1)."""

    score_threshold: float = published.SCORE_THRESHOLD
    nms_iou: float = published.NMS_IOU
    max_detections: int = published.MAX_DETECTIONS

    def __post_init__(self) -> None:
        import math

        s, iou, cap = self.score_threshold, self.nms_iou, self.max_detections
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not (math.isfinite(s) and -1.0 <= s <= 1.0):
            raise ValueError(f"score_threshold must be a number in [-1, 1] (scores are 2·sigmoid − 1), got {s!r}")
        if isinstance(iou, bool) or not isinstance(iou, (int, float)) or not (math.isfinite(iou) and 0.0 <= iou <= 1.0):
            raise ValueError(f"nms_iou must be a number in [0, 1], got {iou!r}")
        if isinstance(cap, bool) or not isinstance(cap, (int, np.integer)) or not 1 <= cap <= 100_000:
            raise ValueError(f"max_detections must be an integer in [1, 100000], got {cap!r}")
        object.__setattr__(self, "score_threshold", float(s))
        object.__setattr__(self, "nms_iou", float(iou))
        object.__setattr__(self, "max_detections", int(cap))

    def replace(self, **overrides: Any) -> Thresholds:
        """A copy with the given values (None leaves a value as it is)."""
        return Thresholds(**{**asdict(self), **{k: v for k, v in overrides.items() if v is not None}})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DetectorConfig:
    """Architecture and inference parameters. The defaults are the published model's."""

    in_channels: int = 1
    stem_channels: int = 64
    widths: tuple[int, ...] = (64, 128, 256, 256)  # layer1..layer4
    strides: tuple[tuple[int, int], ...] = ((1, 1), (2, 1), (2, 1), (2, 1))  # layer1..layer4, (y, x)
    fpn_channels: int = 64
    anchor_sizes: tuple[tuple[tuple[float, float], ...], ...] = PUBLISHED_ANCHOR_SIZES  # per level ((h, w), ...)
    rpn_pre_nms_top_n: int = 1000  # per image and level
    rpn_post_nms_top_n: int = 1000  # per image
    rpn_nms_iou: float = 0.9
    rpn_min_size: float = 1e-3
    roi_output_size: int = 16
    roi_scale: tuple[float, float] = (1 / 8, 1 / 4)  # (y, x) image px → P2 cells
    roi_sampling_ratio: int = -1  # ≤ 0: adaptive ceil(roi_size / 16)
    roi_aligned: bool = False  # legacy RoIAlign, as the published model was trained
    representation_size: int = 32
    leaky_slope: float = 0.01
    bbox_clip: float = BBOX_CLIP
    min_size: float = 1e-2  # final boxes with a side below this are dropped
    score_threshold: float = published.SCORE_THRESHOLD
    nms_iou: float = published.NMS_IOU
    max_detections: int = published.MAX_DETECTIONS

    @property
    def height_multiple(self) -> int:
        sy = 2 * 2  # conv1 and maxpool
        for s in self.strides:
            sy *= s[0]
        return sy

    @property
    def width_multiple(self) -> int:
        sx = 2 * 2
        for s in self.strides:
            sx *= s[1]
        return sx

    @property
    def levels(self) -> int:
        """FPN levels (P2, P3, P4 for the published model)."""
        return len(self.anchor_sizes)

    @property
    def anchors_per_cell(self) -> int:
        return len(self.anchor_sizes[0])

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self.score_threshold, self.nms_iou, self.max_detections)

    def check_image_size(self, height: int, width: int) -> None:
        """ValueError unless H and W are positive multiples of the network's strides."""
        h, w = int(height), int(width)
        if h <= 0 or w <= 0 or h % self.height_multiple or w % self.width_multiple:
            raise ValueError(
                f"image size {h}×{w}: H must be a positive multiple of {self.height_multiple} and W a positive "
                f"multiple of {self.width_multiple}"
            )

    def level_shapes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(rows, columns) of each FPN level's feature map for an H×W image (the outputs of layers 2.. of the body)."""
        self.check_image_size(height, width)
        sy, sx = 4, 4  # conv1 and maxpool
        shapes = []
        for i, (ty, tx) in enumerate(self.strides):
            sy, sx = sy * ty, sx * tx
            if i >= 1:  # layers 2..4 feed the FPN
                shapes.append((int(height) // sy, int(width) // sx))
        return shapes[-self.levels :]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorConfig:
        """Inverse of :meth:`to_dict`; raises ValueError on unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown detector parameter(s): {', '.join(unknown)}")
        return cls(**{k: _tuplify(v) for k, v in d.items()})


def _tuplify(v: Any) -> Any:
    return tuple(_tuplify(x) for x in v) if isinstance(v, list) else v


def grid_anchors(grid: tuple[int, int], stride: tuple[int, int], sizes: Sequence[tuple[float, float]]) -> np.ndarray:
    """Anchors of one level: grid (rows, cols), stride (s_y, s_x), sizes ((h, w), ...) → float32[rows·cols·A, 4]."""
    rows, cols = (int(v) for v in grid)
    base = np.array([[-w / 2, -h / 2, w / 2, h / 2] for h, w in sizes], dtype=np.float32)
    ys = (np.arange(rows, dtype=np.int64) * int(stride[0])).astype(np.float32)
    xs = (np.arange(cols, dtype=np.int64) * int(stride[1])).astype(np.float32)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    shifts = np.stack((xx, yy, xx, yy), axis=-1).reshape(-1, 1, 4)
    return (shifts + base[None]).reshape(-1, 4)


def anchors(config: DetectorConfig, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Every level's anchors for an H×W image → (float32[A_total, 4] C-contiguous, level starts int64[L + 1])."""
    per_level = [
        grid_anchors(shape, (int(height) // shape[0], int(width) // shape[1]), sizes)
        for shape, sizes in zip(config.level_shapes(height, width), config.anchor_sizes)
    ]
    starts = np.cumsum([0] + [len(a) for a in per_level]).astype(np.int64)
    return np.ascontiguousarray(np.concatenate(per_level)), starts
