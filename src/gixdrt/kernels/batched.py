"""Preprocessing over a batch, as plans run it: N raw frame groups → N polar images → N detector inputs.

``polar_remap_batch`` and ``contrast_batch`` call the per-image kernel of the same implementation
(``reference``, ``cpu`` or ``cuda``) for each image of the batch, writing straight into the plan's buffers;
they are registered in :mod:`gixdrt.kernels` like every other op. ``polar_remap_batch`` takes the per-image
remap's mask, saturation value and ``masked`` codes (one [N, n_phi, n_q] buffer for the batch).
"""
from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from ..published import CONTRAST_COEF, CONTRAST_LIMIT
from ._checks import warn_extreme

__all__ = ["contrast_batch", "minmax", "polar_remap_batch"]


def _per_image(op: str, impl: str):
    from .registry import resolve

    return resolve(op, impl)[1]


def _polar(impl: str, frames, pmap, *, mask=None, saturation=None, out, masked=None, stream: Any = None):
    """frames [N, G, H, W] (G frames summed per image) → out float32[N, n_phi, n_q], and the codes of each polar
    pixel into masked uint8[N, n_phi, n_q] when given; one mask and saturation value for every image. The host
    implementations raise at most one extreme-value DataWarning for the batch (the count summed over the images).
    ``out`` may also be the pair (out, masked), as a plan's stage with two outputs passes them."""
    if isinstance(out, tuple):
        out, masked = out
    n = int(frames.shape[0])
    for name, buf in (("out", out), ("masked", masked)):
        if buf is not None and (len(buf.shape) != 3 or int(buf.shape[0]) != n):
            raise ValueError(f"polar_remap_batch: {name} must be [N, n_phi, n_q] with N = {n}, got {tuple(buf.shape)}")
    if impl == "cuda":
        fn = _per_image("polar_remap", impl)
        for i in range(n):
            fn(frames[i], pmap, mask=mask, saturation=saturation, out=out[i],
               masked=None if masked is None else masked[i], stream=stream)
        return out
    _per_image("polar_remap", impl)  # the availability check of the implementation
    remap = importlib.import_module(f"gixdrt.kernels.{impl}.polar")._remap
    n_extreme = 0
    for i in range(n):
        n_extreme += remap(frames[i], pmap, mask, saturation, out[i], None if masked is None else masked[i])[1]
    warn_extreme(n_extreme, stacklevel=4)
    return out


def minmax(img: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """out = (img − min) / (max − min) over the finite pixels (non-finite pixels count as the minimum); zeros for
    a constant image: the chain when the config's ``contrast.disable`` is set. float32[H, W] → float32[H, W]."""
    img = np.asarray(img, np.float32)
    if out is None:
        out = np.empty(img.shape, np.float32)
    finite = np.isfinite(img)
    if not finite.any():
        out[...] = 0
        return out
    lo, hi = img[finite].min(), img[finite].max()
    if hi <= lo:
        out[...] = 0
        return out
    out[...] = (np.where(finite, img, lo) - lo) / (hi - lo)
    return out


def _minmax_device(img, out) -> None:
    import torch

    finite = torch.isfinite(img)
    lo = torch.where(finite, img, float("inf")).amin()
    hi = torch.where(finite, img, float("-inf")).amax()
    span = hi - lo
    res = (torch.where(finite, img, lo) - lo) / torch.where(span > 0, span, 1.0)
    out.copy_(torch.where(hi > lo, res, 0.0))


def _contrast(impl: str, polar, skip=None, *, coef: float, clip_limit: float, log: bool, disable: bool = False,
              out, stream: Any = None):
    """polar float32[N, H, W] → out float32[N, H, W] or [N, 1, H, W] in [0, 1]: the published contrast chain per
    image (min–max only with ``disable``). skip: optional bool[N]: those images give zeros (constant frames) and
    are not processed on the host (no DataWarning for them); the device computes all and zeroes them after,
    without reading the flags back."""
    n = int(polar.shape[0])
    view = out.reshape(n, *polar.shape[1:])
    if impl == "cuda":
        fn = _per_image("contrast", impl)
        for i in range(n):
            if disable:
                _minmax_device(polar[i], view[i])
            else:
                fn(polar[i], coef=coef, clip_limit=clip_limit, log=log, out=view[i], stream=stream)
        if skip is not None:
            view.masked_fill_(skip.reshape(n, 1, 1), 0.0)
        return out
    fn = _per_image("contrast", impl)
    for i in range(n):
        if skip is not None and skip[i]:
            view[i] = 0
        elif disable:
            minmax(polar[i], view[i])
        else:
            fn(polar[i], coef=coef, clip_limit=clip_limit, log=log, out=view[i])
    return out


def polar_remap_batch_reference(frames, pmap, *, mask=None, saturation=None, out, masked=None):
    return _polar("reference", frames, pmap, mask=mask, saturation=saturation, out=out, masked=masked)


def polar_remap_batch_cpu(frames, pmap, *, mask=None, saturation=None, out, masked=None):
    return _polar("cpu", frames, pmap, mask=mask, saturation=saturation, out=out, masked=masked)


def polar_remap_batch_cuda(frames, pmap, *, mask=None, saturation=None, out, masked=None, stream=None):
    return _polar("cuda", frames, pmap, mask=mask, saturation=saturation, out=out, masked=masked, stream=stream)


def _address(array) -> tuple:
    """(data address, shape) of a host or device array (NumPy, PyTorch, CUDA array interface)."""
    for attr in ("__array_interface__", "__cuda_array_interface__"):
        iface = getattr(array, attr, None)
        if iface is not None:
            return iface["data"][0], tuple(iface["shape"])
    return array.data_ptr(), tuple(array.shape)


def _fill(impl: str, polar, masked, *, out, stream: Any = None):
    """A plan's stage: fill the holes of polar [N, H, W] in place (``out`` is ``polar`` itself)."""
    if out is not polar and _address(out) != _address(polar):
        raise ValueError("fill_holes_batch works in place: out must be the polar buffer itself")
    fn = _per_image("fill_holes", impl)
    return fn(polar, masked, stream=stream) if impl == "cuda" else fn(polar, masked)


def fill_holes_batch_reference(polar, masked, *, out):
    return _fill("reference", polar, masked, out=out)


def fill_holes_batch_cpu(polar, masked, *, out):
    return _fill("cpu", polar, masked, out=out)


def fill_holes_batch_cuda(polar, masked, *, out, stream=None):
    return _fill("cuda", polar, masked, out=out, stream=stream)


def contrast_batch_reference(polar, skip=None, **kw):
    return _contrast("reference", polar, skip, **kw)


def contrast_batch_cpu(polar, skip=None, **kw):
    return _contrast("cpu", polar, skip, **kw)


def contrast_batch_cuda(polar, skip=None, **kw):
    return _contrast("cuda", polar, skip, **kw)


def polar_remap_batch(frames, pmap, *, mask=None, saturation=None, out, masked=None, impl: str | None = None,
                      stream: Any = None):
    """Public entry point: frames [N, G, H, W] → out float32[N, n_phi, n_q], image i = polar_remap(frames[i]).

    mask (bool/uint8 [H, W], nonzero = masked) and saturation apply to every image; masked: None or
    uint8[N, n_phi, n_q] receiving each image's codes (0, 1, 2). Semantics: :func:`gixdrt.kernels.polar_remap`.
    """
    from .registry import resolve

    name, fn = resolve("polar_remap_batch", impl, frames)
    kw = dict(mask=mask, saturation=saturation, out=out, masked=masked)
    if name == "cuda":
        kw["stream"] = stream
    return fn(frames, pmap, **kw)


def contrast_batch(polar, skip=None, *, coef: float = CONTRAST_COEF, clip_limit: float = CONTRAST_LIMIT, log: bool = True,
                   disable: bool = False, out, impl: str | None = None, stream: Any = None):
    """Public entry point of the batched contrast chain (see :func:`_contrast`)."""
    from .registry import resolve

    name, fn = resolve("contrast_batch", impl, polar)
    kw = dict(coef=coef, clip_limit=clip_limit, log=log, disable=disable, out=out)
    if name == "cuda":
        kw["stream"] = stream
    return fn(polar, skip, **kw)
