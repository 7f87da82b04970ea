"""The run manifest: what a reprocessing run is (inputs, settings) and which units are finished.

``OUT.manifest.json`` next to the output, rewritten atomically after every finished unit::

    {"format": "gixdrt-run-manifest", "version": 1, "output": "/abs/run.h5",
     "fingerprint": {"settings": {...}, "model": [...], "config_sha256": "...", "mask_sha256": "...",
                     "inputs": [{"path": ..., "size": ..., "mtime_ns": ...}], "unit": "frames:100",
                     "n_units": 40, "n_frames": 4000},
     "engine": {...}, "done": {"3": {"part": "unit-000003.npz", "frames": 100, "peaks": 812, "seconds": 41.2,
                                    "worker": "node07:12345"}}}

A finished unit's entry keeps its summary's plain values (``peaks`` for detect, ``spots`` per method for mask).
A run that finds a manifest of the same output resumes it: units listed under ``done`` whose part file exists are
skipped. A manifest whose fingerprint differs (other settings, model, config, mask, inputs or units) is refused
with a one-line error naming the first difference, unless the run starts fresh (``--fresh``).
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import GixdrtError

__all__ = ["Manifest", "ManifestError", "file_fingerprint", "model_fingerprint"]

FORMAT = "gixdrt-run-manifest"
VERSION = 1


class ManifestError(GixdrtError, ValueError):
    """A run manifest cannot be resumed: unreadable, or recorded with other settings or inputs."""


def file_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """{"path" (absolute), "size" (bytes), "mtime_ns"} of a file."""
    st = os.stat(path)
    return {"path": os.path.abspath(os.fspath(path)), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def model_fingerprint(spec: str) -> list[dict[str, Any]]:
    """The files of a model given as a path (a checkpoint file or a folder), as :func:`file_fingerprint`s; [] for a
    named model (``default``, ``published:...``: fixed by the installed version)."""
    p = Path(spec)
    if p.is_file():
        return [file_fingerprint(p)]
    if p.is_dir():
        return [file_fingerprint(f) for f in sorted(p.rglob("*")) if f.is_file()]
    return []


def _difference(old: Mapping[str, Any], new: Mapping[str, Any], unit_option: str = "--unit") -> str:
    """One phrase naming the first difference between two fingerprints (``unit_option``: the command's name of the
    work unit option)."""
    for key in ("settings", "model", "config_sha256", "poni_sha256", "mask_sha256", "inputs", "unit", "n_units",
                "n_frames", "plan"):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key == "settings" and isinstance(a, dict) and isinstance(b, dict):
            for name in sorted(set(a) | set(b)):
                if a.get(name) != b.get(name):
                    return f"setting {name} was {a.get(name)!r}, now {b.get(name)!r}"
        if key == "inputs" and isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                return f"{len(a)} input file(s) then, {len(b)} now"
            for x, y in zip(a, b):
                if x != y:
                    return f"input {y} was {x}"
        names = {"model": "the model's files changed", "config_sha256": "the config file changed",
                 "poni_sha256": "the PONI file changed", "mask_sha256": "the masks changed",
                 "unit": f"{unit_option} was {a}, now {b}",
                 "n_units": f"{a} units then, {b} now", "n_frames": f"{a} frames then, {b} now",
                 "plan": "the inputs' frame counts changed"}
        return names.get(key, f"{key} changed")
    return "nothing"


class Manifest:
    """A run's manifest file (see the module docstring). ``done``: {unit index: summary}."""

    def __init__(self, path: str | os.PathLike, fingerprint: Mapping[str, Any], output: str | os.PathLike):
        self.path = Path(path)
        self.fingerprint = json.loads(json.dumps(fingerprint))
        self.output = os.path.abspath(os.fspath(output))
        self.engine: dict[str, Any] | None = None
        self.done: dict[int, dict[str, Any]] = {}

    @classmethod
    def open(cls, path: str | os.PathLike, fingerprint: Mapping[str, Any], output: str | os.PathLike, *,
             fresh: bool = False, unit_option: str = "--unit") -> Manifest:
        """The manifest at ``path`` to resume (its fingerprint must equal ``fingerprint``), or a new one when there
        is none or ``fresh``. Raises ManifestError naming the file and the first difference (``unit_option``: the
        command's work unit option, named when the units differ)."""
        m = cls(path, fingerprint, output)
        if fresh or not m.path.exists():
            return m
        try:
            data = json.loads(m.path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise ValueError("not a gixdrt run manifest")
        except (OSError, ValueError) as exc:
            raise ManifestError(f"{m.path}: cannot resume from it ({' '.join(str(exc).split())}); remove it or pass "
                                "--fresh") from None
        if data.get("fingerprint") != m.fingerprint:
            what = _difference(data.get("fingerprint") or {}, m.fingerprint, unit_option)
            raise ManifestError(f"{m.path}: the unfinished run recorded there differs: {what}; rerun it as it was, "
                                "or pass --fresh to start over (its finished units are then discarded)")
        m.engine = data.get("engine")
        m.done = {int(k): v for k, v in (data.get("done") or {}).items()}
        return m

    def finished(self, parts: str | os.PathLike) -> dict[int, dict[str, Any]]:
        """The finished units still valid: their part file is in ``parts`` and the input files they read have the
        size and modification time recorded (a unit whose part is missing or whose file was replaced since, e.g. a
        corrupt file fixed, is done again)."""
        out = {}
        for k, v in self.done.items():
            if not (Path(parts) / v["part"]).is_file():
                continue
            try:
                if [file_fingerprint(f["path"]) for f in v.get("inputs", [])] != v.get("inputs", []):
                    continue
            except OSError:
                continue
            out[k] = v
        return out

    def record(self, summary: Mapping[str, Any], inputs: Sequence[str | os.PathLike] = ()) -> None:
        """Add a finished unit (a :func:`~gixdrt.scale.worker.process_unit` summary: its plain values are kept, the
        engine once for the run) that read the files ``inputs`` (their size and modification time are recorded) and
        save."""
        kept = {k: v for k, v in summary.items() if k not in ("unit", "engine")}
        self.done[int(summary["unit"])] = {**kept, "inputs": inputs_fingerprint(inputs)}
        if self.engine is None and summary.get("engine") is not None:
            self.engine = summary["engine"]
        self.save()

    def save(self) -> None:
        from ..io.atomic import atomic_path

        data = {"format": FORMAT, "version": VERSION, "output": self.output, "fingerprint": self.fingerprint,
                "engine": self.engine, "done": {str(k): v for k, v in sorted(self.done.items())}}
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def inputs_fingerprint(paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """:func:`file_fingerprint` of each input file."""
    return [file_fingerprint(p) for p in paths]
