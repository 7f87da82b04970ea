"""The detector's fixed anchors as PyTorch tensors, cached per image shape.

The anchors themselves are defined once, in NumPy, by :func:`gixdrt.model.config.grid_anchors` (the runtime
without PyTorch uses that function directly); this module only wraps them as tensors for the PyTorch network
and training.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .config import PUBLISHED_ANCHOR_SIZES, grid_anchors

__all__ = ["PUBLISHED_ANCHOR_SIZES", "AnchorGenerator"]


class AnchorGenerator:
    """Anchors for every FPN level, cached per (image shape, feature shapes, device, dtype).

    Not an ``nn.Module`` on purpose: it holds no weights and nothing of it is saved; the cache is the only
    state, filled on first use of a shape (a plain dict, never a buffer).
    """

    def __init__(self, sizes: Sequence[Sequence[tuple[float, float]]] = PUBLISHED_ANCHOR_SIZES):
        self.sizes = tuple(tuple((float(h), float(w)) for h, w in level) for level in sizes)
        self._cache: dict[tuple, tuple[Tensor, ...]] = {}

    @property
    def num_anchors(self) -> tuple[int, ...]:
        """Anchors per location, per level."""
        return tuple(len(level) for level in self.sizes)

    def __call__(
        self, image_shape: tuple[int, int], feature_shapes: Sequence[tuple[int, int]], device=None, dtype=torch.float32
    ) -> tuple[Tensor, ...]:
        """image_shape (H, W), feature_shapes [(h_l, w_l)] → per level float[h_l·w_l·A_l, 4] in image pixels."""
        if len(feature_shapes) != len(self.sizes):
            raise ValueError(f"{len(feature_shapes)} feature levels, but anchors are defined for {len(self.sizes)}")
        shapes = tuple((int(h), int(w)) for h, w in feature_shapes)
        key = (tuple(image_shape), shapes, str(torch.device(device or "cpu")), dtype)
        hit = self._cache.get(key)
        if hit is None:
            height, width = image_shape
            hit = tuple(
                torch.from_numpy(grid_anchors((h, w), (height // h, width // w), sizes)).to(device=device, dtype=dtype)
                for (h, w), sizes in zip(shapes, self.sizes)
            )
            self._cache[key] = hit
        return hit
