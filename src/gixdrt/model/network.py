"""The published GIXD peak detector (a modified two-stage Faster R-CNN) as PyTorch modules, eval mode.

One frame's way: contrast image float32[N, 1, H, W] in [0, 1] → normalise ((x − 0.3)/0.3) → ResNet-18 body
with (2, 1) strides in layers 2–4 → FPN (P2, P3, P4, 64 channels) → RPN head (2 anchors per cell and level)
→ proposals (top-1000 per level, NMS 0.9 per level, 1000 best) → RoIAlign 16×16 on P2 → box head
(fc6, fc7, LeakyReLU 0.01) → score 2·sigmoid − 1, box refinement, clip, threshold, NMS → detections.

Boxes are (x0, y0, x1, y1) = (|Q|-left, φ-top, |Q|-right, φ-bottom) in polar-image pixels. The module
names match the published state dict (``backbone.backbone.*``, ``backbone.fpn.*``, ``rpn_head.*``, ...).
H must be a multiple of 32 and W a multiple of 4 (the strides of P4 are (32, 4)).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ops
from .anchors import AnchorGenerator
from .config import STAGES, DetectorConfig

__all__ = [
    "STAGES",
    "Dense",
    "DetectorConfig",
    "GixdDetector",
    "Proposals",
    "Trace",
    "flatten_levels",
    "flatten_rpn",
]

# -------------------------------------------------------------------------------------------------
# Modules (names follow the published state dict)
# -------------------------------------------------------------------------------------------------
class Normalize(nn.Module):
    """(x − img_mean) / img_std with scalar buffers (0.3 and 0.3 in the published model)."""

    def __init__(self, mean: float = 0.3, std: float = 0.3):
        super().__init__()
        self.register_buffer("img_mean", torch.tensor(float(mean)))
        self.register_buffer("img_std", torch.tensor(float(std)))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.img_mean) / self.img_std


class BasicBlock(nn.Module):
    """ResNet basic block: conv3×3(stride)–BN–ReLU–conv3×3–BN, plus identity or 1×1 conv–BN, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: tuple[int, int]):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if tuple(stride) != (1, 1) or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNetBody(nn.Module):
    """ResNet-18 body with 1 input channel; returns the outputs of layers 2, 3, 4 (C2, C3, C4)."""

    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(cfg.in_channels, cfg.stem_channels, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(cfg.stem_channels)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = cfg.stem_channels
        for i, (width, stride) in enumerate(zip(cfg.widths, cfg.strides), start=1):
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(cin, width, stride), BasicBlock(width, width, (1, 1))))
            cin = width

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return [c2, c3, c4]


class FPN(nn.Module):
    """Laterals (1×1 → 64, bias), top-down nearest-neighbour resize and sum, 3×3 output convs (bias)."""

    def __init__(self, in_channels: Sequence[int], channels: int):
        super().__init__()
        self.inner_blocks = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.layer_blocks = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        last = self.inner_blocks[-1](xs[-1])
        results = [self.layer_blocks[-1](last)]
        for i in range(len(xs) - 2, -1, -1):
            lateral = self.inner_blocks[i](xs[i])
            last = lateral + F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
            results.insert(0, self.layer_blocks[i](last))
        return results


class Backbone(nn.Module):
    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.backbone = ResNetBody(cfg)
        self.fpn = FPN(cfg.widths[1:], cfg.fpn_channels)

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.fpn(self.backbone(x))


class RPNHead(nn.Module):
    """Shared across levels: 3×3 conv + ReLU, then 1×1 to A logits and 1×1 to 4A deltas."""

    def __init__(self, channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(channels, num_anchors * 4, 1)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        for f in features:
            t = F.relu(self.conv(f))
            logits.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return logits, deltas


class RoIScales(nn.Module):
    """Holds the published ``roi_align.scales`` buffer: per level (y, x) image px → feature cells."""

    def __init__(self, cfg: DetectorConfig, levels: int):
        super().__init__()
        ys = [cfg.roi_scale[0] / 2**i for i in range(levels)]
        self.register_buffer("scales", torch.tensor([[y, cfg.roi_scale[1]] for y in ys], dtype=torch.float32))


class BoxHead(nn.Module):
    def __init__(self, in_features: int, size: int, slope: float):
        super().__init__()
        self.fc6 = nn.Linear(in_features, size)
        self.fc7 = nn.Linear(size, size)
        self.slope = slope

    def forward(self, x: Tensor) -> Tensor:
        x = F.leaky_relu(self.fc6(x.flatten(1)), self.slope)
        return F.leaky_relu(self.fc7(x), self.slope)


class BoxPredictor(nn.Module):
    def __init__(self, size: int):
        super().__init__()
        self.cls_score = nn.Linear(size, 1)
        self.bbox_pred = nn.Linear(size, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x)[:, 0], self.bbox_pred(x)


# -------------------------------------------------------------------------------------------------
# Stage outputs
# -------------------------------------------------------------------------------------------------
@dataclass
class Dense:
    """Output of the dense stage for a batch.

    features: [P2, P3, P4] float32[N, 64, h_l, w_l]; logits: per level float32[N, A, h_l, w_l];
    deltas: per level float32[N, 4A, h_l, w_l] (channel a·4 + k); image_shape: (H, W).
    """

    features: list[Tensor]
    logits: list[Tensor]
    deltas: list[Tensor]
    image_shape: tuple[int, int]


@dataclass
class Proposals:
    """Per image: boxes float32[P_i, 4] (image px, clipped) and scores float32[P_i] (sigmoid), best first."""

    boxes: list[Tensor]
    scores: list[Tensor]
    image_shape: tuple[int, int]


@dataclass
class Trace:
    """Everything :meth:`GixdDetector.trace` saw: the stage outputs and wall-clock seconds per stage."""

    dense: Dense
    proposals: Proposals
    roi_features: Tensor
    logits: Tensor
    deltas: Tensor
    detections: list[dict[str, Tensor]]
    timings: dict[str, float] = field(default_factory=dict)


def flatten_rpn(logits: Tensor, deltas: Tensor) -> tuple[Tensor, Tensor]:
    """One level: logits [N, A, h, w], deltas [N, 4A, h, w] → [N, h·w·A], [N, h·w·A, 4] in (row, col, anchor) order.

    Written with flatten/unflatten (no sizes read from the tensors), so that an exported graph keeps its batch
    and image size dynamic; works on channels-last tensors too.
    """
    a = logits.shape[1]
    flat_logits = logits.permute(0, 2, 3, 1).flatten(1)
    flat_deltas = deltas.unflatten(1, (a, 4)).permute(0, 3, 4, 1, 2).flatten(1, 3)
    return flat_logits, flat_deltas


def flatten_levels(logits: Sequence[Tensor], deltas: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Every level's RPN outputs → (logits [N, A_total], deltas [N, A_total, 4]), level by level: the order of
    :func:`gixdrt.model.config.anchors`. The one place the RPN outputs are flattened."""
    flat = [flatten_rpn(lg, dl) for lg, dl in zip(logits, deltas)]
    return torch.cat([f[0] for f in flat], 1), torch.cat([f[1] for f in flat], 1)


# -------------------------------------------------------------------------------------------------
# The detector
# -------------------------------------------------------------------------------------------------
class GixdDetector(nn.Module):
    """The published two-stage detector. Always built in eval mode (BN uses its running statistics).

    >>> model = load_published(path)                     # gixdrt.model.load_published
    >>> dets = model(images)                             # images float32[N, 1, H, W] in [0, 1]
    >>> dets[0]["boxes"], dets[0]["scores"]              # float32[K, 4] (x0, y0, x1, y1) px, float32[K]

    Thresholds: attributes ``score_threshold`` (≥, on 2·sigmoid − 1), ``nms_iou`` (final NMS, suppress when
    IoU > it) and ``max_detections``, each overridable per call. The stages can be run one by one
    (:meth:`dense`, :meth:`proposals`, :meth:`roi_features`, :meth:`head`, :meth:`postprocess`) or timed
    together (:meth:`trace`); :meth:`forward` chains them.
    """

    def __init__(self, config: DetectorConfig | None = None):
        super().__init__()
        cfg = config or DetectorConfig()
        self.config = cfg
        levels = len(cfg.anchor_sizes)
        if levels != len(cfg.widths) - 1:
            raise ValueError(f"{levels} anchor levels for {len(cfg.widths) - 1} FPN levels")
        num_anchors = {len(s) for s in cfg.anchor_sizes}
        if len(num_anchors) != 1:
            raise ValueError("the shared RPN head needs the same number of anchors on every level")
        self.transform_img = Normalize()
        self.backbone = Backbone(cfg)
        self.rpn_head = RPNHead(cfg.fpn_channels, num_anchors.pop())
        self.roi_align = RoIScales(cfg, levels)
        self.box_head = BoxHead(cfg.fpn_channels * cfg.roi_output_size**2, cfg.representation_size, cfg.leaky_slope)
        self.box_predictor = BoxPredictor(cfg.representation_size)
        self.anchors = AnchorGenerator(cfg.anchor_sizes)
        self.score_threshold = cfg.score_threshold
        self.nms_iou = cfg.nms_iou
        self.max_detections = cfg.max_detections
        self.card: dict[str, Any] | None = None  # the model card, when loaded by gixdrt.model.load_model
        self.eval()

    # --- stages ---------------------------------------------------------------------------------
    def check_input(self, images: Tensor) -> tuple[int, int]:
        """Validate float[N, C_in, H, W] with H, W multiples of the strides; return (H, W)."""
        cfg = self.config
        if images.ndim != 4 or images.shape[1] != cfg.in_channels:
            raise ValueError(f"expected images [N, {cfg.in_channels}, H, W], got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h == 0 or w == 0 or h % cfg.height_multiple or w % cfg.width_multiple:
            raise ValueError(
                f"image size {h}×{w}: H must be a positive multiple of {cfg.height_multiple} and W a positive multiple of {cfg.width_multiple}"
            )
        return int(h), int(w)

    def dense(self, images: Tensor) -> Dense:
        """images float32[N, 1, H, W] in [0, 1] → backbone, FPN and RPN head outputs (:class:`Dense`)."""
        shape = self.check_input(images)
        features = self.backbone(self.transform_img(images))
        logits, deltas = self.rpn_head(features)
        return Dense(features, logits, deltas, shape)

    def proposals(self, dense: Dense) -> Proposals:
        """Decode, select and suppress the RPN outputs → up to ``rpn_post_nms_top_n`` boxes per image."""
        cfg = self.config
        height, width = dense.image_shape
        anchors = self.anchors(dense.image_shape, [f.shape[-2:] for f in dense.features], dense.features[0].device)
        n = dense.features[0].shape[0]
        per_level = [flatten_rpn(lg.float(), dl.float()) for lg, dl in zip(dense.logits, dense.deltas)]
        boxes_out, scores_out = [], []
        for i in range(n):
            boxes, scores, levels = [], [], []
            for lvl, ((logits, deltas), anc) in enumerate(zip(per_level, anchors)):
                top = torch.topk(logits[i], min(cfg.rpn_pre_nms_top_n, logits.shape[1]), sorted=True).indices
                b = ops.clip_boxes(ops.decode_boxes(deltas[i, top], anc[top], cfg.bbox_clip), height, width)
                boxes.append(b)
                scores.append(torch.sigmoid(logits[i, top]))
                levels.append(torch.full_like(top, lvl))
            b, s, lv = torch.cat(boxes), torch.cat(scores), torch.cat(levels)
            keep = ops.small_boxes_mask(b, cfg.rpn_min_size)
            b, s, lv = b[keep], s[keep], lv[keep]
            keep = ops.batched_nms(b, s, lv, cfg.rpn_nms_iou)[: cfg.rpn_post_nms_top_n]
            boxes_out.append(b[keep])
            scores_out.append(s[keep])
        return Proposals(boxes_out, scores_out, dense.image_shape)

    def roi_features(self, features: Tensor | Dense, proposals: Proposals) -> Tensor:
        """RoIAlign of all proposals on P2 → float32[ΣP_i, 64, 16, 16] (images concatenated in order)."""
        p2 = features.features[0] if isinstance(features, Dense) else features
        cfg = self.config
        sy, sx = (float(v) for v in self.roi_align.scales[0])
        rois = ops.rois_from_list(proposals.boxes).to(p2.device)
        return ops.roi_align(p2, rois, cfg.roi_output_size, (sy, sx), cfg.roi_sampling_ratio, cfg.roi_aligned)

    def head(self, roi_features: Tensor) -> tuple[Tensor, Tensor]:
        """float32[K, 64, 16, 16] → (logits float32[K], deltas float32[K, 4] relative to the proposals)."""
        return self.box_predictor(self.box_head(roi_features))

    def postprocess(
        self,
        logits: Tensor,
        deltas: Tensor,
        proposals: Proposals,
        *,
        score_threshold: float | None = None,
        nms_iou: float | None = None,
        max_detections: int | None = None,
    ) -> list[dict[str, Tensor]]:
        """Score 2·sigmoid − 1, decode, clip, keep score ≥ threshold and sides ≥ min_size, NMS, cap, per image.

        → per image {"boxes": float32[K, 4] (x0, y0, x1, y1) px, "scores": float32[K]}, by decreasing score.
        """
        cfg = self.config
        thr = self.score_threshold if score_threshold is None else score_threshold
        iou = self.nms_iou if nms_iou is None else nms_iou
        cap = self.max_detections if max_detections is None else max_detections
        height, width = proposals.image_shape
        out = []
        start = 0
        for props in proposals.boxes:
            stop = start + props.shape[0]
            scores = 2 * torch.sigmoid(logits[start:stop].float()) - 1
            boxes = ops.clip_boxes(ops.decode_boxes(deltas[start:stop].float(), props, cfg.bbox_clip), height, width)
            keep = (scores >= thr) & ops.small_boxes_mask(boxes, cfg.min_size)
            boxes, scores = boxes[keep], scores[keep]
            keep = ops.nms(boxes, scores, iou)[: max(int(cap), 0)]
            out.append({"boxes": boxes[keep], "scores": scores[keep]})
            start = stop
        return out

    # --- whole ----------------------------------------------------------------------------------
    def forward(
        self,
        images: Tensor,
        *,
        score_threshold: float | None = None,
        nms_iou: float | None = None,
        max_detections: int | None = None,
    ) -> list[dict[str, Tensor]]:
        """images float32[N, 1, H, W] in [0, 1] → per image {"boxes": float32[K, 4], "scores": float32[K]}."""
        return self.trace(
            images, score_threshold=score_threshold, nms_iou=nms_iou, max_detections=max_detections, timed=False
        ).detections

    def trace(self, images: Tensor, *, timed: bool = True, **thresholds: Any) -> Trace:
        """Run all stages under ``torch.no_grad`` and keep their outputs; with ``timed``, seconds per stage.

        On a GPU each stage boundary synchronises the device, so timings are per stage (and slightly slower
        in total than :meth:`forward`).
        """
        sync = torch.cuda.synchronize if (timed and images.is_cuda) else (lambda: None)
        timings: dict[str, float] = {}
        clock = time.perf_counter

        def tick(name: str, t0: float) -> float:
            if timed:
                sync()
                t1 = clock()
                timings[name] = t1 - t0
                return t1
            return t0

        with torch.no_grad():
            t = clock()
            dense = self.dense(images)
            t = tick("dense", t)
            props = self.proposals(dense)
            t = tick("proposals", t)
            feats = self.roi_features(dense, props)
            t = tick("roi_align", t)
            logits, deltas = self.head(feats)
            t = tick("head", t)
            dets = self.postprocess(logits, deltas, props, **thresholds)
            tick("postprocess", t)
        return Trace(dense, props, feats, logits, deltas, dets, timings)

    def num_parameters(self) -> int:
        """Number of trainable parameters (5,918,959 for the published architecture)."""
        return sum(p.numel() for p in self.parameters())
