"""The runner lifecycle every engine shares, and the errors and probes the engines use.

A runner runs one graph on one runtime. It is created cheaply (nothing heavy is imported), then::

    with OnnxRuntimeRunner("dense.onnx") as runner:        # activate(): load the graph, allocate
        out = runner.infer({"images": x})                  # dict name → array, as often as needed
                                                           # deactivate(): release everything

Subclasses implement ``activate_impl``, ``infer_impl``, ``deactivate_impl`` and ``input_metadata_impl``
only; the base class keeps the state, checks the feed against the graph's inputs (names, shapes, dtypes)
and times each call.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..kernels.registry import BackendUnavailableError

__all__ = ["EngineUnavailableError", "Runner", "TensorMeta", "cuda_driver", "cuda_gpu", "dtype_of"]


class EngineUnavailableError(BackendUnavailableError):
    """An engine (runtime) was asked for by name but cannot run here; the message says why."""


@dataclass(frozen=True)
class TensorMeta:
    """A graph input or output: NumPy dtype and a fully static shape."""

    dtype: np.dtype
    shape: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.dtype}{list(self.shape)}"


def dtype_of(array: Any) -> np.dtype:
    """NumPy dtype of a NumPy array, a torch tensor or anything with a NumPy-like ``dtype``."""
    dt = array.dtype
    if type(dt).__module__ == "torch":
        return np.dtype(str(dt).removeprefix("torch."))
    return np.dtype(dt)


class Runner:
    """Base class: one lifecycle (``activate``, ``infer``, ``deactivate`` or a ``with`` block) for every runtime.

    ``infer`` may be called any number of times while active. ``last_inference_time`` holds the seconds
    the last ``infer_impl`` took (for runners on a GPU: including the synchronisation that ends it).
    """

    name = "runner"

    def __init__(self) -> None:
        self.is_active = False
        self.last_inference_time: float | None = None
        self._inputs: dict[str, TensorMeta] | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    def activate(self) -> Runner:
        """Load and allocate; a second call while active does nothing. Returns self."""
        if not self.is_active:
            self.activate_impl()
            self.is_active = True
            self._inputs = dict(self.input_metadata_impl())
        return self

    def deactivate(self) -> None:
        """Release everything ``activate`` took; a runner can be activated again afterwards."""
        if self.is_active:
            try:
                self.deactivate_impl()
            finally:
                self.is_active = False
                self._inputs = None

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def input_metadata(self) -> dict[str, TensorMeta]:
        """Graph inputs: name → :class:`TensorMeta` (needs an active runner)."""
        self._require_active()
        return dict(self._inputs)

    def infer(self, feed: Mapping[str, Any], *, check: bool = True) -> dict[str, Any]:
        """Run the graph on ``feed`` (name → array) → name → output array.

        With ``check`` the feed must name every input exactly once with its shape and dtype; a mismatch
        raises ValueError naming the input. The output type is the runner's native one (see subclasses).
        """
        self._require_active()
        if check:
            self._check_feed(feed)
        t0 = time.perf_counter()
        out = self.infer_impl(feed)
        self.last_inference_time = time.perf_counter() - t0
        return out

    # --- for subclasses -------------------------------------------------------------------------
    def activate_impl(self) -> None:
        raise NotImplementedError

    def infer_impl(self, feed: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        raise NotImplementedError

    def input_metadata_impl(self) -> Mapping[str, TensorMeta]:
        raise NotImplementedError

    # --- helpers --------------------------------------------------------------------------------
    def _require_active(self) -> None:
        if not self.is_active:
            raise RuntimeError(f"{self.name}: not active; call activate() or use it in a with block")

    def _check_feed(self, feed: Mapping[str, Any]) -> None:
        want = self._inputs or {}
        missing = [n for n in want if n not in feed]
        extra = [n for n in feed if n not in want]
        if missing or extra:
            raise ValueError(
                f"{self.name}: feed names {sorted(feed)} do not match the graph inputs {sorted(want)}"
                + (f" (missing {missing})" if missing else "") + (f" (unexpected {extra})" if extra else "")
            )
        for name, meta in want.items():
            arr = feed[name]
            shape = tuple(int(d) for d in arr.shape)
            if shape != meta.shape or dtype_of(arr) != meta.dtype:
                raise ValueError(f"{self.name}: input {name!r} is {dtype_of(arr)}{list(shape)}, the graph takes {meta}")


def cuda_driver() -> ctypes.CDLL | None:
    """The CUDA driver library (libcuda / nvcuda) loaded with ctypes, or None where there is none."""
    names = ["nvcuda.dll"] if sys.platform == "win32" else ["libcuda.so.1", "libcuda.so", ctypes.util.find_library("cuda")]
    for name in filter(None, names):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


@functools.lru_cache(maxsize=1)
def cuda_gpu() -> tuple[bool, str]:
    """(True, "N device(s)") when the CUDA driver sees a GPU, else (False, why). Never touches TensorRT or
    CUDA runtimes: it asks the driver library (libcuda) directly, so it is safe on machines without a GPU."""
    lib = cuda_driver()
    if lib is None:
        return False, "no CUDA driver library (libcuda) found"
    try:
        if lib.cuInit(0) != 0:
            return False, "the CUDA driver found no usable GPU (cuInit failed)"
        count = ctypes.c_int(0)
        if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
            return False, "the CUDA driver reports no GPU"
    except (AttributeError, OSError) as exc:
        return False, f"CUDA driver probe failed ({exc})"
    return True, f"{count.value} CUDA device(s)"
