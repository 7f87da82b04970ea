"""Latency, throughput, per-stage times and peak memory of the detector on one engine.

One implementation for ``gixdrt bench`` (one engine, in the calling process) and
``benchmarks/bench_engines.py`` (every engine × batch size, each in a fresh process: :func:`run_isolated`).

>>> image = published_image()                                  # the real frame → float32[512, 1024] in [0, 1]
>>> res = measure(image, model="published", backend="onnxruntime", batch=8, runs=20)
>>> print(format_result(res))

What is measured (:func:`measure`): a :class:`gixdrt.gixd.PeakDetector` is created and called once on the batch
(``first_call_s``: model load is outside it, but graph export or loading, session creation and first-call
allocations are inside); then ``warmup`` untimed calls and ``runs`` timed calls of
:meth:`~gixdrt.gixd.PeakDetector.boxes` on the same batch (B images: copies of the input images, cycled when
there are fewer than B). Latency is the wall time of a whole call (processed images in, boxes and scores
out as NumPy, so GPU work is finished); frames/s = B / median latency; per-stage times come from
``PeakDetector.last_timings`` (dense, proposals, roi_align, head, postprocess: exact on the CPU; on a GPU the
timed calls are not synchronised per stage, so the stages are left empty there: the GPU check script times
them separately).

Memory (Linux): the resident set size from ``/proc/self/status``. ``rss_before`` is VmRSS after the imports
and the input are ready, before the detector is created. The high-water mark VmHWM is reset there (writing
``5`` to ``/proc/self/clear_refs``) and read after the first call (``peak_rss_setup``: model, sessions, graph
export when not cached) and, reset again, after the timed runs (``peak_rss_run``: the steady state: weights,
runtime arenas, activations of one call). These count native allocations (ONNX Runtime's, PyTorch's),
which tracemalloc would not. When the first call exported the ONNX graphs (``graphs_exported``: they were
not in the graph cache), the run peak also holds what the export left allocated; measure again (the graphs
are cached then), as ``benchmarks/bench_engines.py`` does. Where the mark cannot be reset, it covers the whole process life
(``hwm_reset`` false) and only a fresh process per measurement gives a per-engine number. GPU memory:
PyTorch's peak allocation (``torch.cuda.max_memory_allocated``), which does not see ONNX Runtime's own
CUDA arena.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .gixd.preprocess import published_image  # noqa: F401  (re-exported: part of this module's API)
from .model.config import STAGES

__all__ = [
    "ENGINES",
    "STAGES",
    "engine_status",
    "format_result",
    "load_images",
    "make_batch",
    "measure",
    "published_image",
    "run_isolated",
    "summarize",
]

#: engine name → (backend, device, precision)
ENGINES: dict[str, tuple[str, str, str]] = {
    "torch": ("torch", "cpu", "fp32"),
    "torch-bf16": ("torch", "cpu", "bf16"),
    "onnxruntime": ("onnxruntime", "cpu", "fp32"),
    "onnxruntime-fp16": ("onnxruntime", "cpu", "fp16"),
    "onnxruntime-int8": ("onnxruntime", "cpu", "int8"),
    "torch-cuda": ("torch-cuda", "cuda", "fp32"),
    "torch-cuda-fp16": ("torch-cuda", "cuda", "fp16"),
    "onnxruntime-cuda": ("onnxruntime", "cuda", "fp32"),
    "onnxruntime-cuda-fp16": ("onnxruntime", "cuda", "fp16"),
    "tensorrt": ("tensorrt", "cuda", "fp32"),
    "tensorrt-fp16": ("tensorrt", "cuda", "fp16"),
}


_MIB = 1 << 20


def engine_status(name: str) -> str | None:
    """None when engine ``name`` (a key of :data:`ENGINES`) can run here, else why not."""
    if name not in ENGINES:
        return f"unknown engine (known: {', '.join(ENGINES)})"
    from .engine import backend_status

    backend, device, _ = ENGINES[name]
    return backend_status()[backend, device]


def summarize(samples_s: Sequence[float]) -> dict[str, float]:
    """Seconds → median/p99/min/mean in milliseconds and the number of runs (p99 of fewer than 100 runs
    interpolates between the largest samples)."""
    ms = np.asarray(samples_s, np.float64) * 1e3
    return {
        "median_ms": float(np.median(ms)),
        "p99_ms": float(np.percentile(ms, 99)),
        "min_ms": float(ms.min()),
        "mean_ms": float(ms.mean()),
        "runs": int(ms.size),
    }


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------
def load_images(inputs: Sequence[str], *, config: str | os.PathLike | None = None, input: str = "raw",
                sum_n: int = 1, limit: int | None = None) -> tuple[np.ndarray, list[str]]:
    """The first ``limit`` (summed) frames of ``inputs``, made detector input as ``gixdrt detect`` makes it
    (raw: remap + contrast with ``config``; polar: contrast; processed: as is) → (float32[N, H, W], sources)."""
    from .errors import GixdrtError
    from .geometry import ContrastConfig, load_config
    from .gixd.preprocess import Preprocessor
    from .io import iter_frames

    cfg = load_config(config) if config else None
    if input == "raw" and cfg is None:
        raise GixdrtError("raw frames need the experiment geometry: pass --config CONFIG.yaml (or --input polar|processed)")
    geometry = cfg.geometry if (cfg is not None and input == "raw") else None
    pre = Preprocessor(cfg) if cfg is not None else None
    images, sources = [], []
    for frame in iter_frames(list(inputs), sum_n=sum_n, expect_shape=geometry and geometry.frame_shape,
                             expect_note=geometry and geometry.frame_shape_note):
        if input == "processed":
            img = np.asarray(frame.data, np.float32)
        elif input == "polar":
            polar = np.asarray(frame.data, np.float32)
            polar = polar.sum(axis=0, dtype=np.float32) if polar.ndim == 3 else polar
            img = _contrast(polar, cfg.contrast if cfg is not None else ContrastConfig())
        else:
            img = pre(frame.data)
        if img.ndim != 2:
            raise GixdrtError(f"{frame.source}: a {input} image must be 2-D, got shape {img.shape}")
        if images and img.shape != images[0].shape:
            raise GixdrtError(f"{frame.source}: image {img.shape} differs from the first one's {images[0].shape}; "
                              "a batch needs one size")
        images.append(np.asarray(img, np.float32))
        sources.append(frame.source)
        if limit is not None and len(images) >= limit:
            break
    if not images:
        raise GixdrtError(f"no frames in {', '.join(map(str, inputs))}")
    return np.stack(images), sources


def _contrast(polar: np.ndarray, c) -> np.ndarray:
    """The contrast chain of a :class:`gixdrt.geometry.ContrastConfig` on one polar image (host kernels)."""
    from .kernels import contrast
    from .kernels.batched import minmax

    return minmax(polar) if c.disable else contrast(polar, coef=c.coef, clip_limit=c.limit, log=c.log)


def make_batch(images: np.ndarray, batch: int) -> np.ndarray:
    """float32[H, W] or [N, H, W] → contiguous float32[batch, H, W], cycling through the N images."""
    x = np.asarray(images, np.float32)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[0] == 0:
        raise ValueError(f"expected images [H, W] or [N, H, W] with N ≥ 1, got shape {x.shape}")
    if batch < 1:
        raise ValueError(f"batch must be ≥ 1, got {batch}")
    return np.ascontiguousarray(x[np.arange(batch) % x.shape[0]])


# ------------------------------------------------------------------------------------------------
# Memory
# ------------------------------------------------------------------------------------------------
def _status_bytes(key: str) -> int | None:
    """A ``kB`` line of /proc/self/status (VmRSS, VmHWM) in bytes; None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------
# The measurement
# ------------------------------------------------------------------------------------------------
def measure(images: np.ndarray, *, model: Any = "default", backend: str = "auto", device: str | None = None,
            precision: str = "fp32", threads: int | None = None, batch: int = 1, runs: int = 20, warmup: int = 3,
            onnx_cache: Any = True, input_label: str = "") -> dict[str, Any]:
    """Time the detector on ``batch`` copies of ``images`` (see the module docstring) → a JSON-able dict.

    model/backend/device/precision/threads/onnx_cache: as :class:`gixdrt.gixd.PeakDetector` takes them.
    Raises :class:`gixdrt.engine.EngineUnavailableError` when the backend cannot run here.
    """
    from .engine import backend_status
    from .gixd.detector import PeakDetector
    from .model import zoo

    if runs < 1:
        raise ValueError(f"runs must be ≥ 1, got {runs}")
    if warmup < 0:
        raise ValueError(f"warmup must be ≥ 0, got {warmup}")
    x = make_batch(images, batch)
    backend_status()  # imports the runtimes now, so that the memory baseline holds them for every engine
    rss_before = _status_bytes("VmRSS")
    hwm_reset = _reset_hwm()
    t0 = time.perf_counter()
    det = PeakDetector(model, backend=backend, device=device, precision=precision, threads=threads, cache=onnx_cache)
    load_s = time.perf_counter() - t0
    cuda = det.kernels.on_device
    torch = None
    if cuda or "torch" in sys.modules:
        import torch
    try:
        exported = det.graphs.needs_export(det.backend, precision)
        t0 = time.perf_counter()
        first = det.boxes(x)
        first_s = time.perf_counter() - t0
        peak_setup = _status_bytes("VmHWM")
        hwm_reset = _reset_hwm() and hwm_reset
        if cuda:
            torch.cuda.reset_peak_memory_stats(det.kernels.device)
        for _ in range(warmup):
            det.boxes(x)
        totals: list[float] = []
        stages: dict[str, list[float]] = {}
        for _ in range(runs):
            t0 = time.perf_counter()
            det.boxes(x)
            totals.append(time.perf_counter() - t0)
            for k, v in det.last_timings.items():
                stages.setdefault(k, []).append(v)
        peak_run = _status_bytes("VmHWM")
        gpu_peak = int(torch.cuda.max_memory_allocated(det.kernels.device)) if cuda else None
        engine = {"backend": det.backend, "device": str(det.device), "precision": det.precision}
    finally:
        det.close()
    latency = summarize(totals)
    ordered = [k for k in STAGES if k in stages] + [k for k in stages if k not in STAGES]
    return {
        "model": zoo.describe(model) if isinstance(model, str) else str(getattr(model, "card", None) or "in-memory"),
        **engine,
        "threads": threads,
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "batch": int(batch),
        "image_shape": [int(v) for v in x.shape[1:]],
        "input": input_label,
        "runs": int(runs),
        "warmup": int(warmup),
        "load_s": load_s,
        "first_call_s": first_s,
        "graphs_exported": exported,
        "latency": latency,
        "frames_per_s": batch / (latency["median_ms"] / 1e3) if latency["median_ms"] > 0 else float("inf"),
        "stages": {k: summarize(stages[k]) for k in ordered},
        "detections": [len(s) for _, s in first],
        "memory": {
            "rss_before_bytes": rss_before,
            "peak_rss_setup_bytes": peak_setup,
            "peak_rss_run_bytes": peak_run,
            "run_delta_bytes": None if peak_run is None or rss_before is None else peak_run - rss_before,
            "hwm_reset": hwm_reset,
            "gpu_peak_allocated_bytes": gpu_peak,
        },
    }


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / _MIB:.0f} MiB"


def format_result(res: dict[str, Any]) -> str:
    """A few lines for a terminal: what ran, median/p99 latency, frames/s, per-stage medians, memory."""
    lat, mem = res["latency"], res["memory"]
    h, w = res["image_shape"]
    lines = [
        (f"model {res['model']}, {res['backend']} on {res['device']}, {res['precision']}, batch {res['batch']} of "
         f"{h}×{w}{' (' + res['input'] + ')' if res.get('input') else ''}: {res['runs']} runs after {res['warmup']} "
         f"warm-up; first call {res['first_call_s']:.2f} s"),
        (f"  latency  median {lat['median_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms per batch → "
         f"{res['frames_per_s']:.2f} frames/s"),
    ]
    if res["stages"]:
        lines.append("  stages   " + ", ".join(f"{k} {v['median_ms']:.1f}" for k, v in res["stages"].items())
                     + " ms (medians)")
    else:
        lines.append("  stages   not timed on this device (the torch backend times its stages on the CPU only)")
    delta = mem["run_delta_bytes"]
    peak = f"  memory   peak RSS {_mib(mem['peak_rss_run_bytes'])}"
    if delta is not None:
        peak += f" ({'+' if delta >= 0 else '−'}{abs(delta) / _MIB:.0f} MiB over {_mib(mem['rss_before_bytes'])} before "
        peak += "the detector)"
    if res.get("graphs_exported"):
        peak += " [the first call exported the graphs: the peak includes what the export kept; they are cached now]"
    if not mem["hwm_reset"]:
        peak += " [high-water mark not resettable: whole-process peak]"
    if mem["gpu_peak_allocated_bytes"] is not None:
        peak += f"; GPU peak allocated by PyTorch {_mib(mem['gpu_peak_allocated_bytes'])}"
    lines.append(peak)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# One measurement in a fresh process
# ------------------------------------------------------------------------------------------------
def run_isolated(images: np.ndarray | str | os.PathLike, *, timeout: float | None = None,
                 env: dict[str, str] | None = None, python: str | os.PathLike | None = None,
                 **kwargs: Any) -> dict[str, Any]:
    """:func:`measure` in a fresh Python process (so its peak memory is its own) → its result, or
    ``{"error": message}`` when it failed. images: an array, or the path of a ``.npy`` file holding one.
    python: the interpreter (default this one; another environment measures another installed gixdrt).
    kwargs: :func:`measure`'s keywords (JSON-able: ``model`` as a name or path)."""
    with tempfile.TemporaryDirectory(prefix="gixdrt-bench-") as tmp:
        tmp = Path(tmp)
        if isinstance(images, np.ndarray):
            path = tmp / "images.npy"
            np.save(path, images)
        else:
            path = Path(images)
        request, result = tmp / "request.json", tmp / "result.json"
        request.write_text(json.dumps({"images": str(path), **kwargs}))
        cmd = [os.fspath(python or sys.executable), "-m", "gixdrt.bench", str(request), str(result)]
        try:
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout} s"}
        if result.is_file():
            return json.loads(result.read_text())
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"worker exited with status {proc.returncode}: {tail[0]}"}


def _worker(argv: Sequence[str]) -> int:
    """``python -m gixdrt.bench REQUEST.json RESULT.json``: the process :func:`run_isolated` starts."""
    request, result = (Path(a) for a in argv)
    spec = json.loads(request.read_text())
    images = np.load(spec.pop("images"))
    try:
        out = measure(images, **spec)
        code = 0
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which goes on with the next engine
        out = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        code = 1
    result.write_text(json.dumps(out))
    return code


if __name__ == "__main__":  # pragma: no cover - exercised through run_isolated
    sys.exit(_worker(sys.argv[1:]))
