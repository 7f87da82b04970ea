"""One registry for every kernel: NumPy reference, compiled C++ CPU and CUDA implementations.

Each operation (``"polar_remap"``, ``"contrast"``, ``"clahe"``, ...) has up to three registered
implementations:

``reference``
    Plain NumPy. It is the specification: slow, readable, always available.
``cpu``
    C++ kernels in the compiled extension :mod:`gixdrt._ext` (std::thread workers, compiled at install:
    no JIT). Takes and returns NumPy arrays. Available when ``gixdrt._ext`` imports with these kernels.
``cuda``
    Numba CUDA kernels (and the extension's CUDA RoIAlign). Takes device arrays (anything exposing
    ``__cuda_array_interface__``: CuPy arrays, Numba device arrays, PyTorch CUDA tensors), a stream, and
    writes into a caller-provided device buffer.

:func:`resolve` picks an implementation: with ``impl=None`` it looks at where the first array
lives (a device array → ``cuda``, anything else → ``cpu`` when the extension is usable, else
``reference``). An implementation named by the caller that is not available raises
:class:`BackendUnavailableError`; there is no silent fallback when the caller asked for one.
Implementations are registered lazily (module path + attribute) so importing :mod:`gixdrt` never
imports Numba or any CUDA stack, and the host implementations never import Numba at all.
"""
from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import BackendUnavailableError, ExtensionUnavailableError  # noqa: F401  (re-exported)

IMPLS = ("reference", "cpu", "cuda")

log = logging.getLogger(__name__)




@dataclass
class _Entry:
    module: str
    attr: str
    probe: Callable[[], str | None]  # returns None when usable, else the reason it is not
    _fn: Callable[..., Any] | None = None

    def load(self) -> Callable[..., Any]:
        if self._fn is None:
            self._fn = getattr(importlib.import_module(self.module), self.attr)
        return self._fn


_REGISTRY: dict[str, dict[str, _Entry]] = {}
_PROBE_CACHE: dict[str, str | None] = {}


def _always() -> str | None:
    return None


def numba_unavailable_reason() -> str | None:
    """None when Numba can be imported, else why not."""
    if "numba" not in _PROBE_CACHE:
        try:
            import numba  # noqa: F401

            _PROBE_CACHE["numba"] = None
        except Exception as exc:  # pragma: no cover - depends on the install
            _PROBE_CACHE["numba"] = f"numba is not importable ({exc})"
    return _PROBE_CACHE["numba"]


def cpu_unavailable_reason() -> str | None:
    """None when the compiled CPU kernels (gixdrt._ext) can run here, else why not."""
    from .cpu._ext import unavailable_reason

    return unavailable_reason()


def roi_align_cuda_unavailable_reason() -> str | None:
    """None when gixdrt._ext has its CUDA RoIAlign kernel (device arrays need no Numba), else why not."""
    try:
        from gixdrt import _ext
    except ImportError as exc:
        return f"gixdrt._ext is not importable ({exc}); reinstall gixdrt (`pip install .` builds it)"
    if not hasattr(_ext, "roi_align_cuda"):
        return ("gixdrt._ext was built without CUDA (no CUDA compiler was found at build time, or "
                "GIXDRT_DISABLE_CUDA=ON)")
    if "roi_align_cuda" not in _PROBE_CACHE:  # the device count does not change within a process
        _PROBE_CACHE["roi_align_cuda"] = None if _ext.cuda_device_count() > 0 else "no CUDA GPU or driver was found"
    return _PROBE_CACHE["roi_align_cuda"]


def cuda_unavailable_reason() -> str | None:
    """None when Numba CUDA can launch kernels here (a GPU, or NUMBA_ENABLE_CUDASIM=1), else why not.

    Not cached: tests switch the CUDA simulator on and off.
    """
    reason = numba_unavailable_reason()
    if reason:
        return reason
    try:
        from numba import cuda
    except Exception as exc:  # pragma: no cover
        return f"numba.cuda is not importable ({exc})"
    try:
        if not cuda.is_available():
            return "no CUDA GPU or driver was found (set NUMBA_ENABLE_CUDASIM=1 to use the simulator)"
    except Exception as exc:  # pragma: no cover
        return f"CUDA probe failed ({exc})"
    return None


_PROBES = {"reference": _always, "cpu": cpu_unavailable_reason, "cuda": cuda_unavailable_reason}


def register(op: str, impl: str, target: str, probe: Callable[[], str | None] | None = None) -> None:
    """Register ``target`` (``"package.module:function"``) as ``impl`` implementation of ``op``.

    probe: returns None when the implementation can run here, else why not (default: the implementation's probe).
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown kernel implementation {impl!r}; expected one of {IMPLS}")
    module, _, attr = target.partition(":")
    _REGISTRY.setdefault(op, {})[impl] = _Entry(module, attr, probe or _PROBES[impl])


def is_device_array(x: Any) -> bool:
    """True for arrays that live on a CUDA device: they expose ``__cuda_array_interface__`` (or are the
    CUDA simulator's fake device arrays, which carry ``__cuda_ndarray__``)."""
    return hasattr(x, "__cuda_array_interface__") or getattr(x, "__cuda_ndarray__", False) is True


def cudasim() -> bool:
    """True when Numba's CUDA simulator is switched on (NUMBA_ENABLE_CUDASIM=1)."""
    import os

    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def available(op: str) -> dict[str, str | None]:
    """For each registered implementation of ``op``: None if usable, else the reason it is not."""
    if op not in _REGISTRY:
        raise KeyError(f"no kernel named {op!r}; known: {sorted(_REGISTRY)}")
    return {name: entry.probe() for name, entry in _REGISTRY[op].items()}


def resolve(op: str, impl: str | None = None, like: Any = None) -> tuple[str, Callable[..., Any]]:
    """Return ``(impl_name, function)`` for ``op``.

    impl: None (choose from where ``like`` lives), or one of :data:`IMPLS`.
    """
    if op not in _REGISTRY:
        raise KeyError(f"no kernel named {op!r}; known: {sorted(_REGISTRY)}")
    entries = _REGISTRY[op]
    if impl is None:
        if like is not None and is_device_array(like):
            impl = "cuda"
        else:
            impl = "cpu" if "cpu" in entries and entries["cpu"].probe() is None else "reference"
    if impl not in IMPLS:
        raise ValueError(f"unknown kernel implementation {impl!r} for {op}; expected one of {IMPLS}")
    if impl not in entries:
        raise BackendUnavailableError(f"{op}: no {impl!r} implementation is registered")
    reason = entries[impl].probe()
    if reason is not None:
        raise BackendUnavailableError(f"{op}: implementation {impl!r} is unavailable: {reason}")
    if like is not None:
        on_device = is_device_array(like)
        if impl == "cuda" and not on_device:
            raise TypeError(
                f"{op}: the cuda implementation takes device arrays; copy the input to the GPU first "
                "(e.g. cupy.asarray or numba.cuda.to_device) so the copy is visible at the call site"
            )
        if impl != "cuda" and on_device:
            raise TypeError(f"{op}: the {impl} implementation takes host (NumPy) arrays, got a device array")
    return impl, entries[impl].load()


def registered() -> dict[str, list[str]]:
    """Names of all operations and their registered implementations."""
    return {op: sorted(entries) for op, entries in sorted(_REGISTRY.items())}
