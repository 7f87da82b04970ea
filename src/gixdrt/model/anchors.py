"""Fixed anchors of the published detector, computed per image shape and cached.

Per level l with stride (s_y, s_x) = image size // feature size and sizes ((h, w), ...): anchor a at
feature cell (i, j) is [j·s_x − w/2, i·s_y − h/2, j·s_x + w/2, i·s_y + h/2] (centres on the cell corners,
no half-stride offset). Order: level, then row i, then column j, then anchor a; this is the order of the
RPN outputs flattened by :func:`gixdrt.model.detector.flatten_rpn`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["PUBLISHED_ANCHOR_SIZES", "AnchorGenerator", "grid_anchors"]

#: (h, w) in image pixels per FPN level P2, P3, P4 (strides (8, 4), (16, 4), (32, 4) for the published model)
PUBLISHED_ANCHOR_SIZES: tuple[tuple[tuple[float, float], ...], ...] = (
    ((50.0, 10.0), (100.0, 10.0)),
    ((200.0, 10.0), (300.0, 10.0)),
    ((400.0, 10.0), (500.0, 10.0)),
)


def grid_anchors(
    grid: tuple[int, int], stride: tuple[int, int], sizes: Sequence[tuple[float, float]], *, device=None, dtype=torch.float32
) -> Tensor:
    """Anchors of one level: grid (rows, cols), stride (s_y, s_x), sizes ((h, w), ...) → float[rows·cols·A, 4]."""
    rows, cols = grid
    base = torch.tensor([[-w / 2, -h / 2, w / 2, h / 2] for h, w in sizes], dtype=dtype, device=device)
    sy = torch.arange(rows, device=device, dtype=torch.int64) * stride[0]
    sx = torch.arange(cols, device=device, dtype=torch.int64) * stride[1]
    yy, xx = torch.meshgrid(sy, sx, indexing="ij")
    shifts = torch.stack((xx, yy, xx, yy), dim=-1).reshape(-1, 1, 4).to(dtype)
    return (shifts + base[None]).reshape(-1, 4)


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
        key = (tuple(image_shape), tuple(map(tuple, feature_shapes)), str(torch.device(device or "cpu")), dtype)
        hit = self._cache.get(key)
        if hit is None:
            height, width = image_shape
            hit = tuple(
                grid_anchors((h, w), (height // h, width // w), sizes, device=device, dtype=dtype)
                for (h, w), sizes in zip(feature_shapes, self.sizes)
            )
            self._cache[key] = hit
        return hit
