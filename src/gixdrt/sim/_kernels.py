"""Numba kernels of the simulator: gradient (Perlin-type) noise, peak rendering, angular resampling.

None of them draws random numbers: every random quantity (lattice gradients, peak parameters, noise
fields) comes from the caller's NumPy Generator, so the images depend only on (seed, index).

Without Numba the same functions run as plain Python (identical results, far slower: fine for tests on
small images, not for training data).
"""
from __future__ import annotations

import math

import numpy as np

from .._numba import HAVE_NUMBA, njit


@njit(cache=True, inline="always")
def _fade(t):
    """Perlin's quintic smoothstep 6t⁵ − 15t⁴ + 10t³ (C² continuous)."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


@njit(cache=True)
def perlin1d(n, freq, phase, grads, out):
    """One octave of 1-D gradient noise on n samples: ``freq`` lattice cells over the n samples,
    shifted by ``phase`` cells. grads: float64[≥ ceil(freq + phase) + 2] slopes in [−1, 1].
    Adds the noise (range about ±0.5) into ``out``."""
    step = freq / n
    for i in range(n):
        t = i * step + phase
        k = math.floor(t)
        f = t - k
        a = grads[k] * f
        b = grads[k + 1] * (f - 1.0)
        out[i] += a + (b - a) * _fade(f)


@njit(cache=True)
def perlin2d(out, cells_y, cells_x, phase_y, phase_x, angles, amp):
    """One octave of 2-D gradient noise added (× amp) into ``out`` float32[H, W].

    ``cells_y × cells_x`` lattice cells over the image, shifted by the phases (in cells); angles:
    float64[≥ ceil(cells_y + phase_y) + 2, ≥ ceil(cells_x + phase_x) + 2] gradient directions (rad).
    The noise lies in about ±0.7.
    """
    h, w = out.shape
    gy = angles.shape[0]
    gx = angles.shape[1]
    cy = np.empty((gy, gx))
    cx = np.empty((gy, gx))
    for i in range(gy):
        for j in range(gx):
            cy[i, j] = math.sin(angles[i, j])
            cx[i, j] = math.cos(angles[i, j])
    sx = cells_x / w
    sy = cells_y / h
    # per-column lattice index, fraction and fade (shared by all rows)
    kx = np.empty(w, np.int64)
    fx = np.empty(w)
    ux = np.empty(w)
    for j in range(w):
        t = j * sx + phase_x
        k = math.floor(t)
        kx[j] = k
        fx[j] = t - k
        ux[j] = _fade(t - k)
    for i in range(h):
        t = i * sy + phase_y
        ky = math.floor(t)
        fy = t - ky
        uy = _fade(fy)
        for j in range(w):
            k = kx[j]
            f = fx[j]
            n00 = cx[ky, k] * f + cy[ky, k] * fy
            n01 = cx[ky, k + 1] * (f - 1.0) + cy[ky, k + 1] * fy
            n10 = cx[ky + 1, k] * f + cy[ky + 1, k] * (fy - 1.0)
            n11 = cx[ky + 1, k + 1] * (f - 1.0) + cy[ky + 1, k + 1] * (fy - 1.0)
            u = ux[j]
            a = n00 + (n01 - n00) * u
            b = n10 + (n11 - n10) * u
            out[i, j] += amp * (a + (b - a) * uy)


@njit(cache=True)
def radial_profile(x0, sigma, eta, c0, c1, out):
    """Radial profile of unit height on columns c0..c1−1 into ``out`` (length c1 − c0).

    Gaussian part: the pixel-averaged Gaussian (erf difference over [j − ½, j + ½]) scaled so that a
    wide peak has height 1; pseudo-Voigt: (1 − η)·Gaussian + η·Lorentzian of the same FWHM
    (sampled at the pixel centre).
    """
    s2 = sigma * math.sqrt(2.0)
    # mean of exp(−(t − x0)²/2σ²) over t ∈ [j − ½, j + ½] = σ·√(2π)/2 · (erf(b) − erf(a))
    norm = sigma * math.sqrt(2.0 * math.pi) * 0.5
    gam = sigma * math.sqrt(2.0 * math.log(2.0))  # Lorentzian HWHM with the Gaussian's FWHM
    for j in range(c0, c1):
        g = (math.erf((j + 0.5 - x0) / s2) - math.erf((j - 0.5 - x0) / s2)) * norm
        if eta > 0.0:
            d = (j - x0) / gam
            g = (1.0 - eta) * g + eta / (1.0 + d * d)
        out[j - c0] = g


@njit(cache=True)
def add_peaks(img, xs, sigmas, etas, amps, spans, ang):
    """Add K peaks into img float32[H, W]: img[r, c] += amps[k]·ang[k, r]·radial_k(c).

    spans: int64[K, 2] column range [c0, c1) of each peak's radial profile; ang: float32[K, H].
    """
    h, w = img.shape
    k_n = xs.shape[0]
    buf = np.empty(w)
    for k in range(k_n):
        c0 = spans[k, 0]
        c1 = spans[k, 1]
        radial_profile(xs[k], sigmas[k], etas[k], c0, c1, buf)
        a = amps[k]
        for r in range(h):
            v = a * ang[k, r]
            if v == 0.0:
                continue
            for c in range(c0, c1):
                img[r, c] += v * buf[c - c0]


@njit(cache=True)
def add_separable(img, ang, rad, spans):
    """img float64[H, W] += Σ_k ang[k, r]·rad[k, c] over each k's columns spans[k, 0] ≤ c < spans[k, 1].

    ang: float64[K, H]; rad: float64[K, W] (outside its span negligible by the caller's choice). The sum of
    rank-1 terms that a matrix product gives, without BLAS threads (which a busy machine slows 30-fold on
    this size) and skipping the columns where a narrow profile is ~0.
    """
    h = img.shape[0]
    for k in range(ang.shape[0]):
        c0 = spans[k, 0]
        c1 = spans[k, 1]
        for r in range(h):
            v = ang[k, r]
            if v == 0.0:
                continue
            for c in range(c0, c1):
                img[r, c] += v * rad[k, c]


@njit(cache=True)
def resample_columns(img, m):
    """Angular oversampling of the low-|Q| columns, in place.

    Column j is read at m[j] equally spaced rows (nearest row) and linearly interpolated back to all H
    rows, as a polar remap interpolates a detector that has only m[j] pixels along the arc. Columns
    with m[j] ≥ H are left alone.
    """
    h, w = img.shape
    col = np.empty(h, img.dtype)
    for j in range(w):
        mj = m[j]
        if mj >= h:
            continue
        mj = max(mj, 2)
        for r in range(h):
            col[r] = img[r, j]
        scale = (mj - 1.0) / (h - 1.0)
        back = (h - 1.0) / (mj - 1.0)
        for r in range(h):
            t = r * scale
            k = int(t)
            if k >= mj - 1:
                k = mj - 2
            f = t - k
            ra = int(k * back + 0.5)
            rb = int((k + 1) * back + 0.5)
            rb = min(rb, h - 1)
            img[r, j] = (1.0 - f) * col[ra] + f * col[rb]


# -------------------------------------------------------------------------------------------------
# counting noise with a counter-based generator (splitmix64), keyed by a seed from the image's Generator
# -------------------------------------------------------------------------------------------------
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_INV53 = 1.0 / 9007199254740992.0  # 2⁻⁵³

#: below this expected count the exact Poisson law is sampled (inversion); above, N(λ, λ) rounded
POISSON_EXACT_BELOW = 12.0


@njit(cache=True, inline="always")
def _mix(z):
    """splitmix64 finaliser: the counter-th output of a splitmix64 stream is _mix(key + counter·γ)."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=True, inline="always")
def _uniform(key, counter):
    """Uniform double in (0, 1) (never 0, never 1)."""
    v = _mix(key + counter * _GOLDEN)
    return (np.float64(v >> _S11) + 0.5) * _INV53


if not HAVE_NUMBA:  # pragma: no cover - plain-Python uint64 arithmetic without overflow warnings
    _MASK = (1 << 64) - 1

    def _mix(z):
        z = int(z)
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return z ^ (z >> 31)

    def _uniform(key, counter):
        v = _mix((int(key) + int(counter) * 0x9E3779B97F4A7C15) & _MASK)
        return ((v >> 11) + 0.5) * _INV53


@njit(cache=True)
def counting_noise(lam, z, read, key, out):
    """out = counts of pixels with expected counts lam (float32[H, W]) plus N(0, read²) read noise.

    z: float32[H, W] standard normals (from the image's Generator). Poisson(λ) is sampled exactly by
    sequential inversion for λ < POISSON_EXACT_BELOW (pixel i uses counter i of the splitmix64 stream
    ``key`` for its uniform) and gets read·z added; above, the count is λ + √(λ + read²)·z (without read
    noise: clipped at 0 and rounded to an integer below λ = 1000). The result depends only on (λ, z, key).
    """
    h, w = lam.shape
    for r in range(h):
        for c in range(w):
            lm = np.float64(lam[r, c])
            zz = np.float64(z[r, c])
            if lm < POISSON_EXACT_BELOW:
                k = 0
                if lm > 0.0:
                    u = _uniform(key, np.uint64(r * w + c))
                    p = math.exp(-lm)
                    f = p
                    while u > f and k < 100:
                        k += 1
                        p *= lm / k
                        f += p
                out[r, c] = np.float64(k) + read * zz
            else:
                g = lm + math.sqrt(lm + read * read) * zz
                if read == 0.0:  # a photon count: never negative, an integer below 1000
                    if g < 0.0:
                        g = 0.0
                    elif lm < 1000.0:
                        g = math.floor(g + 0.5)
                out[r, c] = g
