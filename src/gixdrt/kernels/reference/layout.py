"""NumPy reference of the small fixed-size ops between a plan's stages: gathers, RoI rows, box sums, frame flags.

They move data between the fixed-size buffers of a plan (:mod:`gixdrt.engine.plan`): every input and output has
a static shape, and variable-length results are a buffer plus a valid count. Cheap next to the graphs, so this
NumPy code is also what the host kernel sets run; :mod:`gixdrt.kernels.cuda.layout` is the device version
(PyTorch ops on device tensors, on the current stream). Each function writes ``out`` and returns it.
"""
from __future__ import annotations

import numpy as np

__all__ = ["box_sums", "frame_constant", "gather_rows", "image_box_sums", "make_rois", "masked_counts", "pad_images", "threshold"]

_BLOCK = 1 << 16  # values per block of the constancy checks: a frame that varies is recognised in its first block


def _check(out, shape, dtype, name):
    if not isinstance(out, np.ndarray) or out.shape != tuple(shape) or out.dtype != np.dtype(dtype):
        got = f"{getattr(out, 'dtype', type(out).__name__)}{list(getattr(out, 'shape', ()))}"
        raise ValueError(f"{name}: out must be {np.dtype(dtype).name}{list(shape)}, got {got}")
    return out


def gather_rows(values: np.ndarray, index: np.ndarray, *, out: np.ndarray) -> np.ndarray:
    """out[i, k] = values[i, index[i, k]] for index ≥ 0, zeros where index[i, k] < 0 (padding).

    values: [N, M, ...]; index: int32[N, K] (the kept indices of :func:`gixdrt.kernels.nms_fixed`); out: [N, K, ...]
    of values' dtype.
    """
    n, k = index.shape
    _check(out, (n, k, *values.shape[2:]), values.dtype, "gather_rows")
    idx = np.asarray(index, np.int64)
    taken = np.take_along_axis(values, np.maximum(idx, 0).reshape(n, k, *([1] * (values.ndim - 2))), axis=1)
    out[...] = np.where((idx < 0).reshape(n, k, *([1] * (values.ndim - 2))), 0, taken)
    return out


def pad_images(images: np.ndarray, *, out: np.ndarray) -> np.ndarray:
    """out[..., :H, :W] = images, zeros in the extra rows and columns: images [N, C, H, W] → out [N, C, H', W']
    with H' ≥ H, W' ≥ W (an image whose size is not a multiple of the network's strides, padded for it)."""
    h, w = images.shape[-2:]
    if out.shape[:-2] != images.shape[:-2] or out.shape[-2] < h or out.shape[-1] < w or out.dtype != images.dtype:
        raise ValueError(f"pad_images: out must be {images.dtype.name}[..., ≥{h}, ≥{w}] like images "
                         f"{list(images.shape)}, got {out.dtype.name}{list(out.shape)}")
    out[..., :h, :w] = images
    out[..., h:, :] = 0
    out[..., :h, w:] = 0
    return out


def masked_counts(codes: np.ndarray, *, out: np.ndarray) -> np.ndarray:
    """Per image, how many polar pixels left out a masked detector pixel (code 1) and had no valid sample (code 2):
    codes uint8[N, H, W] (:func:`gixdrt.kernels.polar_remap`'s ``masked``) → out int64[N, 2]."""
    n = codes.shape[0]
    _check(out, (n, 2), np.int64, "masked_counts")
    flat = codes.reshape(n, -1)
    out[:, 0] = np.count_nonzero(flat == 1, axis=1)
    out[:, 1] = np.count_nonzero(flat == 2, axis=1)
    return out


def make_rois(boxes: np.ndarray, *, out: np.ndarray) -> np.ndarray:
    """RoI rows for RoIAlign: boxes float32[N, R, 4] → out float32[N·R, 5], row i·R + j = (i, x0, y0, x1, y1)."""
    n, r, _ = boxes.shape
    _check(out, (n * r, 5), np.float32, "make_rois")
    out[:, 0] = np.repeat(np.arange(n, dtype=np.float32), r)
    out[:, 1:] = boxes.reshape(n * r, 4)
    return out


def box_sums(images: np.ndarray, boxes: np.ndarray, count: np.ndarray, *, out: np.ndarray) -> np.ndarray:
    """out[i, k] = the sum of images[i] over the pixels whose centres lie in boxes[i, k], for k < count[i]; 0 after.

    images: float[N, H, W] (non-finite pixels count 0); boxes: float32[N, K, 4] (x0, y0, x1, y1; pixel j's centre
    is at x = j, so pixel (r, c) is inside when x0 ≤ c ≤ x1 and y0 ≤ r ≤ y1); out: float64[N, K]. A summed-area
    table in float64: one pass over the image, O(1) per box.
    """
    n, k = boxes.shape[:2]
    _check(out, (n, k), np.float64, "box_sums")
    out[...] = 0
    for i in range(n):
        c = int(min(max(int(count[i]), 0), k))
        if c:
            out[i, :c] = image_box_sums(images[i], boxes[i, :c])
    return out


def image_box_sums(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """One image: float64[K] sums of ``image`` float[H, W] over the pixels whose centres lie in each box float[K, 4]."""
    img = np.asarray(image, np.float64)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if not len(boxes):
        return np.zeros(0)
    h, w = img.shape
    sat = np.zeros((h + 1, w + 1))
    np.cumsum(np.cumsum(np.nan_to_num(img, nan=0.0, posinf=0.0, neginf=0.0), axis=0), axis=1, out=sat[1:, 1:])
    b = np.asarray(boxes, np.float64)
    c0 = np.clip(np.ceil(b[:, 0]), 0, w).astype(np.int64)
    c1 = np.clip(np.floor(b[:, 2]) + 1, 0, w).astype(np.int64)
    r0 = np.clip(np.ceil(b[:, 1]), 0, h).astype(np.int64)
    r1 = np.clip(np.floor(b[:, 3]) + 1, 0, h).astype(np.int64)
    c1 = np.maximum(c1, c0)
    r1 = np.maximum(r1, r0)
    return sat[r1, c1] - sat[r0, c1] - sat[r1, c0] + sat[r0, c0]


def _all_equal(blocks) -> bool:
    """True when every value of every block equals the first one; stops at the first block that differs."""
    first = None
    for b in blocks:
        if not b.size:
            continue
        lo, hi = b.min(), b.max()
        if first is None:
            first = lo
        if lo != hi or lo != first:
            return False
    return first is not None


def frame_constant(frames: np.ndarray, polar: np.ndarray, inside: np.ndarray, *, out: np.ndarray) -> np.ndarray:
    """out[i] = True when image i carries no information: every raw frame of group i is constant (each on its own),
    or its polar image is constant over the pixels that sample the detector.

    frames: [N, G, H, W] raw frames (G summed into one polar image); polar: float32[N, n_phi, n_q]; inside:
    bool[n_phi, n_q] (:attr:`gixdrt.geometry.PolarMap.inside`); out: bool[N]. Both tests are needed: pixels only
    partly on the detector mix a constant frame's value with the zero border, so the polar image of a constant
    frame is not constant, and a frame that varies only off the polar grid gives a constant polar image. NaN makes
    a frame non-constant.
    """
    n = frames.shape[0]
    _check(out, (n,), np.bool_, "frame_constant")
    rows = max(1, _BLOCK // max(polar.shape[2], 1))
    for i in range(n):
        raw = all(
            _all_equal(f.reshape(-1)[j : j + _BLOCK] for j in range(0, f.size, _BLOCK)) for f in frames[i]
        )
        p = polar[i]
        flat = raw or _all_equal(p[j : j + rows][inside[j : j + rows]] for j in range(0, p.shape[0], rows))
        out[i] = bool(flat)
    return out


def threshold(x: np.ndarray, *, value: float, out: np.ndarray) -> np.ndarray:
    """out = x > value (bool, x's shape): a mask from a probability or score map."""
    _check(out, x.shape, np.bool_, "threshold")
    np.greater(x, value, out=out)
    return out
