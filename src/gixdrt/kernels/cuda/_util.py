"""Stream and buffer helpers shared by the CUDA kernels (Numba CUDA)."""
from __future__ import annotations

from typing import Any

from numba import cuda

from ..registry import cudasim, is_device_array


def as_stream(stream: Any):
    """A Numba stream for ``stream``: None (default stream), a Numba stream, a CuPy/PyTorch stream
    (anything with ``.ptr`` or ``.cuda_stream``), or a raw ``cudaStream_t`` handle as an int."""
    if cudasim():  # the simulator runs everything synchronously and has no stream handles
        return stream if stream is not None else 0
    if stream is None:
        return cuda.default_stream()
    if hasattr(stream, "auto_synchronize") or type(stream).__module__.startswith("numba"):
        return stream
    handle = getattr(stream, "ptr", None)
    if handle is None:
        handle = getattr(stream, "cuda_stream", None)
    if handle is None and isinstance(stream, int):
        handle = stream
    if handle is None:
        raise TypeError(f"cannot use {type(stream).__name__} as a CUDA stream")
    return cuda.external_stream(handle)


def as_device(array: Any, name: str):
    """A zero-copy Numba view of a device array (``__cuda_array_interface__``)."""
    if not is_device_array(array):
        raise TypeError(f"{name} must be a device array (CuPy, Numba, PyTorch CUDA), got {type(array).__name__}")
    if cudasim():
        return array
    return cuda.as_cuda_array(array)


def device_out(out: Any, shape: tuple[int, ...], dtype, stream):
    """Validate a caller-provided device output buffer or allocate one on ``stream``."""
    import numpy as np

    if out is None:
        return cuda.device_array(shape, dtype=dtype, stream=stream) if not cudasim() else cuda.device_array(shape, dtype=dtype)
    view = as_device(out, "out")
    if view.dtype != np.dtype(dtype):
        raise TypeError(f"out must have dtype {np.dtype(dtype).name}, got {view.dtype}")
    if tuple(view.shape) != tuple(shape):
        raise ValueError(f"out must have shape {tuple(shape)}, got {tuple(view.shape)}")
    return view
