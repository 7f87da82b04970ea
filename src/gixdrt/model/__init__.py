"""The GIXD detector's model side: its description (config, anchors, cards; no PyTorch) and the PyTorch network,
its inference graphs, box ops and checkpoints (training, export and the model-side reference).

>>> from gixdrt.model import load_published
>>> model = load_published(assets.default_checkpoint)          # strict; CheckpointError on any mismatch
>>> dets = model(torch.from_numpy(contrast)[None, None])       # [{"boxes": float32[K, 4], "scores": float32[K]}]
>>> trace = model.trace(images)                                 # stage outputs + seconds per stage

Attributes are imported lazily: :mod:`gixdrt.model.config` and :mod:`gixdrt.model.card` need no PyTorch, and
``import gixdrt.model`` imports none.
"""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "GixdDetector": "network",
    "DetectorConfig": "config",
    "Dense": "network",
    "Proposals": "network",
    "Trace": "network",
    "STAGES": "config",
    "AnchorGenerator": "anchors",
    "PUBLISHED_ANCHOR_SIZES": "config",
    "load_published": "checkpoint",
    "read_published_state": "checkpoint",
    "check_state_dict": "checkpoint",
    "save_model": "checkpoint",
    "load_model": "checkpoint",
    "read_card": "card",
    "convert_published": "checkpoint",
    "decode_boxes": "ops",
    "encode_boxes": "ops",
    "clip_boxes": "ops",
    "box_iou": "ops",
    "nms": "ops",
    "batched_nms": "ops",
    "roi_align": "ops",
    "load": "zoo",
}

__all__ = [
    "PUBLISHED_ANCHOR_SIZES",
    "STAGES",
    "AnchorGenerator",
    "Dense",
    "DetectorConfig",
    "GixdDetector",
    "Proposals",
    "Trace",
    "batched_nms",
    "box_iou",
    "check_state_dict",
    "clip_boxes",
    "convert_published",
    "decode_boxes",
    "encode_boxes",
    "load",
    "load_model",
    "load_published",
    "nms",
    "read_card",
    "read_published_state",
    "roi_align",
    "save_model",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals(), __all__)
