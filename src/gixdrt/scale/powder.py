"""The ``mask`` task of a reprocessing run: powder spot masks of a unit's frames (``gixdrt mask --cluster``).

The engine (:func:`build_mask_engine`, built once per process by :func:`gixdrt.scale.worker.engine`) holds what
``gixdrt mask`` builds once for all its frames: the :class:`~gixdrt.powder.plan.PowderMasker` (method ``unet``) and
the classical :class:`~gixdrt.powder.classical.RingIndex` (method ``classical``), with the run's detector mask (an
``.npy`` file in the parts folder) and the geometry of the PONI file. :func:`mask_unit` masks the unit's frames one
at a time, in input order, with the same readers as ``gixdrt mask`` (:func:`gixdrt.io.sources.iter_pieces`).

Part files (``unit-NNNNNN.npz``, compressed): ``shape`` int64[3] = (N, H, W), ``spots_<method>`` uint8 = the
bool[N, H, W] masks flattened in C order and packed 8 pixels per byte (:func:`numpy.packbits`), ``frame_source``
(each frame's label); :func:`read_mask_part` unpacks them.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..powder.job import METHODS
from .units import WorkUnit

__all__ = ["MASK_ENGINE_KEYS", "METHODS", "build_mask_engine", "make_mask_settings", "mask_unit", "read_mask_part"]

#: settings that decide the mask task's engine (and the results)
MASK_ENGINE_KEYS = ("methods", "model", "runtime", "precision", "threads", "threshold", "min_size", "poni", "mask",
                    "shape")


def make_mask_settings(*, methods: Sequence[str], shape: tuple[int, int], model: str = "default",
                       poni: str | os.PathLike | None = None, mask: str | os.PathLike | None = None,
                       threads: int | None = None, threshold: float | None = None, min_size: int | None = None,
                       runtime: str = "onnxruntime", precision: str = "fp32",
                       parts: str | os.PathLike) -> dict[str, Any]:
    """The settings of :func:`gixdrt.scale.worker.process_unit` for powder spot masks, a plain JSON-serialisable
    dict with ``task`` ``"mask"``. methods: ``unet`` and/or ``classical`` (as ``--method``). shape: (H, W) of every
    frame (px). model: as ``--model`` (a path is made absolute). poni: the PONI file (needed by ``classical``; the
    U-Net's geometry). mask: an ``.npy`` detector mask, nonzero = excluded. threads: ONNX Runtime CPU threads.
    threshold, min_size: None for the model card's. Paths are made absolute."""
    def absolute(p):
        return None if p is None else os.path.abspath(os.fspath(p))

    methods = [str(m) for m in methods]
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise ValueError(f"methods must be some of {', '.join(METHODS)}, got {methods}")
    if "classical" in methods and poni is None:
        raise ValueError("the classical method needs the detector geometry (a PONI file)")
    model = str(model)
    if os.path.exists(model):
        model = absolute(model)
    return {"task": "mask", "methods": methods, "model": model, "runtime": runtime, "precision": precision,
            "threads": threads,
            "threshold": None if threshold is None else float(threshold),
            "min_size": None if min_size is None else int(min_size), "poni": absolute(poni), "mask": absolute(mask),
            "shape": [int(shape[0]), int(shape[1])], "sum": 1, "parts": absolute(parts)}


def _engine(settings: Mapping[str, Any]):
    from ..powder.geometry import PowderGeometry
    from ..powder.job import MaskEngine

    shape = (int(settings["shape"][0]), int(settings["shape"][1]))
    detector_mask = np.load(settings["mask"], allow_pickle=False) != 0 if settings.get("mask") else None
    poni = settings.get("poni")
    return MaskEngine(settings["methods"], shape, geometry=PowderGeometry.from_poni(poni, shape=shape) if poni else None,
                      detector_mask=detector_mask, model=settings.get("model", "default"),
                      runtime=settings.get("runtime") or "onnxruntime", precision=settings.get("precision") or "fp32",
                      threads=settings.get("threads"), threshold=settings.get("threshold"),
                      min_size=settings.get("min_size"))


def build_mask_engine(settings: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(engine, info) of the mask task: the engine masks a frame by a method, ``engine(method, frame)`` → bool[H, W];
    info (plain values): methods, and with ``unet`` the runtime, threshold, min_size and the model card."""
    import json

    eng = _engine(settings)
    return eng, json.loads(json.dumps(eng.info(), default=str))


def mask_unit(eng: Any, unit: WorkUnit, settings: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Mask ``unit``'s frames (in input order) by each method of ``eng``: (the part file's arrays, {"frames",
    "spots": {method: spot pixels}}). Raises FrameError naming the file of a frame that cannot be read or has
    another shape than the run's."""
    from ..io.sources import iter_pieces

    h, w = eng.shape
    frames = iter_pieces(unit.pieces, first_index=unit.first_frame, expect_shape=(h, w),
                         expect_note=f"the run's frame shape {h}×{w} (rows × columns, the first frame's)")
    masks: dict[str, list[np.ndarray]] = {m: [] for m in eng.methods}
    sources = []
    for frame in frames:
        sources.append(frame.source)
        for method in eng.methods:
            masks[method].append(eng(method, frame.data))
    n = len(sources)
    arrays: dict[str, np.ndarray] = {"shape": np.array([n, h, w], np.int64),
                                     "frame_source": np.array(sources, dtype=str)}
    spots = {}
    for method, per_frame in masks.items():
        stack = np.stack(per_frame) if per_frame else np.zeros((0, h, w), bool)
        arrays[f"spots_{method}"] = np.packbits(stack.reshape(-1))
        spots[method] = int(stack.sum())
    return arrays, {"frames": n, "spots": spots}


def read_mask_part(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], list[str]]:
    """A mask part file → ({method: bool[N, H, W]}, frame labels)."""
    with np.load(path, allow_pickle=False) as z:
        shape = tuple(int(v) for v in z["shape"])
        count = int(np.prod(shape))
        masks = {name[len("spots_"):]: np.unpackbits(z[name], count=count).astype(bool).reshape(shape)
                 for name in z.files if name.startswith("spots_")}
        return masks, [str(s) for s in z["frame_source"].tolist()]
