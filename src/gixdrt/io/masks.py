"""Bad-pixel masks and saturation values: from the detector's files, from the user, combined for one run.

Detector frames carry pixels that hold no measurement: the gaps between modules, dead, hot or noisy pixels, and
saturated pixels. gixdrt masks them so they take no part in the polar image (:func:`gixdrt.kernels.polar_remap`):

- **in the frames themselves**, always: non-finite values, and the flag value of the data type (2^bits − 1 of
  unsigned integer data, ± the largest float of float data), as Eiger and other detectors write gap and dead pixels;
- **from NeXus/Eiger HDF5 files**: the detector's ``pixel_mask`` (nonzero = masked, e.g. Eiger's bits 1 gap,
  2 dead, 4 under-, 8 over-responding, 16 noisy) and ``saturation_value`` (values at or above it are masked), found
  in the ``NXdetector`` group of ``/entry/instrument`` or its ``detectorSpecific`` group
  (:func:`detector_mask`);
- **from the user**: an image file of the detector's shape, any format gixdrt reads (nonzero = masked), named by
  ``mask: FILE`` in the config or ``--mask FILE`` (:func:`read_mask`), and a ``saturation_value`` in the config.

:class:`Masks` holds the union for a run: one uint8 ``pixels`` map (or None) and one saturation value (or None).
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, FrameError

__all__ = ["Masks", "detector_mask", "read_mask", "run_masks"]

#: where a detector group keeps its mask and saturation value (NeXus NXdetector fields, Eiger detectorSpecific)
MASK_FIELDS = ("pixel_mask", "detectorSpecific/pixel_mask")
SATURATION_FIELDS = ("saturation_value", "detectorSpecific/saturation_value",
                     "detectorSpecific/countrate_correction_count_cutoff")


@dataclass(frozen=True, eq=False)
class Masks:
    """The masked pixels of one run: ``pixels`` uint8[H, W] (nonzero = masked) or None, ``saturation`` (values at or
    above it are masked) or None, and ``sources``, one line per contribution (for the run's summary)."""

    pixels: np.ndarray | None = None
    saturation: float | None = None
    sources: tuple[str, ...] = field(default=())

    @property
    def fraction(self) -> float:
        """Fraction of the detector's pixels masked by ``pixels`` (0 without a map)."""
        return 0.0 if self.pixels is None else float(np.count_nonzero(self.pixels)) / self.pixels.size

    @property
    def empty(self) -> bool:
        return self.pixels is None and self.saturation is None

    def union(self, other: Masks) -> Masks:
        """Both masks: a pixel masked by either is masked; the lower saturation value applies."""
        if self.pixels is None or other.pixels is None:
            pixels = self.pixels if other.pixels is None else other.pixels
        else:
            if self.pixels.shape != other.pixels.shape:
                raise FrameError(f"masks of different shapes: {self.pixels.shape} ({self.sources[0]}) and "
                                 f"{other.pixels.shape} ({other.sources[0]})")
            pixels = (self.pixels | other.pixels).astype(np.uint8)
        sats = [s for s in (self.saturation, other.saturation) if s is not None]
        return Masks(pixels, min(sats) if sats else None, self.sources + other.sources)

    def describe(self) -> str:
        """One line: what is masked and from where."""
        parts = []
        if self.pixels is not None:
            parts.append(f"{np.count_nonzero(self.pixels)} pixels ({100 * self.fraction:.2f} %)")
        if self.saturation is not None:
            parts.append(f"values ≥ {self.saturation:g}")
        what = " and ".join(parts) if parts else "nothing beyond flag values"
        return f"{what}" + (f" from {', '.join(self.sources)}" if self.sources else "")


def _detector_note(shape: tuple[int, int]) -> str:
    return f"the detector, {shape[0]}×{shape[1]} (q_space.size_y × q_space.size_x of the config)"


def _as_pixels(arr: np.ndarray, label: str, shape: tuple[int, int] | None) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise FrameError(f"a mask must be one 2-D image, got shape {arr.shape}", path=label)
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise FrameError(f"mask shape {tuple(arr.shape)} does not match {_detector_note(shape)}", path=label)
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            raise FrameError(f"a mask must hold finite numbers (nonzero = masked), {int(bad.sum())} are not",
                             path=label)
    return (arr != 0).astype(np.uint8)


def read_mask(spec: str | os.PathLike, shape: tuple[int, int] | None = None) -> Masks:
    """A user mask: an image file of the detector's ``shape`` in any format gixdrt reads (``file.h5::/path`` too);
    nonzero pixels are masked. Raises FrameError naming the file and the problem."""
    from .atomic import protect
    from .frames import read_frame
    from .readers import check_file, split_spec

    label = os.fspath(spec)
    path, dataset = split_spec(label)
    if dataset is None and Path(path).suffix.lower() == ".npy":  # a boolean array, as NumPy users save masks
        check_file(path, label)
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise FrameError(f"not a readable .npy mask ({' '.join(str(exc).split())})", path=label) from None
        if arr.dtype == np.bool_:
            protect(path)
            return Masks(_as_pixels(np.asarray(arr), label, shape), None, (f"mask {label}",))
    note = None if shape is None else _detector_note(shape)
    pixels = _as_pixels(read_frame(spec, expect_shape=shape, expect_note=note), label, shape)
    return Masks(pixels, None, (f"mask {label}",))


def _nexus_detectors(f) -> list:
    """The NXdetector groups of /entry*/instrument (or the conventional /entry/instrument/detector)."""
    import h5py

    found = []
    for entry in f.values():
        if not isinstance(entry, h5py.Group):
            continue
        inst = entry.get("instrument")
        if not isinstance(inst, h5py.Group):
            continue
        for name, group in inst.items():
            if not isinstance(group, h5py.Group):
                continue
            cls = group.attrs.get("NX_class", b"")
            cls = cls.decode() if isinstance(cls, bytes) else str(cls)
            if cls == "NXdetector" or name == "detector":
                found.append(group)
    return found


def detector_mask(spec: str | os.PathLike, shape: tuple[int, int] | None = None) -> Masks:
    """The ``pixel_mask`` and ``saturation_value`` an HDF5 (NeXus/Eiger) file declares for its detector; an empty
    :class:`Masks` for other formats or files without them. ``shape``: the detector's (checked against the mask).
    Raises FrameError for a mask of the wrong shape or unreadable values."""
    from .readers import H5_SUFFIXES, split_spec

    path, _ = split_spec(os.fspath(spec))
    if Path(path).suffix.lower() not in H5_SUFFIXES:
        return Masks()
    import h5py

    pixels, saturation, sources = None, None, []
    try:
        with h5py.File(path, "r") as f:
            for group in _nexus_detectors(f):
                for name in MASK_FIELDS:
                    ds = group.get(name)
                    if isinstance(ds, h5py.Dataset) and pixels is None:
                        where = f"{path}::{ds.name}"
                        if ds.ndim != 2 or (shape is not None and tuple(ds.shape) != tuple(shape)):
                            raise FrameError(f"pixel mask of shape {ds.shape} does not match the frames' "
                                             f"{shape}", path=where)
                        pixels = _as_pixels(ds[()], where, shape)
                        sources.append(f"pixel_mask {where}")
                for name in SATURATION_FIELDS:
                    ds = group.get(name)
                    if isinstance(ds, h5py.Dataset) and saturation is None and ds.size == 1:
                        value = float(np.asarray(ds[()]).reshape(-1)[0])
                        if math.isfinite(value) and value > 0:
                            saturation = value
                            sources.append(f"saturation_value {path}::{ds.name}")
    except FrameError:
        raise
    except (OSError, ValueError, TypeError) as exc:
        raise FrameError(f"cannot read the detector's pixel_mask or saturation_value ({exc})", path=path) from None
    return Masks(pixels, saturation, tuple(sources))


def run_masks(inputs: Iterable[str | os.PathLike], shape: tuple[int, int], *, config_mask=None,
              user_masks: Iterable[str | os.PathLike] = ()) -> Masks:
    """The masks of one run over ``inputs`` (raw frames of ``shape``): each HDF5 input's own detector mask (unless
    the config's ``mask.detector`` is false), the config's ``mask.file`` and ``mask.saturation_value``, and
    ``user_masks`` (``--mask`` files), all combined (:meth:`Masks.union`)."""
    masks = Masks()
    use_files = True if config_mask is None else config_mask.detector
    if use_files:
        seen = set()
        for spec in inputs:
            path = os.fspath(spec).split("::", 1)[0]
            if path not in seen:
                seen.add(path)
                masks = masks.union(detector_mask(path, shape))
    if config_mask is not None:
        if config_mask.file:
            try:
                masks = masks.union(read_mask(config_mask.file, shape))
            except FrameError as exc:
                raise ConfigError(str(exc), key="mask.file") from None
        if config_mask.saturation_value is not None:
            masks = masks.union(Masks(None, config_mask.saturation_value, ("mask.saturation_value of the config",)))
    for spec in user_masks:
        masks = masks.union(read_mask(spec, shape))
    return masks
