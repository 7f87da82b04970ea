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

from gixdrt.bench import summarize

RESULTS = Path(__file__).resolve().parent / "results"


def timeit(fn: Callable[[], Any], runs: int, warmup: int = 3, sync: Callable[[], Any] | None = None) -> dict[str, float]:
    """Run ``fn`` ``warmup`` + ``runs`` times; return median/p99/min/mean in milliseconds
    (:func:`gixdrt.bench.summarize`)."""
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
    return summarize(times)


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
    return {name: summarize(t) for name, t in times.items()}


def install_checkout(src: Path, venv: Path, *, extras: str = "") -> dict[str, Any]:
    """Build a wheel of the checkout ``src`` and install it with its dependencies (plus ``extras``, e.g.
    ``"[test]"``, with this machine's CPU PyTorch first) into a new virtual environment ``venv`` → {"python",
    "wheel", "wheel_bytes", "install_s", "extras"}."""
    import subprocess
    import sys

    t0 = time.perf_counter()
    py = venv / "bin" / "python"
    wheels = venv.parent / f"{venv.name}-wheel"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(src)], check=True,
                   capture_output=True)
    (wheel,) = wheels.glob("gixdrt-*.whl")
    if extras:
        subprocess.run([str(py), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True, capture_output=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", f"{wheel}{extras}"], check=True, capture_output=True)
    return {"python": py, "wheel": wheel.name, "wheel_bytes": wheel.stat().st_size,
            "install_s": round(time.perf_counter() - t0, 1), "extras": extras or None}


def revision_python(rev: str, work: Path, *, extras: str = "") -> Path:
    """A fresh virtual environment with git revision ``rev`` of this repository installed (:func:`install_checkout`)
    → its Python. For measuring a revision side by side with the working tree (the benchmarks' ``--baseline``)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    src, venv = work / f"src-{rev}", work / f"venv-{rev}"
    if not src.exists():
        subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(src), rev], check=True,
                       capture_output=True)
    if not (venv / "bin" / "python").exists():
        install_checkout(src, venv, extras=extras)
    return venv / "bin" / "python"


def remove_revision(rev: str, work: Path) -> None:
    """Remove the git worktree :func:`revision_python` made."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(work / f"src-{rev}")],
                   capture_output=True, check=False)


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
