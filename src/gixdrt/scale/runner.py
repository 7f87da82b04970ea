"""Running work units on a Dask cluster: a local one (``local:N``) or one that is already up (a scheduler address).

Each worker builds the engine once (:class:`EnginePlugin`, a Dask worker plugin: also on workers that join or are
restarted later) and then runs :func:`gixdrt.scale.worker.process_unit` per unit: tasks carry the unit (paths and
frame ranges) and a small settings dict, never pixels or the model, and return a small summary. A unit that raises
is retried (``retries``); a worker that dies mid-unit has its unit rescheduled on another worker by the scheduler
(the nanny restarts the worker). A unit that still fails is reported with its error while the others finish.
"""
from __future__ import annotations

import logging
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import GixdrtError
from .manifest import Manifest
from .units import WorkUnit
from .worker import engine, process_unit

__all__ = ["EnginePlugin", "RunReport", "UnitFailure", "check_cluster", "connect", "run_units"]

_LOCAL = re.compile(r"local(?::(\d+))?")
#: errors that mean bad input (exit status 2 when every failed unit failed with one of them)
_USER_ERRORS = (GixdrtError, ValueError, OSError, MemoryError, UnicodeError)


try:
    from distributed.diagnostics.plugin import WorkerPlugin as _WorkerPlugin
except ImportError:  # the plugin is only registered where distributed is installed
    _WorkerPlugin = object


class EnginePlugin(_WorkerPlugin):
    """Build the engine of ``settings`` when a worker starts (or when the plugin is registered), so the first unit
    does not pay for it. A build that fails is left to the units, which then report its error."""

    name = "gixdrt-engine"

    def __init__(self, settings: Mapping[str, Any]):
        self.settings = dict(settings)

    def setup(self, worker=None) -> None:
        try:
            engine(self.settings)
        except Exception:  # each unit raises it again, reported with the unit
            pass


@dataclass(frozen=True)
class UnitFailure:
    """A unit that failed after its retries: the unit, a one-line message, and whether it is bad input."""

    unit: WorkUnit
    message: str
    user_error: bool


@dataclass
class RunReport:
    """What a run did: ``done`` {unit index: summary} of this run's units, ``failures``, wall ``seconds``."""

    done: dict[int, dict[str, Any]] = field(default_factory=dict)
    failures: list[UnitFailure] = field(default_factory=list)
    seconds: float = 0.0

    def per_worker(self) -> dict[str, dict[str, float]]:
        """{worker: {"units", "frames", "busy" (seconds in units), "rate" (frames per busy second)}}."""
        out: dict[str, dict[str, float]] = {}
        for s in self.done.values():
            w = out.setdefault(s["worker"], {"units": 0, "frames": 0, "busy": 0.0})
            w["units"] += 1
            w["frames"] += s["frames"]
            w["busy"] += s["seconds"]
        for w in out.values():
            w["rate"] = w["frames"] / w["busy"] if w["busy"] > 0 else float("inf")
        return out


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if not isinstance(exc, GixdrtError):
        text = f"{type(exc).__name__}: {text}"
    return " ".join(text.split())


def check_cluster(cluster: str) -> int | None:
    """``--cluster``: ``local`` or ``local:N`` → N (None: one per core), a scheduler address → None.
    Raises GixdrtError naming the option."""
    m = _LOCAL.fullmatch(cluster)
    if m:
        n = int(m[1]) if m[1] else None
        if n is not None and not 1 <= n <= 4096:
            raise GixdrtError(f"--cluster {cluster}: N must be 1 … 4096 worker processes")
        return n
    if "://" not in cluster:
        raise GixdrtError(f"--cluster {cluster}: expected local:N or a scheduler address such as tcp://HOST:8786")
    return None


def connect(cluster: str, *, gpu: bool = False):
    """A Dask client for ``--cluster``: ``local:N`` (N worker processes on this machine, one thread each,
    no dashboard; with ``gpu`` each offers the resource GPU=1) or a scheduler address (``tcp://host:8786``).
    Returns (client, close) where close() shuts down what was started."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise GixdrtError("--cluster: needs dask.distributed: pip install 'gixdrt[dask]'") from None
    n = check_cluster(cluster)
    if _LOCAL.fullmatch(cluster):
        import os

        n = n or os.cpu_count() or 1
        with warnings.catch_warnings():  # the scheduler's HTTP routes take another port when 8787 is taken: fine
            warnings.filterwarnings("ignore", message="Port .* is already in use")
            local = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                                 resources={"GPU": 1} if gpu else None, silence_logs=logging.CRITICAL)
        client = Client(local)

        def close() -> None:
            client.close()
            local.close()

        return client, close
    try:
        client = Client(cluster, timeout="30s")
    except (OSError, TimeoutError) as exc:
        raise GixdrtError(f"--cluster {cluster}: cannot reach the scheduler ({_one_line(exc)})") from None
    return client, client.close


def run_units(client, units: Sequence[WorkUnit], settings: Mapping[str, Any], *, manifest: Manifest | None = None,
              retries: int = 2, on_done: Callable[[dict[str, Any]], None] | None = None,
              plugin: bool = True) -> RunReport:
    """Run ``units`` on the cluster of ``client``; each finished unit is recorded in ``manifest`` (when given) and
    passed to ``on_done`` as it completes. Settings with a CUDA device ask each task for the resource GPU=1 (one
    unit per GPU at a time); a cluster offering none is refused. Returns the :class:`RunReport`; units that failed
    after ``retries`` retries are listed in its failures, the others finished."""
    from distributed import as_completed

    report = RunReport()
    if not units:
        return report
    resources = None
    if str(settings.get("device") or "").startswith("cuda"):
        resources = {"GPU": 1}
        info = client.scheduler_info()
        workers = info.get("workers", {}).values()
        if workers and not any(w.get("resources", {}).get("GPU") for w in workers):
            raise GixdrtError("--device cuda: no worker of the cluster offers the resource GPU (start the workers "
                              "with --resources GPU=1, one per GPU)")
    if plugin:
        client.register_plugin(EnginePlugin(settings), name=EnginePlugin.name)
    t0 = time.perf_counter()
    futures = {}
    for unit in units:
        future = client.submit(process_unit, unit, dict(settings), key=f"gixdrt-unit-{unit.index}-{time.time_ns()}",
                               retries=retries, pure=False, resources=resources)
        futures[future.key] = (future, unit)
    try:
        for future in as_completed([f for f, _ in futures.values()]):
            unit = futures[future.key][1]
            if future.status == "error":
                exc = future.exception()
                report.failures.append(UnitFailure(unit, _one_line(exc), isinstance(exc, _USER_ERRORS)))
                continue
            summary = future.result()
            report.done[unit.index] = summary
            if manifest is not None:
                manifest.record(summary, unit.files)
            if on_done is not None:
                on_done(summary)
            future.release()
    finally:
        client.cancel([f for f, _ in futures.values()])
        report.seconds = time.perf_counter() - t0
    report.failures.sort(key=lambda f: f.unit.index)
    return report
