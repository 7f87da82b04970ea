"""Numba where it is installed, plain Python where not: ``njit`` (a no-op decorator without Numba), ``prange``
(``range``) and ``HAVE_NUMBA``. For modules whose compiled loops also run, slowly, without Numba (the simulators,
the classical mask, the published recipe); the registered CPU kernels require Numba and import it directly."""
from __future__ import annotations

__all__ = ["HAVE_NUMBA", "njit", "prange"]

try:
    from numba import njit, prange

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised by the import-hygiene test only
    HAVE_NUMBA = False
    prange = range

    def njit(*args, **kwargs):  # type: ignore[no-redef]
        if args and callable(args[0]):
            return args[0]
        return lambda f: f
