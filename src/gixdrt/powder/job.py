"""The masking job over many frames: what ``gixdrt mask`` runs, serially or on each worker of ``--cluster``.

- :func:`combine_masks`: the ``--mask`` images OR-ed into one detector mask (nonzero = excluded, as pyFAI);
- :class:`MaskEngine`: built once for a run, masks one frame by a method (``unet``: the U-Net plan,
  :class:`~gixdrt.powder.plan.PowderMasker`; ``classical``: the pixel mask search with a ring index built once);
- :class:`MaskFile`: the output, written frame by frame into a temporary file and renamed into place only when
  complete (an interrupted run leaves nothing under the output's name and never touches an existing file).

Output layout:

- ``.npy``: bool[N, H, W], one spot mask per input frame, in input order (one method only);
- ``.h5`` / ``.hdf5``: dataset ``masks`` bool[N, H, W] (the first method: ``unet`` with ``--method both``) and, with
  several methods, ``masks_<method>`` for each; gzip-compressed, one chunk per frame. Dataset ``frames``: the N
  frame labels (file, or ``file[index]`` in a stack). File attributes: ``methods``, ``settings`` (JSON: the model,
  its weights' sha256, threshold, minimum component size, runtime and precision; the classical method's
  parameters), ``poni`` and ``geometry`` (JSON), ``detector_masks`` (the ``--mask`` files), ``sources`` (the
  inputs as given), ``gixdrt_version``, ``meaning``.

>>> engine = MaskEngine(["unet"], (2880, 2880), geometry=geom, detector_mask=dmask)
>>> with MaskFile("masks.h5", ["unet"], n_frames=10, shape=(2880, 2880), attrs={...}) as out:
...     for k, frame in enumerate(frames):
...         out.write(k, {"unet": engine("unet", frame)})
...     out.set_labels(labels)
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GixdrtError

__all__ = ["METHODS", "MaskEngine", "MaskFile", "check_options", "combine_masks", "output_attrs"]

#: the masking methods, in the order ``--method both`` writes them
METHODS = ("unet", "classical")
MEANING = "True = spot pixel (exclude it from the integration), one image per input frame, in input order"


def combine_masks(specs: Sequence[str], shape: tuple[int, int]) -> np.ndarray | None:
    """The images ``specs`` (any format :func:`gixdrt.io.read_frame` reads) OR-ed as bool[H, W], nonzero =
    excluded; None without any. GixdrtError naming the file whose shape differs from ``shape``."""
    from ..io import read_frame

    mask = None
    for spec in specs:
        m = np.asarray(read_frame(spec))
        if m.shape != tuple(shape):
            raise GixdrtError(f"--mask {spec}: shape {m.shape} differs from the frames' {tuple(shape)}")
        mask = (m != 0) if mask is None else (mask | (m != 0))
    return mask


def check_options(methods: Sequence[str], model: str, poni: str | None) -> None:
    """What the methods need from the command line, checked before any frame is read: GixdrtError naming --poni
    when the classical mask or a U-Net with a ring channel has no geometry."""
    if poni:
        return
    if "classical" in methods:
        raise GixdrtError("--poni: the classical method needs the detector geometry (a pyFAI PONI file)")
    if "unet" in methods:
        from .model import load_card

        if int(load_card(model)["architecture"].get("in_channels", 1)) > 1:
            raise GixdrtError(f"--poni: the U-Net model {model!r} compares each pixel with its powder ring and needs "
                              "the detector geometry (a pyFAI PONI file)")


def output_attrs(*, settings: Mapping[str, Any], sources: Sequence[str], poni: str | None = None, geometry: Any = None,
                 detector_masks: Sequence[str] = ()) -> dict[str, Any]:
    """The attributes :class:`MaskFile` records in an HDF5 output (see the module docstring)."""
    return {"settings": json.dumps(dict(settings), default=str), "sources": [str(s) for s in sources],
            "poni": str(poni or ""), "geometry": json.dumps(geometry.to_dict()) if geometry is not None else "",
            "detector_masks": [str(s) for s in detector_masks]}


class MaskEngine:
    """What masks one frame by each method of a run, built once.

    methods: some of :data:`METHODS`. shape: (H, W) of every frame. geometry: the detector's
    :class:`~gixdrt.powder.geometry.PowderGeometry` (needed by ``classical`` and by two-channel U-Nets). model,
    runtime, precision, threads, threshold, min_size: the U-Net's (None: the card's / the runtime's defaults).
    ``engine(method, frame)`` → bool[H, W].
    """

    def __init__(self, methods: Sequence[str], shape: tuple[int, int], *, geometry: Any = None,
                 detector_mask: np.ndarray | None = None, model: str = "default", runtime: str = "onnxruntime",
                 precision: str = "fp32", threads: int | None = None, threshold: float | None = None,
                 min_size: int | None = None):
        self.methods = [str(m) for m in methods]
        unknown = [m for m in self.methods if m not in METHODS]
        if not self.methods or unknown:
            raise ValueError(f"methods must be some of {', '.join(METHODS)}, got {self.methods}")
        self.shape = (int(shape[0]), int(shape[1]))
        if geometry is not None and tuple(geometry.shape) != self.shape:
            geometry = geometry.replace(shape=self.shape)
        if "classical" in self.methods and geometry is None:
            raise GixdrtError("--poni: the classical method needs the detector geometry (a pyFAI PONI file)")
        self.geometry = geometry
        self.detector_mask = None if detector_mask is None else np.asarray(detector_mask) != 0
        self.masker = self.index = None
        if "unet" in self.methods:
            from .plan import PowderMasker

            self.masker = PowderMasker(model, runtime=runtime, precision=precision, threads=threads,
                                       detector_mask=self.detector_mask, geometry=geometry, threshold=threshold,
                                       min_size=min_size)
        if "classical" in self.methods:
            from .classical import RingIndex

            self.index = RingIndex.from_geometry(geometry, None if self.detector_mask is None
                                                 else self.detector_mask.astype(np.uint8))

    def __call__(self, method: str, frame: np.ndarray) -> np.ndarray:
        """bool[H, W] spot mask of ``frame`` [H, W] by ``method``."""
        if method == "unet":
            return np.asarray(self.masker(frame), dtype=bool)
        if method == "classical":
            from .classical import pixel_mask_search

            return np.asarray(pixel_mask_search(frame, self.index), dtype=bool)
        raise ValueError(f"method {method!r} is not one of this engine's ({', '.join(self.methods)})")

    def settings(self) -> dict[str, Any]:
        """What decided the masks, per method (plain values, for the output's attributes)."""
        out: dict[str, Any] = {}
        if self.masker is not None:
            m = self.masker
            card = m.card or {}
            out["unet"] = {"model": card.get("name", ""), "weights_sha256": card.get("sha256", {}).get("weights", ""),
                           "in_channels": m.in_channels, "threshold": float(m.settings.threshold),
                           "min_size": int(m.settings.min_size), "runtime": m.runtime, "precision": m.precision,
                           "tile": int(m.settings.tile), "halo": int(m.settings.halo)}
        if self.index is not None:
            out["classical"] = {"method": "ring-wise median ± 3·1.4826·MAD (GSAS-II's pixel mask search)",
                                "ring_width_px": 2.0, "n_mad": 3.0, "min_pixels": 10, "rings": self.index.n_rings}
        return out

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"methods": self.methods, "settings": self.settings()}
        if self.masker is not None:
            info.update(runtime=self.masker.runtime, threshold=float(self.masker.settings.threshold),
                        min_size=int(self.masker.settings.min_size), card=self.masker.card)
        return info

    def close(self) -> None:
        if self.masker is not None:
            self.masker.close()


class MaskFile:
    """The output of a masking run (see the module docstring), filled frame by frame inside a ``with`` block and
    renamed into place when the block completes; an exception removes the temporary file."""

    def __init__(self, path: str | os.PathLike, methods: Sequence[str], n_frames: int, shape: tuple[int, int], *,
                 attrs: Mapping[str, Any] | None = None):
        self.path = Path(path)
        self.methods = list(methods)
        self.n = int(n_frames)
        self.shape = (int(shape[0]), int(shape[1]))
        self.attrs = dict(attrs or {})
        self.h5 = self.sinks = None
        self._stack: ExitStack | None = None
        suffix = self.path.suffix.lower()
        if suffix == ".npy" and len(self.methods) != 1:
            raise GixdrtError(f"--out {self.path}: a .npy file holds one method's masks; use .h5 for "
                              f"{' and '.join(self.methods)}")
        if suffix not in (".npy", ".h5", ".hdf5"):
            raise GixdrtError(f"--out {self.path}: unsupported mask format {self.path.suffix or '(no suffix)'}; "
                              "use .h5 or .npy")
        self.spot_pixels = dict.fromkeys(self.methods, 0)

    def __enter__(self) -> MaskFile:
        from ..io.atomic import atomic_path

        self._stack = ExitStack()
        try:
            tmp = self._stack.enter_context(atomic_path(self.path))
            full = (self.n, *self.shape)
            if self.path.suffix.lower() == ".npy":
                mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=bool, shape=full)
                self._stack.callback(mm.flush)  # flushed before the rename (callbacks run last in, first out)
                self.sinks = {self.methods[0]: mm}
            else:
                import h5py

                from .. import __version__

                self.h5 = h5 = h5py.File(tmp, "w")
                self._stack.callback(h5.close)
                self.sinks = {}
                for k, name in enumerate(self.methods):
                    key = "masks" if k == 0 else f"masks_{name}"
                    ds = h5.create_dataset(key, shape=full, dtype=bool, chunks=(1, *self.shape) if self.n else None,
                                           compression="gzip", compression_opts=1)
                    ds.attrs.update({"method": name, "meaning": MEANING})
                    self.sinks[name] = ds
                if len(self.methods) > 1:  # every method under its own name too
                    h5[f"masks_{self.methods[0]}"] = h5["masks"]
                h5.attrs.update({"methods": self.methods, "meaning": MEANING, "gixdrt_version": __version__})
                for key, value in self.attrs.items():
                    h5.attrs[key] = value if isinstance(value, (str, int, float, list)) else json.dumps(value,
                                                                                                        default=str)
        except BaseException:
            self._stack.close()
            raise
        return self

    def write(self, index: int, masks: Mapping[str, np.ndarray]) -> None:
        """Frame ``index``'s masks (method → bool[H, W])."""
        self.write_block(index, {k: np.asarray(v)[None] for k, v in masks.items()})

    def write_block(self, start: int, masks: Mapping[str, np.ndarray]) -> None:
        """Frames ``start`` … ``start + n − 1`` (method → bool[n, H, W])."""
        for name in self.methods:
            if name not in masks:
                raise GixdrtError(f"{self.path}: no {name} masks for frames from {start}")
            value = np.asarray(masks[name], dtype=bool)
            self.sinks[name][start:start + value.shape[0]] = value
            self.spot_pixels[name] += int(value.sum())

    def set_labels(self, labels: Sequence[str]) -> None:
        """The N frame labels (HDF5 only: dataset ``frames``)."""
        if len(labels) != self.n:
            raise GixdrtError(f"{self.path}: {len(labels)} frame labels for {self.n} frames")
        if self.h5 is not None:
            import h5py

            self.h5.create_dataset("frames", data=np.array([str(s) for s in labels], dtype=h5py.string_dtype()))

    def __exit__(self, *exc) -> bool:
        stack, self._stack = self._stack, None
        return bool(stack.__exit__(*exc)) if stack is not None else False
