"""NumPy reference (the specification) of the powder U-Net plan's kernels.

- :func:`powder_normalize`: raw frames → the network's input channel 0 (a robust per-frame scaling in log space);
- :func:`ring_normalize`: raw frames → input channel 1 of two-channel models: each pixel against its powder ring
  (the robust z-score of the classical mask, compressed by asinh);
- :func:`extract_tiles` / :func:`stitch_logits`: cut a padded frame into overlapping tiles for the network and put
  the spot log-odds of the tiles' cores back together (only where a frame is too large to run at once);
- :func:`spot_mask`: P(spot) > t, detector-masked pixels excluded;
- :func:`remove_small_components`: drop connected components of a mask smaller than ``min_size`` pixels.

:mod:`gixdrt.kernels.cpu.powder` (Numba) and :mod:`gixdrt.kernels.cuda.powder` (Numba CUDA / PyTorch) give the same
results. Each function writes ``out`` and returns it.

**Normalisation** (per frame n, over its *valid* pixels: finite and detector-mask value 0):

1. ``x = float32(log1p(max(v, 0)))`` with log1p evaluated in float64;
2. histogram of the bins ``q = min(floor(float64(x)·R), NB − 1)`` (R = ``bins_per_unit``, NB = R·``max_log``);
3. ``m`` = the smallest bin whose cumulative count exceeds ``n_valid // 2`` (the upper median's bin); ``d`` = the
   smallest integer ≥ 0 such that the bins m − d … m + d hold more than ``n_valid // 2`` pixels (the MAD in bins);
4. ``centre = (m + 0.5)/R``, ``scale = 1.4826·max(d/R, min_mad)`` (log units);
5. ``out = float32(asinh((float64(x) − centre)/scale))`` for valid pixels; 0 for invalid ones, for the padding
   rows and columns beyond the frame, and for every pixel of a frame without valid pixels.

Why this scaling: counts span several decades (background of a few photons to saturated spots), and the absolute
level changes with flux, exposure, gain and offset. The log makes the frame's structure independent of the overall
scale; the median and MAD of the whole frame (the background, as most pixels are) centre it and set its unit to the
background's spread, so the network sees the same numbers at any flux; asinh keeps noise-level deviations linear and
compresses the bright rings and saturated spots logarithmically, so no value dominates the first convolution. Two
passes over the frame, a histogram and one scan of it per frame: cheap on every device (no sort, no per-pixel
neighbourhood).

**Ring normalisation** (two-channel models; per frame n and ring r of a ring index — the pixels of each ring of 2θ,
≈ 2 px wide, with the detector mask already excluded: :class:`gixdrt.powder.classical.RingIndex`): over the ring's
pixels with a finite value, in float64, ``med`` = median (mean of the two middle values for an even count),
``mad`` = median of ``|v − med|``, ``s = max(1.4826·mad, min_scale)``; ``out[n, channel] = float32(asinh((v − med)/s))``
for those pixels; 0 for every other pixel (no ring, detector-masked, not finite, rings with fewer than
``min_pixels`` finite pixels, padding). Why: a spot is a pixel far above its own ring. On frames crowded with bright,
narrow rings the whole-frame scaling is set by the rings, not by the noise, and a strong spot on a bright ring is a
small step in channel 0; against its ring's median and spread it stands out as it does for the classical mask
(which flags |z| > 3). Channel 0 keeps what the ring statistics miss (texture along a ring, the frame's context).
``min_scale`` (frame units, default 1: one count) keeps rings of nearly constant value (more than half of the
pixels equal, MAD 0) from turning single counts into huge values.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "BINS_PER_UNIT",
    "MAX_LOG",
    "MIN_MAD",
    "extract_tiles",
    "hist_center_scale",
    "powder_normalize",
    "remove_small_components",
    "ring_normalize",
    "spot_mask",
    "stitch_logits",
]

BINS_PER_UNIT = 1024
MAX_LOG = 24  # log1p values ≥ 24 (counts ≥ 2.6e10) share the last bin
MIN_MAD = 0.01  # the scale's floor (log units): 1 % relative spread
MAD_SCALE = 1.4826
RING_MIN_PIXELS = 10  # rings with fewer finite pixels get 0 in the ring channel
RING_MIN_SCALE = 1.0  # floor of the ring channel's scale (frame units)


def check_normalize(images, mask, out, bins_per_unit: int, max_log: int, name: str = "powder_normalize"):
    """Shapes and parameters of :func:`powder_normalize` (shared by the implementations) → (N, H, W, Hp, Wp)."""
    if len(images.shape) != 3:
        raise ValueError(f"{name}: images must be [N, H, W], got shape {tuple(images.shape)}")
    n, h, w = (int(s) for s in images.shape)
    if mask is not None and tuple(mask.shape) != (h, w):
        raise ValueError(f"{name}: mask must be [{h}, {w}] like the frames, got {tuple(mask.shape)}")
    if len(out.shape) != 4 or int(out.shape[0]) != n or int(out.shape[1]) < 1 or int(out.shape[2]) < h \
            or int(out.shape[3]) < w:
        raise ValueError(f"{name}: out must be float32[{n}, C ≥ 1, ≥{h}, ≥{w}], got {tuple(out.shape)}")
    if str(out.dtype).removeprefix("torch.") != "float32":
        raise ValueError(f"{name}: out must be float32, got {out.dtype}")
    if int(bins_per_unit) < 1 or int(max_log) < 1:
        raise ValueError(f"{name}: bins_per_unit and max_log must be ≥ 1")
    return n, h, w, int(out.shape[2]), int(out.shape[3])


def hist_center_scale(hist: np.ndarray, bins_per_unit: int, min_mad: float) -> tuple[float, float, bool]:
    """Steps 3–4 of the specification on one frame's histogram → (centre, scale, any valid pixel)."""
    total = int(hist.sum())
    if total == 0:
        return 0.0, 1.0, False
    half = total // 2
    m = int(np.searchsorted(np.cumsum(hist), half, side="right"))
    nb = hist.size
    acc = int(hist[m])
    d = 0
    while acc <= half:
        d += 1
        if m - d >= 0:
            acc += int(hist[m - d])
        if m + d < nb:
            acc += int(hist[m + d])
    r = float(bins_per_unit)
    return (m + 0.5) / r, MAD_SCALE * max(d / r, float(min_mad)), True


def powder_normalize(
    images: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    out: np.ndarray,
    bins_per_unit: int = BINS_PER_UNIT,
    max_log: int = MAX_LOG,
    min_mad: float = MIN_MAD,
) -> np.ndarray:
    """Frames [N, H, W] (any real dtype) and the detector mask ([H, W], nonzero = excluded, or None) → the network's
    input ``out`` float32[N, C, Hp, Wp] (Hp ≥ H, Wp ≥ W; the extra rows and columns are zero): channel 0 is
    written, any other channel is left as it is. See the module docstring for the exact definition."""
    n, h, w, _, _ = check_normalize(images, mask, out, bins_per_unit, max_log)
    r = int(bins_per_unit)
    nb = r * int(max_log)
    out[:, 0] = 0
    for k in range(n):
        v = np.asarray(images[k], dtype=np.float64)
        valid = np.isfinite(v)
        if mask is not None:
            valid &= np.asarray(mask) == 0
        x = np.log1p(np.maximum(v[valid], 0.0)).astype(np.float32)
        q = np.minimum(np.floor(x.astype(np.float64) * r), nb - 1).astype(np.int64)
        centre, scale, ok = hist_center_scale(np.bincount(q, minlength=nb), r, min_mad)
        if not ok:
            continue
        z = np.arcsinh((x.astype(np.float64) - centre) / scale).astype(np.float32)
        plane = np.zeros((h, w), np.float32)
        plane[valid] = z
        out[k, 0, :h, :w] = plane
    return out


def check_ring(images, out, pixels, ptr, channel: int, min_pixels: int, min_scale: float,
               name: str = "ring_normalize") -> tuple[int, int, int]:
    """Shapes and parameters of :func:`ring_normalize` (shared by the implementations) → (N, H, W)."""
    if len(images.shape) != 3:
        raise ValueError(f"{name}: images must be [N, H, W], got shape {tuple(images.shape)}")
    n, h, w = (int(s) for s in images.shape)
    if len(out.shape) != 4 or int(out.shape[0]) != n or int(out.shape[2]) < h or int(out.shape[3]) < w:
        raise ValueError(f"{name}: out must be float32[{n}, C, ≥{h}, ≥{w}], got {tuple(out.shape)}")
    if not 0 <= int(channel) < int(out.shape[1]):
        raise ValueError(f"{name}: channel {channel} is not one of out's {int(out.shape[1])} channels")
    if str(out.dtype).removeprefix("torch.") != "float32":
        raise ValueError(f"{name}: out must be float32, got {out.dtype}")
    if len(pixels.shape) != 1 or len(ptr.shape) != 1 or int(ptr.shape[0]) < 1:
        raise ValueError(f"{name}: pixels and ptr must be 1-D (a ring index), got {tuple(pixels.shape)}, "
                         f"{tuple(ptr.shape)}")
    if int(min_pixels) < 1 or not float(min_scale) > 0:
        raise ValueError(f"{name}: min_pixels must be ≥ 1 and min_scale > 0")
    return n, h, w


def ring_normalize(
    images: np.ndarray,
    *,
    out: np.ndarray,
    pixels: np.ndarray,
    ptr: np.ndarray,
    channel: int = 1,
    min_pixels: int = RING_MIN_PIXELS,
    min_scale: float = RING_MIN_SCALE,
) -> np.ndarray:
    """Frames [N, H, W] and a ring index (``pixels[ptr[r]:ptr[r + 1]]``: flat [H·W] indices of ring r's pixels) →
    channel ``channel`` of ``out`` float32[N, C, Hp, Wp]; other channels are left as they are. See the module
    docstring for the exact definition."""
    n, h, w = check_ring(images, out, pixels, ptr, channel, min_pixels, min_scale)
    pixels = np.asarray(pixels, np.int64)
    ptr = np.asarray(ptr, np.int64)
    out[:, channel] = 0
    for k in range(n):
        flat = np.asarray(images[k]).reshape(-1)
        plane = np.zeros(h * w, np.float32)
        for r in range(ptr.size - 1):
            px = pixels[ptr[r]:ptr[r + 1]]
            v = flat[px].astype(np.float64)
            fin = np.isfinite(v)
            if np.count_nonzero(fin) < int(min_pixels):
                continue
            px, v = px[fin], v[fin]
            med = np.median(v)
            mad = np.median(np.abs(v - med))
            s = max(MAD_SCALE * mad, float(min_scale))
            plane[px] = np.arcsinh((v - med) / s).astype(np.float32)
        out[k, channel, :h, :w] = plane.reshape(h, w)
    return out


# ---- tiles -------------------------------------------------------------------------------------------------------
def _tile_args(starts_y: Sequence[int], starts_x: Sequence[int], cores_y: Sequence[Sequence[int]],
               cores_x: Sequence[Sequence[int]]):
    if len(starts_y) != len(cores_y) or len(starts_x) != len(cores_x):
        raise ValueError("tiles: one core range per tile start along each axis")
    return len(starts_y) * len(starts_x)


def extract_tiles(frames: np.ndarray, *, out: np.ndarray, starts_y: Sequence[int], starts_x: Sequence[int],
                  **_: object) -> np.ndarray:
    """Tiles of padded frames: frames [N, C, Hp, Wp] → out [N·T, C, Sh, Sw], tile (n, a, b) (row a, column b of the
    tile grid) at index n·T + a·len(starts_x) + b = frames[n, :, y_a : y_a + Sh, x_b : x_b + Sw]."""
    n = frames.shape[0]
    t = len(starts_y) * len(starts_x)
    sh, sw = out.shape[-2:]
    if out.shape[0] != n * t or out.shape[1] != frames.shape[1]:
        raise ValueError(f"extract_tiles: out must be [{n * t}, {frames.shape[1]}, Sh, Sw], got {list(out.shape)}")
    for i in range(n):
        for a, y in enumerate(starts_y):
            for b, x in enumerate(starts_x):
                out[i * t + a * len(starts_x) + b] = frames[i, :, y:y + sh, x:x + sw]
    return out


def stitch_logits(tiles: np.ndarray, *, out: np.ndarray, starts_y: Sequence[int], starts_x: Sequence[int],
                  cores_y: Sequence[Sequence[int]], cores_x: Sequence[Sequence[int]]) -> np.ndarray:
    """The spot log-odds of a frame from its tiles' logits: tiles [N·T, 2, Sh, Sw] (background, spot) → out
    float32[N, H, W] = logit_spot − logit_background (float32) of the tile whose core holds the pixel. Core ranges
    (absolute rows/columns [lo, hi)) partition the frame; one tile (T = 1, start 0) is a crop to [H, W]."""
    t = _tile_args(starts_y, starts_x, cores_y, cores_x)
    n, h, w = out.shape
    if tiles.shape[0] != n * t or tiles.shape[1] != 2:
        raise ValueError(f"stitch_logits: tiles must be [{n * t}, 2, Sh, Sw], got {list(tiles.shape)}")
    for i in range(n):
        for a, (y, (cy0, cy1)) in enumerate(zip(starts_y, cores_y)):
            for b, (x, (cx0, cx1)) in enumerate(zip(starts_x, cores_x)):
                tile = tiles[i * t + a * len(starts_x) + b]
                y1, x1 = min(cy1, h), min(cx1, w)
                if y1 <= cy0 or x1 <= cx0:
                    continue
                sl = (slice(cy0 - y, y1 - y), slice(cx0 - x, x1 - x))
                out[i, cy0:y1, cx0:x1] = tile[1][sl] - tile[0][sl]
    return out


# ---- mask ---------------------------------------------------------------------------------------------------------
def logit(p: float) -> float:
    """log(p / (1 − p)) for a probability threshold in (0, 1)."""
    p = float(p)
    if not 0.0 < p < 1.0:
        raise ValueError(f"spot probability threshold must lie in (0, 1), got {p}")
    return math.log(p / (1.0 - p))


def spot_mask(log_odds: np.ndarray, mask: np.ndarray | None = None, *, out: np.ndarray, threshold: float) -> np.ndarray:
    """out bool[N, H, W] = P(spot) > threshold, i.e. log_odds > log(t/(1 − t)) (float64 comparison), and False where
    the detector mask ([H, W], nonzero = excluded) is set. log_odds: float32[N, H, W] (:func:`stitch_logits`)."""
    if out.shape != log_odds.shape or out.dtype != np.bool_:
        raise ValueError(f"spot_mask: out must be bool{list(log_odds.shape)}, got {out.dtype}{list(out.shape)}")
    out[...] = log_odds.astype(np.float64) > logit(threshold)
    if mask is not None:
        out &= (np.asarray(mask) == 0)[None]
    return out


def _neighbours(connectivity: int) -> list[tuple[int, int]]:
    if connectivity == 4:
        return [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 8:
        return [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")


def component_labels(mask: np.ndarray, connectivity: int = 8) -> np.ndarray:
    """Labels of the connected components of one bool[H, W] mask: int64[H, W], −1 off the mask, else the smallest
    flat index of the component's pixels. Min-label propagation until nothing changes (vectorised, slow for long
    components: it is the specification)."""
    h, w = mask.shape
    big = np.iinfo(np.int64).max
    lab = np.where(mask, np.arange(h * w, dtype=np.int64).reshape(h, w), big)
    pad = np.full((h + 2, w + 2), big, np.int64)
    steps = _neighbours(connectivity)
    while True:
        pad[1:-1, 1:-1] = lab
        best = lab.copy()
        for dy, dx in steps:
            np.minimum(best, pad[1 + dy:1 + dy + h, 1 + dx:1 + dx + w], out=best)
        best = np.where(mask, best, big)
        if np.array_equal(best, lab):
            break
        lab = best
    return np.where(mask, lab, -1)


def remove_small_components(masks: np.ndarray, *, out: np.ndarray, min_size: int, connectivity: int = 8) -> np.ndarray:
    """out bool[N, H, W] = masks without their connected components (``connectivity`` 4 or 8) of fewer than
    ``min_size`` pixels (min_size ≤ 1 keeps everything)."""
    if out.shape != masks.shape or out.dtype != np.bool_ or masks.ndim != 3:
        raise ValueError(f"remove_small_components: masks bool[N, H, W] and out alike, got {list(masks.shape)} and "
                         f"{out.dtype}{list(out.shape)}")
    _neighbours(connectivity)
    src = np.asarray(masks, bool)
    if min_size <= 1:
        out[...] = src
        return out
    for k in range(src.shape[0]):
        lab = component_labels(src[k], connectivity)
        on = lab >= 0
        ids, counts = np.unique(lab[on], return_counts=True)
        small = ids[counts < min_size]
        out[k] = on & ~np.isin(lab, small)
    return out
