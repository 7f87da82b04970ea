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


def device_out(out: Any, shape: tuple[int, ...], dtype, stream, name: str = "out"):
    """Validate a caller-provided device output buffer or allocate one on ``stream`` (``name``: how errors call
    it)."""
    import numpy as np

    if out is None:
        return cuda.device_array(shape, dtype=dtype, stream=stream) if not cudasim() else cuda.device_array(shape, dtype=dtype)
    view = as_device(out, name)
    if view.dtype != np.dtype(dtype):
        raise TypeError(f"{name} must have dtype {np.dtype(dtype).name}, got {view.dtype}")
    if tuple(view.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(view.shape)}")
    return view


def device_outs(out: Any, specs, fn: str, stream):
    """Allocate on ``stream`` (out None) or validate a tuple of caller-provided device output arrays.

    specs: ``((name, shape, dtype), ...)`` in the order of the kernel's results. Returns ``(views, results)``:
    the Numba views the kernels write through, and what the function returns (the caller's arrays, or the
    fresh allocations).
    """
    import numpy as np

    if out is None:
        views = tuple(
            cuda.device_array(shape, dtype=dtype) if cudasim() else cuda.device_array(shape, dtype=dtype, stream=stream)
            for _, shape, dtype in specs
        )
        return views, views
    names = ", ".join(name for name, _, _ in specs)
    if not isinstance(out, (tuple, list)):
        raise TypeError(f"{fn}: out must be a tuple ({names}) of device arrays, got {type(out).__name__}")
    if len(out) != len(specs):
        raise ValueError(f"{fn}: out must be a tuple of {len(specs)} device arrays ({names}), got {len(out)}")
    views = []
    for i, ((name, shape, dtype), arr) in enumerate(zip(specs, out)):
        what = f"{fn}: out[{i}] ({name})"
        if not is_device_array(arr):
            raise TypeError(f"{what} must be a device array for the cuda implementation, got {type(arr).__name__}")
        view = arr if cudasim() else cuda.as_cuda_array(arr)
        if view.dtype != np.dtype(dtype):
            raise TypeError(f"{what} must have dtype {np.dtype(dtype).name}, got {view.dtype}")
        if tuple(view.shape) != tuple(shape):
            raise ValueError(f"{what} must have shape {list(shape)}, got {list(view.shape)}")
        if not view.is_c_contiguous():
            raise ValueError(f"{what} must be C-contiguous")
        views.append(view)
    return tuple(views), tuple(out)
