"""Device versions of :mod:`gixdrt.kernels.reference.layout`: PyTorch ops on device tensors, no host round trip.

Plain PyTorch ops, launched on PyTorch's current stream (the device kernel set runs every stage on one stream,
so ``stream`` is accepted and not needed). They take and write PyTorch tensors (CUDA ones in the engine; CPU
tensors work the same, which is how they are tested without a GPU). Each writes ``out`` and returns it.
"""
from __future__ import annotations

from typing import Any

__all__ = ["box_sums", "frame_constant", "gather_rows", "make_rois", "masked_counts", "pad_images", "threshold"]


def gather_rows(values, index, *, out, stream: Any = None):
    """out[i, k] = values[i, index[i, k]], zeros where index[i, k] < 0 (see the reference)."""
    import torch

    n, k = int(index.shape[0]), int(index.shape[1])
    tail = tuple(values.shape[2:])
    if k == 0:
        return out
    ones = (1,) * len(tail)
    if values.shape[1] == 0:
        out.zero_()
        return out
    idx = index.to(torch.int64).clamp_min(0).reshape(n, k, *ones).expand(n, k, *tail)
    torch.gather(values, 1, idx, out=out)
    out.masked_fill_((index < 0).reshape(n, k, *ones), 0)
    return out


def pad_images(images, *, out, stream: Any = None):
    """out[..., :H, :W] = images, zeros elsewhere (see the reference)."""
    h, w = int(images.shape[-2]), int(images.shape[-1])
    out[..., :h, :w].copy_(images)
    out[..., h:, :].zero_()
    out[..., :h, w:].zero_()
    return out


def masked_counts(codes, *, out, stream: Any = None):
    """out int64[N, 2]: per image the pixels of code 1 and code 2 (see the reference)."""
    flat = codes.reshape(int(codes.shape[0]), -1)
    out[:, 0] = (flat == 1).sum(dim=1)
    out[:, 1] = (flat == 2).sum(dim=1)
    return out


def make_rois(boxes, *, out, stream: Any = None):
    """out float32[N·R, 5]: row i·R + j = (i, boxes[i, j])."""
    import torch

    n, r = int(boxes.shape[0]), int(boxes.shape[1])
    out[:, 0] = torch.arange(n, device=out.device, dtype=out.dtype).repeat_interleave(r)
    out[:, 1:] = boxes.reshape(n * r, 4)
    return out


def box_sums(images, boxes, count, *, out, stream: Any = None):
    """out float64[N, K]: box sums over images[i] for k < count[i], 0 after (summed-area table in float64)."""
    import torch

    n, h, w = (int(s) for s in images.shape)
    k = int(boxes.shape[1])
    if k == 0:
        return out
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

    sums = at(r1, c1) - at(r0, c1) - at(r1, c0) + at(r0, c0)
    valid = torch.arange(k, device=out.device)[None, :] < count.to(torch.int64)[:, None]
    out.copy_(torch.where(valid, sums, 0.0))
    return out


_INT_VIEW = {"uint16": "int16", "uint32": "int32", "uint64": "int64"}


def frame_constant(frames, polar, inside, *, out, stream: Any = None):
    """out bool[N]: every raw frame of group i constant, or polar image i constant over ``inside``."""
    import torch

    n = int(frames.shape[0])
    rows = frames.reshape(n, -1, int(frames.shape[-2]) * int(frames.shape[-1]))
    name = str(rows.dtype).removeprefix("torch.")
    if name in _INT_VIEW:  # min/max need not exist for unsigned types; equality of bit patterns is the same
        rows = rows.view(getattr(torch, _INT_VIEW[name]))
    if rows.shape[2] == 0:
        raw = torch.zeros(n, dtype=torch.bool, device=out.device)
    else:
        raw = (rows.amin(2) == rows.amax(2)).all(1)
    # Python scalars, not tensors made from them: building a CUDA tensor from a host value would synchronise
    lo = torch.where(inside, polar, float("inf")).amin((1, 2))
    hi = torch.where(inside, polar, float("-inf")).amax((1, 2))
    out.copy_(raw | (inside.any() & (lo == hi)))
    return out


def threshold(x, *, value: float, out, stream: Any = None):
    """out = x > value."""
    import torch

    torch.gt(x, value, out=out)
    return out
