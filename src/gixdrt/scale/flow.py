"""The client side of a command's ``--cluster`` run, shared by ``gixdrt detect`` and ``gixdrt mask``.

:func:`plan_run` cuts the inputs into units from their headers; :class:`ClusterRun` keeps the run's state next to the
output ``OUT``, ``OUT.parts/`` (the units' part files and the run's arrays such as its mask) and
``OUT.manifest.json`` (:mod:`gixdrt.scale.manifest`): it opens or resumes the manifest, runs the units not finished
on the cluster (:func:`gixdrt.scale.runner.run_units`) with a progress bar, reports failed units one line each and
says what is kept, and once the command has written its output from the merged parts removes both. The command
itself builds the settings and the fingerprint, merges the parts (in unit order) and writes its output atomically.

Exit status of a run with failed units (:meth:`ClusterRun.run`): 2 when every failure is bad input (a corrupt file),
1 otherwise (e.g. a worker that died more often than the scheduler allows).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GixdrtError
from .units import WorkUnit

__all__ = ["ClusterRun", "check_cluster_options", "check_part", "local_threads", "plan_digest", "plan_run",
           "print_rates", "run_fingerprint"]


def check_cluster_options(cluster: str | None, unit: str | None, retries: int | None, fresh: bool, *,
                          unit_option: str = "--unit") -> None:
    """The cluster options of a command: without ``--cluster`` none of the work unit option (named
    ``unit_option``), ``--retries`` and ``--fresh`` may be given; with it, the cluster and the unit must parse.
    Raises GixdrtError naming the option."""
    if cluster is None:
        for option, value in ((unit_option, unit), ("--retries", retries), ("--fresh", fresh or None)):
            if value is not None:
                raise GixdrtError(f"{option}: needs --cluster")
        return
    from .runner import check_cluster
    from .units import parse_unit

    check_cluster(cluster)
    parse_unit(unit or "file", unit_option)


def check_part(path: str | os.PathLike, unit: WorkUnit, n: int) -> None:
    """A part file ``path`` holding ``n`` frames for ``unit``: GixdrtError naming it unless ``n`` is the unit's."""
    if n != unit.n_frames:
        raise GixdrtError(f"{path}: holds {n} frame(s), unit {unit.index} has {unit.n_frames}; remove it and run "
                          "again")


def plan_run(inputs: Sequence[str], unit_spec: str, *, option: str = "--unit", sum_n: int = 1,
             expect_shape: tuple[int, int] | None = None, expect_note: str | None = None):
    """The inputs (paths, ``FILE.h5::/dataset`` specs, globs) cut into units of ``unit_spec`` (``file``,
    ``files:K``, ``frames:K``; ``option`` names it in errors) from the headers, every frame shape checked against
    ``expect_shape``. Returns (input files, units, raw frames left over by ``sum_n`` groups, warned about)."""
    from ..io.sources import resolve_inputs, stack_sizes
    from .units import parse_unit, plan_units

    per_unit = parse_unit(unit_spec, option)
    files = resolve_inputs(inputs)
    sizes = stack_sizes(files, expect_shape=expect_shape, expect_note=expect_note)
    units, leftover = plan_units(files, sizes, sum_n=sum_n, **per_unit)
    if leftover:
        warnings.warn(f"{leftover} frame(s) left over at the end: the frames do not divide into groups of "
                      f"{sum_n}; the incomplete last group is dropped", stacklevel=2)
    return files, units, leftover


def plan_digest(units: Sequence[WorkUnit]) -> str:
    """sha256 of the units' frame ranges (which frames of which stack of which file each unit reads)."""
    h = hashlib.sha256()
    for u in units:
        h.update(repr((u.index, u.first_frame, u.n_frames,
                       [(str(inp.path), inp.dataset, k, a, b) for inp, k, a, b in u.pieces])).encode())
    return h.hexdigest()


def run_fingerprint(settings: Mapping[str, Any], files, units: Sequence[WorkUnit], unit_spec: str,
                    **extra: Any) -> dict[str, Any]:
    """What a run is, for its manifest: the settings that change results (``settings``: plain values), the model's
    files (``settings["model"]`` as a path), the inputs, the units and frames, and ``extra`` (file hashes)."""
    from .manifest import model_fingerprint

    model = settings.get("model")
    return {"settings": dict(settings), "model": model_fingerprint(model) if model else [], **extra,
            "inputs": [str(f.path.resolve()) for f in files], "unit": unit_spec, "n_units": len(units),
            "n_frames": sum(u.n_frames for u in units), "plan": plan_digest(units)}


def local_threads(cluster: str, threads: int | None) -> int | None:
    """CPU threads per worker: ``threads`` when given, else with ``local:N`` this machine's cores / N (the N workers
    share them), else None (the runtime's default)."""
    from .runner import check_cluster

    n_local = check_cluster(cluster)
    if threads is None and cluster.startswith("local"):
        threads = max(1, (os.cpu_count() or 1) // (n_local or os.cpu_count() or 1))
    return threads


class ClusterRun:
    """One ``--cluster`` run of ``command`` writing ``out``: its parts folder and manifest (see the module docstring).

    inputs: the files the command reads (the parts folder and the manifest may be none of them).
    unit_option: the command's work unit option, named in messages.
    """

    def __init__(self, command: str, out: str | os.PathLike, inputs: Sequence[str | os.PathLike], *,
                 unit_option: str = "--unit"):
        from ..io.atomic import check_output

        self.command = command
        self.out = Path(out)
        self.parts = self.out.with_name(self.out.name + ".parts")
        self.manifest_path = self.out.with_name(self.out.name + ".manifest.json")
        self.unit_option = unit_option
        inputs = [str(p) for p in inputs]
        check_output(self.manifest_path, inputs=inputs, option="--out (its manifest)")
        check_output(self.parts, inputs=inputs, option="--out (its parts folder)", directory=True)
        self.manifest = None
        self.units: list[WorkUnit] = []
        self.finished: dict[int, dict[str, Any]] = {}  # units finished before (set by open)
        self.todo: list[WorkUnit] = []
        self.resumed = 0  # frames of the units finished before
        self.report = None

    def open(self, units: Sequence[WorkUnit], fingerprint: Mapping[str, Any], *, fresh: bool = False,
             arrays: Mapping[str, np.ndarray] | None = None) -> None:
        """Open the manifest (resume, or start over when there is none or ``fresh``: the parts of another run are
        removed, never mixed into this one) and write ``arrays`` into the parts folder (name → array, ``.npy``
        files the workers read, e.g. ``mask.npy``). Raises ManifestError when the recorded run differs."""
        from ..io.atomic import atomic_path
        from .manifest import Manifest

        self.units = list(units)
        self.manifest = Manifest.open(self.manifest_path, fingerprint, self.out, fresh=fresh,
                                      unit_option=self.unit_option)
        if fresh or not self.manifest_path.exists():
            shutil.rmtree(self.parts, ignore_errors=True)
        self.parts.mkdir(parents=True, exist_ok=True)
        for name, value in (arrays or {}).items():
            with atomic_path(self.parts / name) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, value)
        self.manifest.save()
        self.finished = self.manifest.finished(self.parts)
        self.todo = [u for u in self.units if u.index not in self.finished]
        self.resumed = sum(u.n_frames for u in self.units if u.index in self.finished)

    @property
    def n_frames(self) -> int:
        return sum(u.n_frames for u in self.units)

    def announce(self, unit_spec: str, what: str, cluster: str) -> None:
        """The run's first line on stderr: frames, units, ``what`` (e.g. the model), the cluster, what is resumed."""
        print(f"gixdrt {self.command}: {self.n_frames} frame(s) in {len(self.units)} unit(s) ({unit_spec}), {what}, "
              f"cluster {cluster}"
              + (f"; resuming {self.manifest_path}: {len(self.finished)} unit(s), {self.resumed} frame(s) done before"
                 if self.finished else ""), file=sys.stderr)

    def run(self, settings: Mapping[str, Any], cluster: str, *, retries: int | None = None, progress: bool = True,
            tally: Callable[[dict[str, Any]], Mapping[str, int]] | None = None, gpu: bool = False) -> int | None:
        """Run the units not finished on ``cluster`` (``local:N`` or an address; ``gpu``: the local workers offer
        GPU=1), each retried ``retries`` times (None: 2). progress: a bar on stderr, its postfix the sums of
        ``tally(summary)``. Returns None when every unit is finished (or nothing was left to do), else the exit
        status after one line per failed unit and one saying what is kept. An interruption (Ctrl-C, SIGTERM, a lost
        scheduler) says what is kept and is raised again."""
        from .runner import connect, run_units

        if not self.todo:
            return None
        bar = None
        if self.n_frames > 1 and progress:
            from tqdm import tqdm

            bar = tqdm(total=self.n_frames, initial=self.resumed, unit="frame", file=sys.stderr, dynamic_ncols=True)
        sums: dict[str, int] = {}

        def on_done(summary: dict[str, Any]) -> None:
            if bar is None:
                return
            bar.update(summary["frames"])
            if tally is not None:
                for k, v in tally(summary).items():
                    sums[k] = sums.get(k, 0) + v
                bar.set_postfix(**sums, refresh=False)

        client, close = connect(cluster, gpu=gpu)
        prefix = f"gixdrt {self.command}:"
        try:
            self.report = run_units(client, self.todo, settings, manifest=self.manifest, on_done=on_done,
                                    retries=2 if retries is None else retries)
        except BaseException:  # what is finished stays for the next run
            if bar is not None:
                bar.close()
            if self.manifest.done:
                print(f"{prefix} {len(self.manifest.done)} of {len(self.units)} unit(s) finished are kept in "
                      f"{self.parts} ({self.manifest_path}); the same command resumes", file=sys.stderr)
            raise
        finally:
            if bar is not None:
                bar.close()
            close()
        report = self.report
        if not report.failures:
            return None
        for failure in report.failures:
            print(f"{prefix} unit {failure.unit.index} ({failure.unit.describe()}) failed: {failure.message}",
                  file=sys.stderr)
        frames_done = sum(s["frames"] for s in self.manifest.done.values())
        print(f"{prefix} {len(report.failures)} of {len(self.units)} unit(s) failed; {len(self.manifest.done)} "
              f"unit(s), {frames_done} of {self.n_frames} frame(s) finished and kept in {self.parts} "
              f"({self.manifest_path}); no output written: fix the inputs and run the same command again to process "
              "only the missing units", file=sys.stderr)
        print_rates(report)
        return 2 if all(f.user_error for f in report.failures) else 1

    @property
    def engine(self) -> dict[str, Any]:
        """The engine info the workers reported (recorded in the manifest; {} when none)."""
        return (self.manifest.engine if self.manifest is not None else None) or {}

    @property
    def seconds(self) -> float:
        return self.report.seconds if self.report is not None else 0.0

    @property
    def frames_now(self) -> int:
        """Frames processed by this run (not resumed)."""
        return sum(s["frames"] for s in self.report.done.values()) if self.report is not None else 0

    def rate_text(self) -> str:
        """``S s (R frames/s[; K frame(s) done before])`` of this run."""
        seconds = self.seconds
        return (f"{seconds:.2f} s ({self.frames_now / seconds if seconds > 0 else float('inf'):.2f} frames/s"
                + (f"; {self.resumed} frame(s) done before" if self.resumed else "") + ")")

    def finish(self) -> None:
        """The output is written: remove the parts folder and the manifest (the output is the run's record)."""
        shutil.rmtree(self.parts, ignore_errors=True)
        if self.manifest is not None:
            self.manifest.remove()


def print_rates(report, stream=None) -> None:
    """One line for the run and one per worker: units, frames, frames/s (to ``stream``, default stderr)."""
    stream = sys.stderr if stream is None else stream
    workers = report.per_worker()
    frames = sum(w["frames"] for w in workers.values())
    rate = frames / report.seconds if report.seconds > 0 else float("inf")
    print(f"  cluster: {len(report.done)} unit(s), {frames} frame(s) in {report.seconds:.2f} s on {len(workers)} "
          f"worker(s): {rate:.2f} frames/s in total", file=stream)
    for name, w in sorted(workers.items()):
        print(f"    {name}: {w['units']} unit(s), {w['frames']} frame(s), {w['rate']:.2f} frames/s while busy "
              f"({w['busy']:.2f} s)", file=stream)
