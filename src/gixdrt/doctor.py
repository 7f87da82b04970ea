"""What this installation can use: versions and the availability of every optional stack."""
from __future__ import annotations

import importlib
import importlib.util
import platform
import shutil
import sys
from typing import Any


def _version(module: str) -> tuple[bool, str]:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:
        return False, f"not available ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return True, str(getattr(mod, "__version__", "installed"))


def _nvidia_gpu() -> tuple[bool, str]:
    """Probe for a GPU without touching TensorRT (which can crash a process on a machine with none)."""
    if shutil.which("nvidia-smi") is None:
        return False, "no nvidia-smi on PATH"
    try:
        from numba import cuda

        if cuda.is_available():
            return True, ", ".join(d.name.decode() if isinstance(d.name, bytes) else str(d.name) for d in cuda.gpus)
        return False, "numba.cuda found no usable GPU"
    except Exception as exc:
        return False, f"probe failed ({exc})"


def report() -> dict[str, Any]:
    """A dict of component → (available, detail)."""
    import gixdrt

    rows: dict[str, Any] = {
        "gixdrt": (True, gixdrt.__version__),
        "python": (True, f"{platform.python_version()} ({sys.executable})"),
        "platform": (True, platform.platform()),
    }
    for name in ("numpy", "numba", "yaml", "tifffile", "matplotlib"):
        rows[name] = _version(name)
    gpu, gpu_detail = _nvidia_gpu()
    rows["cuda gpu"] = (gpu, gpu_detail)
    rows["cupy"] = _version("cupy") if gpu else (False, "skipped: no GPU")
    for name in ("torch", "onnxruntime", "fabio", "h5py", "hdf5plugin", "bitshuffle", "lz4", "cv2"):
        rows[name] = _version(name)
    if gpu:
        rows["tensorrt"] = _version("tensorrt")
    else:
        found = importlib.util.find_spec("tensorrt") is not None
        rows["tensorrt"] = (False, "installed but not loaded: no GPU" if found else "not installed")
    try:
        from . import _ext

        info = _ext.build_info()
        detail = ", ".join(f"{k}={v}" for k, v in info.items())
        rows["gixdrt._ext"] = (True, detail)
    except Exception as exc:
        rows["gixdrt._ext"] = (False, f"not importable ({exc}); the pure-Python paths still work")
    try:
        from .engine import backend_status

        for (backend, kind), why in backend_status().items():
            rows[f"detector {backend} on {kind}"] = (why is None, "available" if why is None else why)
    except Exception as exc:  # noqa: BLE001 - doctor reports, never fails
        rows["detector backends"] = (False, f"probe failed ({exc})")
    from . import kernels

    for op in kernels.registered():
        avail = kernels.available(op)
        rows[f"kernel {op}"] = (
            any(v is None for v in avail.values()),
            ", ".join(f"{b}: {'yes' if why is None else 'no (' + why + ')'}" for b, why in avail.items()),
        )
    return rows


def print_report(file=None) -> None:
    file = file or sys.stdout
    rows = report()
    width = max(len(k) for k in rows)
    for name, (ok, detail) in rows.items():
        mark = "ok " if ok else "-- "
        print(f"{mark}{name:<{width}}  {detail}", file=file)
