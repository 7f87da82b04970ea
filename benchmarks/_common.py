"""Shared helpers of the benchmark scripts: timing statistics and result files with device and versions."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def timeit(fn: Callable[[], Any], runs: int, warmup: int = 3, sync: Callable[[], Any] | None = None) -> dict[str, float]:
    """Run ``fn`` ``warmup`` + ``runs`` times; return median/p99/min/mean in milliseconds."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times[i] = time.perf_counter() - t0
    ms = times * 1e3
    return {
        "median_ms": float(np.median(ms)),
        "p99_ms": float(np.percentile(ms, 99)),
        "min_ms": float(ms.min()),
        "mean_ms": float(ms.mean()),
        "runs": runs,
    }


def timeit_interleaved(fns: dict[str, Callable[[], Any]], runs: int, warmup: int = 3) -> dict[str, dict[str, float]]:
    """Time several candidates round-robin (one run of each in turn), so that load from other processes
    on a shared machine falls on all of them alike. Returns ``{name: stats}`` as :func:`timeit`."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: np.empty(runs) for name in fns}
    for i in range(runs):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name][i] = time.perf_counter() - t0
    out = {}
    for name, t in times.items():
        ms = t * 1e3
        out[name] = {
            "median_ms": float(np.median(ms)),
            "p99_ms": float(np.percentile(ms, 99)),
            "min_ms": float(ms.min()),
            "mean_ms": float(ms.mean()),
            "runs": runs,
        }
    return out


def environment() -> dict[str, Any]:
    """Machine and library versions for a result file."""
    import numba

    env: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "numpy": np.__version__,
        "numba": numba.__version__,
    }
    try:
        import cv2

        env["opencv"] = cv2.__version__
        env["opencv_threads"] = cv2.getNumThreads()
    except ImportError:
        pass
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def save(name: str, payload: dict[str, Any], out: Path | None = None) -> Path:
    """Write ``payload`` as JSON under benchmarks/results/ (or ``out``) and return the path."""
    out = out or RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return out
