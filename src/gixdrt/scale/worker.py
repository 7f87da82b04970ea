"""The per-unit function of a reprocessing run: plain Python, callable without Dask.

:func:`process_unit` reads one :class:`~gixdrt.scale.units.WorkUnit`'s frames, runs the task of ``settings`` on
them with its engine and writes the unit's part file; it returns a small summary (numbers and names, never arrays).
The engine is built once per process and task settings (:func:`engine`) and reused for every unit, so a Dask worker
plugin, an MPI rank or a Slurm array task can call it in a loop::

    for unit in units[rank::size]:
        process_unit(unit, settings)

``settings`` is a small dict of plain values whose ``task`` says the job (absent: ``"detect"``):

- ``"detect"`` (:func:`make_settings`): the detector options, the config path, the input kind, the batch size and
  ``sum``, the run's mask (an ``.npy`` path and a saturation value) and the folder of the part files. Part files:
  the unit's peak table columns (:data:`gixdrt.gixd.peaks.COLUMNS`, ``source`` as a string array), and per frame
  ``frame_source`` (the frame's label), ``masked`` (fraction of the polar pixels that left out masked pixels) and
  ``filled`` (polar pixels filled along φ); summary counts ``frames`` and ``peaks``;
- ``"mask"`` (:func:`gixdrt.scale.powder.make_mask_settings`): powder spot masks, see :mod:`gixdrt.scale.powder`.

Part files are ``unit-NNNNNN.npz`` in the parts folder, written atomically.

Test hook: when the environment variable ``GIXDRT_TEST_UNIT_DELAY`` is set (seconds, a number), each unit sleeps
that long before it writes its part file (tests use it to kill a worker while units run). Unset, nothing happens.
"""
from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FrameError
from ..gixd.peaks import COLUMNS, PeakTable
from ..io.sources import iter_pieces
from .units import WorkUnit

__all__ = ["ENGINE_KEYS", "TASKS", "engine", "make_settings", "part_name", "process_unit", "read_part", "task_of"]

#: settings that decide the detect task's engine (and the results); the others say where things are
ENGINE_KEYS = ("model", "backend", "device", "precision", "threads", "score_threshold", "nms_iou", "max_detections",
               "config", "input", "batch", "mask", "saturation")
#: the tasks a unit can run (``settings["task"]``)
TASKS = ("detect", "mask")

_TEST_DELAY = "GIXDRT_TEST_UNIT_DELAY"
_ENGINES: dict[str, tuple[Any, dict[str, Any]]] = {}


def make_settings(*, model: str = "default", backend: str = "auto", device: str | None = None,
                  precision: str = "fp32", threads: int | None = None, score_threshold: float | None = None,
                  nms_iou: float | None = None, max_detections: int | None = None, config: str | None = None,
                  input: str = "raw", batch: int = 1, sum_n: int = 1, mask: str | None = None,
                  saturation: float | None = None, parts: str | os.PathLike) -> dict[str, Any]:
    """The settings of :func:`process_unit` as a plain dict (JSON-serialisable). Paths are made absolute, so
    workers started elsewhere on a shared file system find them. ``model``: as ``--model`` (a path is made
    absolute); thresholds None: the config's, else the model card's."""
    def absolute(p):
        return None if p is None else os.path.abspath(os.fspath(p))

    model = str(model)
    if os.path.exists(model):
        model = absolute(model)
    return {"task": "detect", "model": model, "backend": backend, "device": device, "precision": precision,
            "threads": threads, "score_threshold": score_threshold, "nms_iou": nms_iou,
            "max_detections": max_detections, "config": absolute(config), "input": input, "batch": int(batch),
            "sum": int(sum_n), "mask": absolute(mask), "saturation": None if saturation is None else float(saturation),
            "parts": absolute(parts)}


def task_of(settings: Mapping[str, Any]) -> str:
    """The task of ``settings`` (``"detect"`` when absent); ValueError for an unknown one."""
    task = settings.get("task") or "detect"
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} in the unit settings (known: {', '.join(TASKS)})")
    return task


def _engine_keys(task: str) -> tuple[str, ...]:
    if task == "mask":
        from .powder import MASK_ENGINE_KEYS

        return MASK_ENGINE_KEYS
    return ENGINE_KEYS


def _key(settings: Mapping[str, Any]) -> str:
    task = task_of(settings)
    return json.dumps({"task": task, **{k: settings.get(k) for k in _engine_keys(task)}}, sort_keys=True)


def engine(settings: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(engine, engine info) for ``settings``, built on first use in this process and kept (one engine per process:
    other settings replace it). detect: (Pipeline, {backend, device, describe, thresholds, card}); mask: see
    :func:`gixdrt.scale.powder.build_mask_engine`. Info holds plain values only."""
    key = _key(settings)
    if key not in _ENGINES:
        for old, _ in _ENGINES.values():  # free the previous model before loading another
            close = getattr(old, "close", None)
            if close is not None:
                close()
        _ENGINES.clear()
        if task_of(settings) == "mask":
            from .powder import build_mask_engine

            _ENGINES[key] = build_mask_engine(settings)
        else:
            _ENGINES[key] = _build(settings)
    return _ENGINES[key]


def _build(settings: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    from ..geometry import load_config
    from ..gixd.detector import PeakDetector
    from ..gixd.pipeline import Pipeline
    from ..io.masks import Masks

    cfg = load_config(settings["config"]) if settings.get("config") else None
    pp = cfg.postprocessing if cfg is not None else None
    score, nms = settings.get("score_threshold"), settings.get("nms_iou")
    detector = PeakDetector(
        settings.get("model", "default"), backend=settings.get("backend", "auto"), device=settings.get("device"),
        precision=settings.get("precision", "fp32"), threads=settings.get("threads"),
        score_threshold=score if score is not None else (pp.score_level if pp else None),
        nms_iou=nms if nms is not None else (pp.nms_level if pp else None),
        max_detections=settings.get("max_detections"))
    kind = settings.get("input", "raw")
    masks = None
    if kind == "raw":
        pixels = np.load(settings["mask"], allow_pickle=False) if settings.get("mask") else None
        masks = Masks(pixels, settings.get("saturation"), ())
    pipe = Pipeline(cfg, detector, input=kind, batch=int(settings.get("batch", 1)), keep_polar=False, masks=masks)
    info = {"backend": detector.backend, "device": str(detector.device), "describe": detector.describe(),
            "thresholds": detector.thresholds.to_dict(), "card": detector.card}
    return pipe, json.loads(json.dumps(info, default=str))


def part_name(unit: WorkUnit | int) -> str:
    """The part file's name of a unit (or unit index): ``unit-000012.npz``."""
    index = unit if isinstance(unit, int) else unit.index
    return f"unit-{index:06d}.npz"


def process_unit(unit: WorkUnit, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Run the task of ``settings`` on ``unit``'s frames and write its part file into ``settings["parts"]``
    (atomically).

    Returns {"unit", "part", "frames", the task's counts (detect: "peaks"; mask: "spots"), "seconds", "worker"
    (host:pid), "engine" (see :func:`engine`)}. Raises FrameError (and the other errors of reading and processing)
    naming the file and the problem.
    """
    from ..io.atomic import atomic_path

    t0 = time.perf_counter()
    task = task_of(settings)
    eng, info = engine(settings)
    if task == "mask":
        from .powder import mask_unit

        arrays, counts = mask_unit(eng, unit, settings)
    else:
        arrays, counts = _detect_unit(eng, unit, settings)
    if counts["frames"] != unit.n_frames:
        raise FrameError(f"unit {unit.index} ({unit.describe()}): read {counts['frames']} frame(s), the headers "
                         f"declared {unit.n_frames}")
    delay = os.environ.get(_TEST_DELAY)
    if delay:  # test hook only (see the module docstring)
        time.sleep(float(delay))
    parts = Path(settings["parts"])
    path = parts / part_name(unit)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            (np.savez_compressed if task == "mask" else np.savez)(f, **arrays)
    return {"unit": unit.index, "part": path.name, **counts,
            "seconds": time.perf_counter() - t0, "worker": f"{socket.gethostname()}:{os.getpid()}", "engine": info}


def _detect_unit(pipe, unit: WorkUnit, settings: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Detect the peaks of ``unit``'s frames: (the part file's arrays, {"frames", "peaks"})."""
    geometry = pipe.config.geometry if (pipe.config is not None and pipe.input == "raw") else None
    frames = iter_pieces(unit.pieces, sum_n=int(settings.get("sum", 1)), first_index=unit.first_frame,
                         expect_shape=geometry and geometry.frame_shape,
                         expect_note=geometry and geometry.frame_shape_note)
    tables, sources, masked, filled = [], [], [], []
    for result in pipe.iter_results(frames):
        tables.append(result.table)
        sources.append(result.source)
        masked.append(result.masked)
        filled.append(result.filled)
    table = PeakTable.concat(tables)
    columns = {name: (np.array([str(s) for s in table.source], dtype=str) if name == "source"
                      else getattr(table, name)) for name in COLUMNS}
    arrays = {**columns, "frame_source": np.array(sources, dtype=str), "masked": np.array(masked, np.float64),
              "filled": np.array(filled, np.int64)}
    return arrays, {"frames": len(sources), "peaks": len(table)}


def read_part(path: str | os.PathLike) -> tuple[PeakTable, list[str], np.ndarray, np.ndarray]:
    """A detect part file → (peak table, frame labels, masked fractions float64[N], filled counts int64[N])."""
    with np.load(path, allow_pickle=False) as z:
        cols = {name: (np.array(z[name].tolist(), dtype=object) if name == "source" else z[name])
                for name in COLUMNS}
        return PeakTable(**cols), [str(s) for s in z["frame_source"].tolist()], z["masked"], z["filled"]
