"""The compiled CPU kernels: :mod:`gixdrt._ext`, imported on first use."""
from __future__ import annotations

from functools import lru_cache

#: the functions of gixdrt._ext that the cpu implementation calls
CPU_KERNELS = (
    "polar_remap_cpu",
    "fill_holes_cpu",
    "contrast_cpu",
    "contrast_levels_cpu",
    "clahe_cpu",
    "decode_topk_cpu",
    "nms_fixed_cpu",
    "decode_final_cpu",
    "roi_align_cpu",
)


@lru_cache(maxsize=1)
def _load():
    try:
        from gixdrt import _ext
    except ImportError as exc:  # a source checkout that was never built, or a broken build
        return None, f"gixdrt._ext is not importable ({exc}); reinstall gixdrt (`pip install .` builds it)"
    missing = [name for name in CPU_KERNELS if not hasattr(_ext, name)]
    if missing:
        return None, f"gixdrt._ext lacks the CPU kernels {', '.join(missing)} (an older build: reinstall gixdrt)"
    return _ext, None


def unavailable_reason() -> str | None:
    """None when gixdrt._ext can be imported with every CPU kernel, else why not."""
    return _load()[1]


def ext():
    """The compiled extension; :class:`gixdrt.errors.ExtensionUnavailableError` when it is unusable."""
    module, reason = _load()
    if module is None:
        from ...errors import ExtensionUnavailableError

        raise ExtensionUnavailableError(f"cpu implementation: {reason}")
    return module
