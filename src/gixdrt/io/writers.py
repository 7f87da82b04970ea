"""Peak-table files: CSV and HDF5, written atomically, and read back.

- ``.csv``: a header with exactly the columns of :data:`gixdrt.gixd.peaks.COLUMNS`, plus ``track`` when the table
  is linked (:func:`gixdrt.gixd.tracks.link_tracks`), one row per peak; floats as Python's shortest round-trip
  repr, NaN as an empty field; ``source`` quoted by the csv module where needed. A CSV carries no metadata.
- ``.h5``/``.hdf5``: ``/peaks``, a compound dataset with the same fields (``source`` a variable-length UTF-8
  string, ``frame``/``peak`` int64, ``track`` int64 only when linked, the rest float64); ``/frame_counts``,
  int64[n_frames] peaks per frame; optional root compound datasets given as ``datasets`` (``gixdrt detect`` writes
  ``/tracks``, the per-track summary, when linking and ``/frames``, the per-frame screening flags, when screening);
  ``/metadata``, a group whose attributes hold ``gixdrt_version``, ``created`` (ISO 8601, UTC), ``n_frames``,
  ``config`` (YAML text), ``model_card`` (JSON text) and the caller's ``metadata`` entries (strings and numbers
  as attributes, dicts and lists as JSON text listed in the ``json_keys`` attribute, arrays as datasets).

Both are written under a temporary name in the target directory and renamed when complete: an interrupted or
failed write leaves any previous file under the final name untouched and no temporary file behind.
"""
from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..gixd.peaks import COLUMNS, TRACK, PeakTable
from .atomic import atomic_path

__all__ = ["csv_rows", "h5_rows", "read_peaks", "write_h5_metadata", "write_peaks"]

_INT_COLUMNS = ("frame", "peak", TRACK)
_RESERVED = ("peaks", "frame_counts", "metadata")
_H5_SUFFIXES = (".h5", ".hdf5")
UNITS = {
    "q": "1/angstrom",
    "phi": "degree",
    "q_width": "1/angstrom",
    "phi_width": "degree",
    "x0": "polar pixel",
    "y0": "polar pixel",
    "x1": "polar pixel",
    "y1": "polar pixel",
    "intensity": "counts (uncorrected polar image)",
}


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in _H5_SUFFIXES:
        return "h5"
    raise ValueError(f"{path}: unsupported peak table format {suffix or '(no suffix)'}; use .csv, .h5 or .hdf5")


def write_peaks(
    path: str | os.PathLike,
    table: PeakTable,
    *,
    n_frames: int,
    metadata: Mapping[str, Any] | None = None,
    datasets: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write ``table`` to ``path`` (.csv, .h5 or .hdf5), atomically. Returns the path.

    n_frames: number of (summed) frames processed, including those without peaks (HDF5 ``/frame_counts``).
    metadata (HDF5 only; ignored for CSV): ``config`` (a Config, a mapping, YAML text or a path to the YAML
    file), ``model_card`` (a mapping or JSON text) and any other entries (see the module docstring).
    datasets (HDF5 only; ignored for CSV): {name: structured array} written as root compound datasets (object
    fields as UTF-8 strings), e.g. ``{"tracks": track_summary(t).to_records()}``; names other than ``peaks``,
    ``frame_counts`` and ``metadata``.
    """
    path = Path(path)
    kind = _kind(path)
    n_frames = int(n_frames)
    if n_frames < 0:
        raise ValueError(f"{path}: n_frames must be ≥ 0, got {n_frames}")
    if len(table) and (table.frame.min() < 0 or table.frame.max() >= n_frames):
        raise ValueError(
            f"{path}: frame indices {table.frame.min()}…{table.frame.max()} do not fit n_frames={n_frames}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if kind == "csv":
            _write_csv(tmp, table)
        else:
            _write_h5(tmp, table, n_frames, dict(metadata or {}), dict(datasets or {}), final=path)
    return path


# -------------------------------------------------------------------------------------------------
# CSV
# -------------------------------------------------------------------------------------------------
def _fmt(values: np.ndarray) -> list[str]:
    # repr of a Python float is the shortest string that reads back to the same float64
    return ["" if math.isnan(v) else repr(v) for v in values.tolist()]


def csv_rows(table: PeakTable) -> list[tuple[str, ...]]:
    """The CSV fields of ``table``'s rows (no header: ``table.names``), as :func:`write_peaks` writes them."""
    cols = []
    for name in table.names:
        col = getattr(table, name)
        if name in _INT_COLUMNS or name == "source":
            cols.append([str(v) for v in col.tolist()])
        else:
            cols.append(_fmt(col))
    return list(zip(*cols))


def _write_csv(path: Path, table: PeakTable) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(table.names)
        writer.writerows(csv_rows(table))


def _read_csv(path: Path) -> PeakTable:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header) not in (COLUMNS, (*COLUMNS, TRACK)):
            raise ValueError(f"{path}: not a gixdrt peak table: header {header} is not {list(COLUMNS)} "
                             f"(+ {TRACK!r} when linked)")
        names = tuple(header)
        rows = list(reader)
    for i, row in enumerate(rows):
        if len(row) != len(names):
            raise ValueError(f"{path}: line {i + 2} has {len(row)} fields, expected {len(names)}")
    cols = list(zip(*rows)) if rows else [()] * len(names)
    data: dict[str, np.ndarray] = {}
    for name, col in zip(names, cols):
        if name in _INT_COLUMNS:
            try:
                data[name] = np.array([int(v) for v in col], np.int64)
            except ValueError as exc:
                raise ValueError(f"{path}: column {name}: {exc}") from None
        elif name == "source":
            data[name] = np.array(list(col), dtype=object)
        else:
            data[name] = np.array([float(v) if v else math.nan for v in col], np.float64)
    return PeakTable(**data)


# -------------------------------------------------------------------------------------------------
# HDF5
# -------------------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """Plain Python values for YAML/JSON (NumPy scalars and arrays, tuples, paths, objects with to_dict)."""
    if hasattr(value, "to_dict") and not isinstance(value, Mapping):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _config_text(config: Any) -> str:
    import yaml

    if isinstance(config, str):
        return config
    if isinstance(config, os.PathLike):
        return Path(config).read_text(encoding="utf-8")
    return yaml.safe_dump(_plain(config), sort_keys=False, allow_unicode=True)


def _h5_dtype(names: tuple[str, ...]):
    import h5py

    fields = []
    for name in names:
        if name == "source":
            fields.append((name, h5py.string_dtype("utf-8")))
        elif name in _INT_COLUMNS:
            fields.append((name, "<i8"))
        else:
            fields.append((name, "<f8"))
    return np.dtype(fields)


def _h5_records(array: np.ndarray) -> np.ndarray:
    """A structured array with its object fields as h5py UTF-8 strings."""
    import h5py

    dtype = np.dtype([(name, h5py.string_dtype("utf-8") if array.dtype[name].kind == "O" else array.dtype[name])
                      for name in array.dtype.names])
    out = np.empty(array.shape, dtype)
    for name in array.dtype.names:
        out[name] = [str(v) for v in array[name].tolist()] if array.dtype[name].kind == "O" else array[name]
    return out


def h5_rows(table: PeakTable) -> np.ndarray:
    """``table`` as the records of the ``/peaks`` compound dataset (``track`` included when linked)."""
    rows = np.empty(len(table), _h5_dtype(table.names))
    for name in table.names:
        col = getattr(table, name)
        rows[name] = [str(v) for v in col.tolist()] if name == "source" else col
    return rows


def _write_h5(path: Path, table: PeakTable, n_frames: int, metadata: dict[str, Any], datasets: dict[str, Any], *,
              final: Path) -> None:
    import h5py

    for name, value in datasets.items():
        if name in _RESERVED or not name or "/" in name:
            raise ValueError(f"{final}: dataset name {name!r} is reserved or not a plain name")
        if not isinstance(value, np.ndarray) or value.dtype.names is None:
            raise ValueError(f"{final}: dataset {name!r} must be a structured array")
    rows = h5_rows(table)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("peaks", data=rows, **({"compression": "gzip", "chunks": True} if len(rows) else {}))
        ds.attrs["columns"] = ",".join(table.names)
        ds.attrs["units"] = json.dumps(UNITS)
        f.create_dataset("frame_counts", data=table.counts_per_frame(n_frames))
        for name, value in datasets.items():
            f.create_dataset(name, data=_h5_records(value))
        meta = f.create_group("metadata")
        write_h5_metadata(meta, metadata, final=final)
        meta.attrs["n_frames"] = np.int64(n_frames)


def write_h5_metadata(meta, metadata: Mapping[str, Any], *, final: str | os.PathLike) -> None:
    """Fill the ``/metadata`` group ``meta`` (an open h5py Group): ``gixdrt_version``, ``created`` and the
    ``metadata`` entries (see the module docstring); ``n_frames`` is the caller's. ``final`` names the file in
    errors."""
    from .. import __version__

    meta.attrs["gixdrt_version"] = __version__
    meta.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    json_keys: list[str] = []
    for key, value in metadata.items():
        key = str(key)
        if key in ("json_keys", "gixdrt_version", "created", "n_frames"):
            raise ValueError(f"{final}: metadata key {key!r} is reserved")
        if value is None:
            continue
        if key == "config":
            meta.attrs[key] = _config_text(value)
        elif key == "model_card":
            meta.attrs[key] = value if isinstance(value, str) else json.dumps(_plain(value))
        elif isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            meta.create_dataset(key, data=value)
        elif isinstance(value, (str, bool, int, float, np.generic)):
            meta.attrs[key] = value
        elif isinstance(value, os.PathLike):
            meta.attrs[key] = os.fspath(value)
        elif isinstance(value, (Mapping, list, tuple)) or hasattr(value, "to_dict"):
            meta.attrs[key] = json.dumps(_plain(value))
            json_keys.append(key)
        else:
            raise ValueError(f"{final}: metadata {key!r}: cannot store a {type(value).__name__}")
    if json_keys:
        meta.attrs["json_keys"] = json.dumps(json_keys)


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _read_h5(path: Path) -> tuple[PeakTable, dict[str, Any]]:
    import h5py

    with h5py.File(path, "r") as f:
        if "peaks" not in f:
            raise ValueError(f"{path}: not a gixdrt peak table: no /peaks dataset")
        rows = f["peaks"][()]
        missing = [name for name in COLUMNS if name not in (rows.dtype.names or ())]
        if missing:
            raise ValueError(f"{path}: /peaks lacks the fields {', '.join(missing)}")
        data = {}
        for name in (*COLUMNS, TRACK) if TRACK in (rows.dtype.names or ()) else COLUMNS:
            col = rows[name]
            data[name] = np.array([_attr(v) for v in col], dtype=object) if name == "source" else col
        meta: dict[str, Any] = {}
        group = f.get("metadata")
        if group is not None:
            meta.update({key: _attr(value) for key, value in group.attrs.items()})
            for key, item in group.items():
                if isinstance(item, h5py.Dataset):
                    meta[key] = item[()]
        for key in json.loads(meta.pop("json_keys", "[]")):
            meta[key] = json.loads(meta[key])
        if "frame_counts" in f:
            meta["frame_counts"] = f["frame_counts"][()]
        if "image_ids" in f:  # a live series' file: the image ids processed, in the order they came
            meta["image_ids"] = f["image_ids"][()]
        for key, item in f.items():
            if key not in _RESERVED and isinstance(item, h5py.Dataset) and item.dtype.names is not None:
                meta[key] = _decoded(item[()])
    return PeakTable(**data), meta


def _decoded(records: np.ndarray) -> np.ndarray:
    """A compound dataset read back: its string fields as Python str (object fields)."""
    names = records.dtype.names
    strings = [n for n in names if records.dtype[n].kind in "OS"]
    if not strings:
        return records
    out = np.empty(records.shape, [(n, object if n in strings else records.dtype[n]) for n in names])
    for n in names:
        out[n] = [_attr(v) for v in records[n].tolist()] if n in strings else records[n]
    return out


def read_peaks(path: str | os.PathLike) -> tuple[PeakTable, dict[str, Any]]:
    """Read a peak table written by :func:`write_peaks` (linked when the file has a ``track`` column).

    Returns (table, metadata). For HDF5, metadata holds the ``/metadata`` entries (``config`` as YAML text,
    ``model_card`` as JSON text, other dicts/lists decoded) plus ``frame_counts`` (int64[n_frames]) and each other
    root compound dataset under its name (``tracks``, ``frames``: structured arrays, strings as str); for CSV it is
    empty. A live series' file (:class:`gixdrt.live.sinks.SeriesTableSink`) adds ``image_ids`` (int64, the image ids
    processed) and its series entries (``series_unique_id``, ``end_reason``, ``counters``, ...).
    """
    path = Path(path)
    kind = _kind(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    if kind == "csv":
        return _read_csv(path), {}
    return _read_h5(path)
