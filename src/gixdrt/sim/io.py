"""Simulated data sets on disk: one ``.npz`` per set (plain NumPy arrays, no pickles).

Members::

    images.npy       float32[n, H, W]   network-input images in [0, 1] (ours: contrast-processed)
    boxes.npy        float32[ΣK, 4]     (x0, y0, x1, y1) of all images, concatenated
    n_boxes.npy      int64[n]           boxes per image (image i owns rows offsets[i] : offsets[i] + n_boxes[i])
    indices.npy      int64[n]           image index within the seed's stream
    peak_<field>.npy [ΣK]               per-label metadata (gixdrt.sim.PEAK_FIELDS), concatenated
    meta.npy         0-d str            JSON: format, version, seed, size, config (SimConfig.to_dict()), info;
                                        "simulator": "paper" for a paper-mode set (config: PaperSimConfig)

:func:`simulate_to_file` streams the images into the archive as they are made (memory stays at one
image per worker plus the labels), optionally with several worker processes; the file only appears
under its final name once complete.
"""
from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..io.atomic import atomic_path
from .config import SimConfig
from .core import DEFAULT_SIZE, PEAK_FIELDS, SimBatch, Simulator, _check_size
from .paper import PaperSimConfig

__all__ = ["FORMAT", "FORMAT_VERSION", "load_npz", "save_npz", "simulate_to_file"]

FORMAT = "gixdrt-sim"
FORMAT_VERSION = 1


class _NpzWriter:
    """Write .npy members into a zip one by one; array data may be streamed in pieces."""

    def __init__(self, path: Path, compress: bool):
        self.zf = zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED,
                                  allowZip64=True)

    def add(self, name: str, arr: np.ndarray) -> None:
        arr = np.asarray(arr)
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        with self.zf.open(f"{name}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, arr, allow_pickle=False)

    def stream(self, name: str, dtype: Any, shape: tuple[int, ...]):
        """A writable binary stream that must receive exactly prod(shape) items of ``dtype`` (C order)."""
        f = self.zf.open(f"{name}.npy", "w", force_zip64=True)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_2_0(f, header)
        return f

    def close(self) -> None:
        self.zf.close()


def _meta(seed: int, size: tuple[int, int], config: SimConfig | PaperSimConfig, info: list[dict]) -> np.ndarray:
    doc = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "seed": int(seed),
        "size": list(size),
        **({"simulator": "paper"} if isinstance(config, PaperSimConfig) else {}),
        "config": config.to_dict(),
        "info": [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in d.items()} for d in info],
    }
    return np.array(json.dumps(doc))


def _write_labels(w: _NpzWriter, boxes: Sequence[np.ndarray], peaks: Sequence[dict], indices: np.ndarray) -> None:
    w.add("boxes", np.concatenate([np.asarray(b, np.float32).reshape(-1, 4) for b in boxes]) if len(boxes)
          else np.zeros((0, 4), np.float32))
    w.add("n_boxes", np.array([len(b) for b in boxes], np.int64))
    w.add("indices", np.asarray(indices, np.int64))
    for name, dtype in PEAK_FIELDS.items():
        parts = [np.asarray(p[name], dtype) for p in peaks]
        w.add(f"peak_{name}", np.concatenate(parts) if parts else np.zeros(0, dtype))


def save_npz(path: str | os.PathLike, batch: SimBatch, *, compress: bool = False) -> Path:
    """Write ``batch`` to ``path`` (atomically). compress: deflate the members (images barely shrink)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        w = _NpzWriter(tmp, compress)
        try:
            w.add("images", np.asarray(batch.images, np.float32))
            _write_labels(w, batch.boxes, batch.peaks, batch.indices)
            w.add("meta", _meta(batch.seed, batch.size, batch.config, batch.info))
        finally:
            w.close()
    return path


def load_npz(path: str | os.PathLike) -> SimBatch:
    """Read a set written by :func:`save_npz` / :func:`simulate_to_file`."""
    with np.load(Path(path), allow_pickle=False) as z:
        names = set(z.files)
        need = {"images", "boxes", "n_boxes", "indices", "meta"} | {f"peak_{n}" for n in PEAK_FIELDS}
        missing = sorted(need - names)
        if missing:
            raise ValueError(f"{path}: not a gixdrt simulated set (missing {', '.join(missing)})")
        meta = json.loads(str(z["meta"][()]))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
        if int(meta.get("version", 0)) > FORMAT_VERSION:
            raise ValueError(f"{path}: format version {meta['version']} is newer than this gixdrt ({FORMAT_VERSION})")
        images = z["images"]
        n_boxes = z["n_boxes"]
        offsets = np.concatenate([[0], np.cumsum(n_boxes)])
        all_boxes = z["boxes"]
        cols = {name: z[f"peak_{name}"] for name in PEAK_FIELDS}
        boxes = [all_boxes[offsets[i] : offsets[i + 1]] for i in range(len(n_boxes))]
        peaks = [{name: col[offsets[i] : offsets[i + 1]] for name, col in cols.items()} for i in range(len(n_boxes))]
        return SimBatch(
            images=images,
            boxes=boxes,
            peaks=peaks,
            info=list(meta.get("info", [{} for _ in range(len(images))])),
            indices=z["indices"],
            seed=int(meta["seed"]),
            config=_config_from_meta(meta, path),
        )


def _config_from_meta(meta: dict, path: Any) -> SimConfig | PaperSimConfig:
    kind = meta.get("simulator", "ours")
    if kind == "paper":
        return PaperSimConfig.from_dict(meta["config"])
    if kind != "ours":
        raise ValueError(f"{path}: unknown simulator {kind!r} in the set's metadata")
    return SimConfig.from_dict(meta["config"])


# -------------------------------------------------------------------------------------------------
# streaming generation
# -------------------------------------------------------------------------------------------------
_WORKER_SIM: Simulator | None = None


def _worker_init(config: dict, seed: int, size: tuple[int, int], paper: bool = False) -> None:
    global _WORKER_SIM
    cfg = PaperSimConfig.from_dict(config) if paper else SimConfig.from_dict(config)
    _WORKER_SIM = Simulator(cfg, seed, size=size)


def _worker_chunk(indices: range) -> list[tuple]:
    assert _WORKER_SIM is not None
    out = []
    for i in indices:
        s = _WORKER_SIM.sample(i)
        out.append((s.image, s.boxes, s.peaks, s.info))
    return out


def simulate_to_file(
    n: int,
    seed: int,
    out: str | os.PathLike,
    *,
    size: Sequence[int] = DEFAULT_SIZE,
    config: SimConfig | PaperSimConfig | dict[str, Any] | None = None,
    progress: bool = True,
    start: int = 0,
    workers: int = 1,
    compress: bool = False,
) -> Path:
    """Simulate images start … start + n − 1 of ``seed`` straight into ``out`` (.npz, see the module doc).

    workers > 1 runs that many processes (the result is identical: images depend only on their index).
    progress: a tqdm bar on stderr.
    """
    if n < 0:
        raise ValueError(f"n must be ≥ 0, got {n}")
    if workers < 1:
        raise ValueError(f"workers must be ≥ 1, got {workers}")
    h, w = _check_size(size)
    sim = Simulator(config, seed, size=(h, w))
    cfg = sim.config
    out = Path(out)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=f"simulate {out.name}", unit="img")
    boxes: list[np.ndarray] = []
    peaks: list[dict] = []
    infos: list[dict] = []

    def consume(f, items) -> None:
        for image, b, p, info in items:
            f.write(np.ascontiguousarray(image, np.float32).tobytes())
            boxes.append(b)
            peaks.append(p)
            infos.append(info)
            if bar is not None:
                bar.update(1)

    try:
        with atomic_path(out) as tmp:
            wr = _NpzWriter(tmp, compress)
            try:
                with wr.stream("images", np.float32, (n, h, w)) as f:
                    if workers == 1 or n < 2:
                        for i in range(start, start + n):
                            s = sim.sample(i)
                            consume(f, [(s.image, s.boxes, s.peaks, s.info)])
                    else:
                        import multiprocessing as mp

                        chunk = max(1, min(16, n // (4 * workers) or 1))
                        chunks = [range(a, min(a + chunk, start + n)) for a in range(start, start + n, chunk)]
                        with ProcessPoolExecutor(
                            workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                            initargs=(cfg.to_dict(), sim.seed, (h, w), isinstance(cfg, PaperSimConfig)),
                        ) as ex:
                            for items in ex.map(_worker_chunk, chunks):
                                consume(f, items)
                _write_labels(wr, boxes, peaks, np.arange(start, start + n, dtype=np.int64))
                wr.add("meta", _meta(sim.seed, (h, w), cfg, infos))
            finally:
                wr.close()
    finally:
        if bar is not None:
            bar.close()
    return out
