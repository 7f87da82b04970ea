"""The published U-Net masking recipe, step by step, as a reference to compare our plan with.

This follows the recipe of the powder-XRD U-Net masking study as it is published (written from its description,
not from the authors' code), on our U-Net architecture (:class:`gixdrt.model.unet.UNet`, depth 3 for their shipped
models) with weights of our own (theirs are not published):

1. **Normalise the whole frame** (:func:`authors_normalize`): ``L = log(I − min(I) + 1e-7)``; the 2nd–98th
   percentile range of ``L`` rescaled to 0…255 (clipped, rounded) as uint8; a local histogram equalisation over a
   disk of radius 32 px (:func:`equalize_disk`); divided by 256 → float32 in [0, 1).
2. **Tile** (:func:`tile_starts`, :func:`extract_tiles`): 256×256 tiles every 128 px, the last tile of a row or
   column moved flush with the frame's edge (22 × 22 = 484 tiles for 2880×2880, 3 × 3 = 9 for 512×512).
3. **Network** (:func:`tile_probabilities`): all tiles in **one batch**, BatchNorm in **training mode** (each
   layer normalises with the statistics of that batch, not with its running statistics), softmax per tile →
   P(background) per tile pixel.
4. **Stitch** (:func:`stitch_tiles`): a weighted mean of the overlapping tiles in which a 32-px border of every
   tile has weight :data:`BORDER_WEIGHT` (≈ 0) and the rest 1, so that tile centres decide, except at the frame's
   edge where only borders cover a pixel.
5. **Threshold**: a pixel is a spot when P(background) < 0.9.

Why it is slow and heavy (what :mod:`gixdrt.powder.plan` does instead):

- the local equalisation reads a 3,209-pixel disk around every pixel (a sliding histogram: 130 updates and up to
  128 bins summed per pixel), seconds per 2880² frame on two cores — the plan's normalisation is one robust
  per-frame scaling (one pass);
- every pixel goes through the network about four times (tiles overlap by half in both directions): 484 × 256²
  = 31.7 Mpx for a 8.3 Mpx frame; the plan's tiles overlap only by their halo;
- one batch of 484 tiles holds every activation of every tile at once (≈ 1 GB per 8-channel feature map at
  full resolution; 8.6 GiB above the process's base at the peak for 2880²), where the plan runs one tile at a time;
- batch statistics make each tile's output depend on every other tile of the batch, so the result changes with
  the batch size and cannot be streamed or split; the plan runs the network in eval mode (fixed running
  statistics), tile by tile.

``benchmarks/bench_powder.py`` measures it against the plan (2880², 2 cores: the network is ~96 % of the time).

Its behaviour differs too: the local equalisation stretches the noise of smooth regions to the full 0…255 range,
and a network fed with it can answer with isolated one-pixel specks (with our weights, which were trained on our
normalisation and not on equalised input, 1,913 one-pixel false spots on a generated 2880² frame, against 4 for
the plan).

>>> from gixdrt.powder.authors import authors_mask
>>> spots = authors_mask(frame)              # bool[H, W], True = spot pixel; ~20–100 s and ~10 GB for 2880²
"""
from __future__ import annotations

import copy
import math
import time
from typing import Any

import numpy as np

from .._numba import njit, prange

__all__ = ["BG_THRESHOLD", "BORDER", "BORDER_WEIGHT", "EQ_RADIUS", "ONE_CHANNEL", "STEP", "TILE", "authors_mask",
           "authors_normalize", "disk_half_widths", "equalize_disk", "equalize_disk_reference", "extract_tiles",
           "stitch_tiles", "tile_probabilities", "tile_starts", "tile_weights"]

TILE = 256  # tile side (px)
STEP = 128  # distance between tile starts (px)
BORDER = 32  # border of each tile with (almost) no weight in the stitch (px)
BORDER_WEIGHT = 1e-6  # "≈ 0": only decides where no tile centre covers a pixel (the frame's edge)
EQ_RADIUS = 32  # disk radius of the local histogram equalisation (px)
LOG_OFFSET = 1e-7  # log(I − min + 1e-7)
PERCENTILES = (2.0, 98.0)
BG_THRESHOLD = 0.9  # spot when P(background) < 0.9
#: the shipped one-channel powder model the recipe runs by default (the recipe feeds the frame alone)
ONE_CHANNEL = "powder-unet-d3"


# -------------------------------------------------------------------------------------------------
# 1. normalisation
# -------------------------------------------------------------------------------------------------
def disk_half_widths(radius: int) -> np.ndarray:
    """int64[2r + 1]: for row offset dy = k − r, the largest dx with dx² + dy² ≤ r² (the disk footprint)."""
    r = int(radius)
    if r < 0:
        raise ValueError(f"radius must be ≥ 0, got {radius}")
    return np.array([math.isqrt(r * r - (k - r) ** 2) for k in range(2 * r + 1)], np.int64)


@njit(parallel=True, cache=True)
def _equalize_rows(img, half, out):
    h, w = img.shape
    r = (half.shape[0] - 1) // 2
    for y in prange(h):
        hist = np.zeros(256, np.int64)
        pop = 0
        for k in range(2 * r + 1):  # the window of column 0
            yy = y + k - r
            if yy < 0 or yy >= h:
                continue
            for xx in range(0, min(half[k], w - 1) + 1):
                hist[img[yy, xx]] += 1
                pop += 1
        for x in range(w):
            if x > 0:  # slide right: the disk loses column x − 1 − half, gains column x + half, row by row
                for k in range(2 * r + 1):
                    yy = y + k - r
                    if yy < 0 or yy >= h:
                        continue
                    xo = x - 1 - half[k]
                    if xo >= 0:
                        hist[img[yy, xo]] -= 1
                        pop -= 1
                    xi = x + half[k]
                    if xi < w:
                        hist[img[yy, xi]] += 1
                        pop += 1
            g = img[y, x]
            c = 0
            if g < 128:  # count ≤ g from whichever end is shorter
                for v in range(g + 1):
                    c += hist[v]
            else:
                for v in range(g + 1, 256):
                    c += hist[v]
                c = pop - c
            out[y, x] = (255 * c) // pop


def equalize_disk(image: np.ndarray, radius: int = EQ_RADIUS) -> np.ndarray:
    """Local histogram equalisation of uint8[H, W] over a disk footprint of ``radius`` px (Numba, rows in
    parallel) → uint8[H, W].

    out[y, x] = ⌊255 · #{q in D(y, x) : I[q] ≤ I[y, x]} / |D(y, x)|⌋ where D(y, x) are the pixels (y + dy, x + dx)
    inside the image with dx² + dy² ≤ radius² (near the edges the disk holds fewer pixels). A sliding histogram per
    row: O(radius) updates per pixel. (scikit-image's rank ``equalize`` does this job; it is not a dependency of
    gixdrt, so the few lines live here, checked against :func:`equalize_disk_reference`.)
    """
    img = np.ascontiguousarray(image)
    if img.ndim != 2 or img.dtype != np.uint8:
        raise ValueError(f"equalize_disk: image must be uint8[H, W], got {img.dtype}{list(img.shape)}")
    out = np.empty_like(img)
    if img.size:
        _equalize_rows(img, disk_half_widths(radius), out)
    return out


def equalize_disk_reference(image: np.ndarray, radius: int = EQ_RADIUS) -> np.ndarray:
    """The specification of :func:`equalize_disk` in NumPy: for every disk offset (dy, dx), compare the shifted
    image with the image where the shift stays inside it, and count. O(radius² · H · W): small images only."""
    img = np.asarray(image)
    h, w = img.shape
    le = np.zeros((h, w), np.int64)
    pop = np.zeros((h, w), np.int64)
    r = int(radius)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dx * dx + dy * dy > r * r:
                continue
            y0, y1 = max(0, -dy), min(h, h - dy)  # centres whose neighbour (y + dy, x + dx) is inside
            x0, x1 = max(0, -dx), min(w, w - dx)
            if y0 >= y1 or x0 >= x1:
                continue
            centre = img[y0:y1, x0:x1]
            neigh = img[y0 + dy:y1 + dy, x0 + dx:x1 + dx]
            le[y0:y1, x0:x1] += neigh <= centre
            pop[y0:y1, x0:x1] += 1
    return ((255 * le) // pop).astype(np.uint8)


def authors_normalize(frame: np.ndarray, *, radius: int = EQ_RADIUS) -> np.ndarray:
    """Step 1: frame [H, W] (detector counts, finite) → float32[H, W] in [0, 1): log(I − min + 1e-7), the
    2nd–98th percentile range to uint8 (clipped, rounded), disk equalisation (``radius``), / 256."""
    img = np.asarray(frame, np.float32)
    if img.ndim != 2:
        raise ValueError(f"frame must be [H, W], got shape {img.shape}")
    lg = np.log(img - img.min() + np.float32(LOG_OFFSET))
    lo, hi = np.percentile(lg, PERCENTILES)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    u8 = np.rint(np.clip((lg - lo) * scale, 0.0, 255.0)).astype(np.uint8)
    return equalize_disk(u8, radius).astype(np.float32) / np.float32(256.0)


# -------------------------------------------------------------------------------------------------
# 2. tiles, 4. stitch
# -------------------------------------------------------------------------------------------------
def tile_starts(length: int, tile: int = TILE, step: int = STEP) -> list[int]:
    """Tile starts along one axis of ``length`` px: 0, step, 2·step, … while the tile fits, then one tile flush
    with the far edge if the last one does not reach it (2880 → 22 starts, the last 2624; 512 → 0, 128, 256)."""
    length, tile, step = int(length), int(tile), int(step)
    if length < tile:
        raise ValueError(f"the recipe needs frames of at least {tile} px on a side, got {length}")
    starts = list(range(0, length - tile + 1, step))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def extract_tiles(image: np.ndarray, tile: int = TILE, step: int = STEP) -> tuple[np.ndarray, list[int], list[int]]:
    """float32[H, W] → (tiles float32[T, 1, tile, tile] in row-major order of (start_y, start_x), starts_y,
    starts_x); T = len(starts_y) · len(starts_x)."""
    ys, xs = tile_starts(image.shape[0], tile, step), tile_starts(image.shape[1], tile, step)
    out = np.empty((len(ys) * len(xs), 1, tile, tile), np.float32)
    for a, y in enumerate(ys):
        for b, x in enumerate(xs):
            out[a * len(xs) + b, 0] = image[y:y + tile, x:x + tile]
    return out, ys, xs


def tile_weights(tile: int = TILE, border: int = BORDER, weight: float = BORDER_WEIGHT) -> np.ndarray:
    """float32[tile, tile]: 1 in the centre, ``weight`` within ``border`` px of any tile edge."""
    w = np.full((tile, tile), weight, np.float32)
    w[border:tile - border, border:tile - border] = 1.0
    return w


def stitch_tiles(values: np.ndarray, starts_y: list[int], starts_x: list[int], shape: tuple[int, int],
                 weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted mean of per-tile values float32[T, tile, tile] (tiles as :func:`extract_tiles` orders them) over
    the frame → float32[H, W]; ``weights`` default :func:`tile_weights`."""
    t = values.shape[-1]
    wt = tile_weights(t) if weights is None else np.asarray(weights, np.float32)
    num = np.zeros(shape, np.float32)
    den = np.zeros(shape, np.float32)
    for a, y in enumerate(starts_y):
        for b, x in enumerate(starts_x):
            num[y:y + t, x:x + t] += wt * values[a * len(starts_x) + b]
            den[y:y + t, x:x + t] += wt
    return num / den


# -------------------------------------------------------------------------------------------------
# 3. network
# -------------------------------------------------------------------------------------------------
def _module(model: Any):
    if hasattr(model, "forward"):
        return model
    from .model import load_unet

    return load_unet(model)


def tile_probabilities(tiles: np.ndarray, model: Any = ONE_CHANNEL, *, batch: int | None = None,
                       batch_norm: str = "batch") -> np.ndarray:
    """Step 3: tiles float32[T, 1, S, S] → P(background) float32[T, S, S] (softmax over the 2 logits per tile).

    model: a :class:`~gixdrt.model.unet.UNet` or a powder model name/path (:func:`gixdrt.powder.model.load_unet`).
    batch: tiles per forward call (None: all T at once, as the recipe does; with ``batch_norm="batch"`` the result
    depends on it). batch_norm: ``"batch"`` (the recipe: BatchNorm in training mode, normalising with each batch's
    own statistics) or ``"running"`` (eval mode). The caller's module is not changed (a copy runs; its running
    statistics are not updated)."""
    import torch

    if batch_norm not in ("batch", "running"):
        raise ValueError(f"batch_norm must be 'batch' or 'running', got {batch_norm!r}")
    net = copy.deepcopy(_module(model)).float()
    net.train(batch_norm == "batch")
    n = tiles.shape[0]
    step = n if batch is None else int(batch)
    if step < 1:
        raise ValueError(f"batch must be ≥ 1, got {batch}")
    out = np.empty((n,) + tiles.shape[2:], np.float32)
    with torch.no_grad():
        for i in range(0, n, step):
            logits = net(torch.from_numpy(np.ascontiguousarray(tiles[i:i + step])))
            out[i:i + step] = torch.softmax(logits, dim=1)[:, 0].numpy()
            del logits
    return out


# -------------------------------------------------------------------------------------------------
# the whole recipe
# -------------------------------------------------------------------------------------------------
def authors_mask(frame: np.ndarray, model: Any = ONE_CHANNEL, batch: int | None = None, *,
                 timings: dict[str, float] | None = None) -> np.ndarray:
    """The published recipe end to end: frame [H, W] (detector counts, finite; H, W ≥ 256) → bool[H, W], True =
    spot pixel (P(background) < 0.9).

    model: a one-channel UNet or powder model name/path (default: :data:`ONE_CHANNEL`, our first shipped depth-3
    model, which takes the frame alone as the recipe does). batch: tiles per
    forward call (None: all at once, the recipe). timings: when given, filled with seconds per step
    (``normalize``, ``tiles``, ``network`` (forward and softmax), ``stitch``, ``threshold``)."""
    t = {} if timings is None else timings
    net = _module(model)
    t0 = time.perf_counter()
    norm = authors_normalize(frame)
    t1 = time.perf_counter()
    tiles, ys, xs = extract_tiles(norm)
    t2 = time.perf_counter()
    p_bg = tile_probabilities(tiles, net, batch=batch)
    del tiles
    t3 = time.perf_counter()
    stitched = stitch_tiles(p_bg, ys, xs, norm.shape)
    del p_bg
    t4 = time.perf_counter()
    spots = stitched < BG_THRESHOLD
    t5 = time.perf_counter()
    t.update(normalize=t1 - t0, tiles=t2 - t1, network=t3 - t2, stitch=t4 - t3, threshold=t5 - t4)
    return spots
