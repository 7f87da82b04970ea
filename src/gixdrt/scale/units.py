"""Work units of a reprocessing run: the frames of the inputs cut into pieces that workers process independently.

A run's frames are those :func:`gixdrt.io.iter_frames` yields for the inputs, in the order given. A
:class:`WorkUnit` is a run of consecutive (summed) frames: it knows its global frame index, so the peak tables of
all units concatenated in unit order equal the table of a serial run (``frame`` and ``source`` columns included).

Unit kinds (``--unit``):

- ``file``: one unit per input file (all the stacks of the file);
- ``files:K``: K consecutive input files per unit (folders of single-frame files: fewer, larger units);
- ``frames:K``: each file cut into units of at most K (summed) frames; such a unit never spans two files.

With ``sum_n > 1`` a group of frames may cross a file boundary; it belongs to the unit of the file where it starts
and that unit reads the first frames of the next file too, so the groups equal the serial run's.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import GixdrtError
from ..io.readers import Stack
from ..io.sources import InputFile

__all__ = ["WorkUnit", "parse_unit", "plan_units"]

_UNIT = re.compile(r"(frames|files):(\d+)")


@dataclass(frozen=True)
class WorkUnit:
    """One unit of work: (summed) frames ``first_frame … first_frame + n_frames - 1`` of the run.

    index: the unit's position in the run (0-based; part files and the manifest use it).
    pieces: the raw frames to read, ``(input, stack, start, stop)`` runs in the run's order (see
    :func:`gixdrt.io.sources.iter_pieces`); small and picklable: paths and frame ranges, never pixels.
    """

    index: int
    first_frame: int
    n_frames: int
    pieces: tuple[tuple[InputFile, int, int, int], ...]

    def describe(self) -> str:
        """The frames read, e.g. ``scan.h5::/entry/data/data[100:200]`` or ``a.tif`` (one line)."""
        names = []
        for inp, k, start, stop in self.pieces:
            label = inp.label if inp.dataset is None else f"{inp.label}::{inp.dataset}"
            names.append(f"{label}[{start}:{stop}]" if (start, stop) != (0, 1) else label)
        return "+".join(names) if len(names) <= 3 else f"{names[0]}+...+{names[-1]}"

    @property
    def files(self) -> list[str]:
        """The paths of the input files the unit reads (each once, in order)."""
        seen: list[str] = []
        for inp, *_ in self.pieces:
            if str(inp.path) not in seen:
                seen.append(str(inp.path))
        return seen


def parse_unit(text: str, option: str = "--unit") -> dict[str, int | None]:
    """``--unit``: ``file`` → {"files_per_unit": 1, "frames_per_unit": None}, ``files:K`` → K files per unit,
    ``frames:K`` → at most K frames per unit (K ≥ 1): keyword arguments of :func:`plan_units`. Raises GixdrtError
    naming the option (``option``: its name on the command line, e.g. ``--work-unit`` for ``gixdrt mask``)."""
    if text == "file":
        return {"files_per_unit": 1, "frames_per_unit": None}
    m = _UNIT.fullmatch(text)
    if not m or int(m[2]) < 1:
        raise GixdrtError(f"{option} {text}: expected file, files:K or frames:K with K ≥ 1")
    if m[1] == "files":
        return {"files_per_unit": int(m[2]), "frames_per_unit": None}
    return {"files_per_unit": 1, "frames_per_unit": int(m[2])}


def plan_units(files: Sequence[InputFile], stacks: Sequence[Sequence[Stack | int]], *, sum_n: int = 1,
               frames_per_unit: int | None = None, files_per_unit: int = 1) -> tuple[list[WorkUnit], int]:
    """Cut the run over ``files`` into units.

    stacks: for each file, its stacks (or their frame counts), from the headers
    (:func:`gixdrt.io.sources.stack_sizes`). sum_n: frames summed into one (as ``--sum``).
    frames_per_unit: K of ``frames:K`` (at most K summed frames per unit, each unit inside one file), None: whole
    files, ``files_per_unit`` consecutive files per unit (``file``: 1, ``files:K``: K).
    Returns (units in run order, raw frames left over at the end that make no whole group of sum_n; the serial run
    drops them with a warning).
    """
    if len(stacks) != len(files):
        raise ValueError(f"{len(stacks)} stack lists for {len(files)} files")
    sizes = [[s if isinstance(s, int) else s.n for s in per_file] for per_file in stacks]
    # segments of the raw frame sequence: (file, stack, first raw index of the segment, frames)
    segments = []
    file_start = []
    pos = 0
    for f, per_file in enumerate(sizes):
        file_start.append(pos)
        for k, n in enumerate(per_file):
            if n > 0:
                segments.append((f, k, pos, n))
                pos += n
    total = pos
    groups = total // sum_n
    leftover = total - groups * sum_n
    # the groups starting in each file (or run of files_per_unit files): [first group, end group)
    step_files = 1 if frames_per_unit is not None else max(int(files_per_unit), 1)
    bounds = []
    for f in range(0, len(files), step_files):
        lo = -(-file_start[f] // sum_n)
        end = f + step_files
        hi = -(-(file_start[end] if end < len(files) else total) // sum_n)
        bounds.append((lo, min(hi, groups)))
    units: list[WorkUnit] = []
    for lo, hi in bounds:
        step = (hi - lo) if frames_per_unit is None else frames_per_unit
        for g0 in range(lo, hi, max(step, 1)):
            g1 = min(g0 + step, hi)
            raw0, raw1 = g0 * sum_n, g1 * sum_n
            pieces = []
            for f, k, start, n in segments:
                a, b = max(raw0, start), min(raw1, start + n)
                if a < b:
                    pieces.append((files[f], k, a - start, b - start))
            units.append(WorkUnit(len(units), g0, g1 - g0, tuple(pieces)))
    return units, leftover
