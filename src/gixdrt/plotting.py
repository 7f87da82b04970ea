"""PNG figures of frames and polar images (matplotlib, headless Agg backend)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .geometry import Geometry


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    from .io.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return Path(path)


def plot_raw(frame: np.ndarray, path: str | Path, title: str = "raw frame") -> Path:
    """The raw detector frame as stored (row 0 at the top), log-scaled counts above the 1st percentile."""
    plt = _figure()
    img = np.asarray(frame, np.float64)
    finite = img[np.isfinite(img)]
    base = np.percentile(finite, 1) if finite.size else 0.0
    # Dark-subtracted frames have negative counts: shift by the 1st percentile before the log.
    shown = np.log10(np.clip(np.where(np.isfinite(img), img, base) - base, 0, None) + 1.0)
    lo, hi = np.percentile(shown, [5, 99.9])
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    im = ax.imshow(shown, cmap="magma", origin="upper", interpolation="nearest", vmin=lo, vmax=max(hi, lo + 1e-6))
    ax.set_xlabel("detector column (px)")
    ax.set_ylabel("detector row (px)")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="log10(counts − p1 + 1)")
    fig.tight_layout()
    out = _save(fig, Path(path))
    plt.close(fig)
    return out


def plot_polar(
    image: np.ndarray,
    geometry: Geometry,
    path: str | Path,
    title: str,
    label: str,
    log: bool = False,
    peaks=None,
) -> Path:
    """A polar image with |Q| (Å⁻¹) on x and φ (°) on y, φ = 0° at the bottom.

    peaks: optional :class:`gixdrt.gixd.peaks.PeakTable` of this image: boxes drawn, each labelled with |Q|.
    """
    plt = _figure()
    img = np.asarray(image, np.float64)
    if log:
        img = np.log10(np.clip(img - np.nanmin(img) + 1.0, 1.0, None))
    n_phi, n_q = img.shape
    dq = geometry.q_max / (n_q - 1)
    dphi = 90.0 / (n_phi - 1)
    # Pixel centres sit on the axis values: extend by half a pixel each side.
    extent = (-dq / 2, geometry.q_max + dq / 2, -dphi / 2, 90 + dphi / 2)
    fig, ax = plt.subplots(figsize=(9, 4.8))
    lo, hi = np.percentile(img, [1, 99.9]) if log else (None, None)  # a log image: clip the tails for contrast
    im = ax.imshow(
        img, cmap="gray" if peaks is not None else "viridis", origin="lower", extent=extent, aspect="auto", interpolation="nearest", vmin=lo, vmax=hi
    )
    ax.set_xlabel("|Q| (Å⁻¹)")
    ax.set_ylabel("φ (°)")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label=label)
    if peaks is not None and len(peaks):
        from matplotlib.patches import Rectangle

        for k in range(len(peaks)):
            x0, y0, x1, y1 = peaks.x0[k] * dq, peaks.y0[k] * dphi, peaks.x1[k] * dq, peaks.y1[k] * dphi
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="red", lw=1.0))
            label_q = peaks.q[k] if np.isfinite(peaks.q[k]) else (x0 + x1) / 2
            ax.text((x0 + x1) / 2, min(y1, 89.0), f"{label_q:.3f}", color="red", fontsize=7, rotation=90,
                    ha="center", va="top", clip_on=True,
                    bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.8))
    fig.tight_layout()
    out = _save(fig, Path(path))
    plt.close(fig)
    return out


def plot_tracks(table, path: str | Path, title: str | None = None) -> Path:
    """|Q| of linked peaks against frame (as the paper's Fig. 3d / 4b): one line with markers per track, coloured by
    track id; peaks of dropped tracks (track −1) as small grey dots. Uses the ``q`` column (Å⁻¹), or the box centre
    in polar columns when the table has no geometry. Written atomically.

    table: a linked :class:`gixdrt.gixd.peaks.PeakTable` (ValueError otherwise).
    """
    if not table.linked:
        raise ValueError("plot_tracks needs a linked peak table (link_tracks)")
    plt = _figure()
    physical = len(table) > 0 and bool(np.isfinite(table.q).any())
    y = table.q if physical else (table.x0 + table.x1) / 2
    fig, ax = plt.subplots(figsize=(8, 5))
    dropped = table.track < 0
    if dropped.any():
        ax.plot(table.frame[dropped], y[dropped], ".", color="0.7", ms=2, label="dropped (short tracks)")
    ids = np.unique(table.track[~dropped])
    cmap = plt.get_cmap("tab10")
    for i, track in enumerate(ids):
        rows = np.flatnonzero(table.track == track)
        rows = rows[np.argsort(table.frame[rows], kind="stable")]
        ax.plot(table.frame[rows], y[rows], "-o", color=cmap(i % 10), ms=3, lw=1)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("frame")
    ax.set_ylabel("|Q| (Å⁻¹)" if physical else "|Q| (polar column, px)")
    ax.set_title(title or f"{len(ids)} track(s), {len(table)} peak(s)")
    if dropped.any():
        ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = _save(fig, Path(path))
    plt.close(fig)
    return out
