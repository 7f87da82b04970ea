"""gixdrt's TensorRT plugin library: where it is, whether it can be used here, loading it, and adding its layer.

The library (``libgixdrt_trt_plugins.so``, CMake target ``gixdrt_trt_plugins``, source ``csrc/trt``) holds one
IPluginV3 plugin, ``GixdrtRoIAlign`` version ``"1"`` in namespace ``"gixdrt"``: the CUDA RoIAlign kernel of
:mod:`gixdrt.kernels.roi_align` as a TensorRT layer::

    features float32[N, C, H, W], rois float32[K, 5] (batch index, x0, y0, x1, y1 in input pixels)
        -> float32[K, C, out_h, out_w]
    fields: out_h, out_w (int32), scale_y, scale_x (float32), sampling_ratio (int32, <= 0 adaptive),
            aligned (int32 0/1)

Building it
    It is built only when CMake finds both a CUDA compiler and the TensorRT headers (``NvInfer.h``, TensorRT 10
    or newer); it needs no TensorRT library at build time. Point the build at a TensorRT installation with::

        TensorRT_ROOT=/opt/TensorRT pip install -e .

    (or ``-C cmake.define.TensorRT_ROOT=/opt/TensorRT``; headers on the standard include paths are found too).
    The configure step prints ``gixdrt: TensorRT plugin library ON|OFF: why``, and
    ``gixdrt._ext.build_info()["trt_plugin"]`` records the outcome. The library is installed next to
    ``gixdrt._ext``; ``GIXDRT_TRT_PLUGIN=/path/to/libgixdrt_trt_plugins.so`` overrides where it is looked for.

Using it
    ``load_trt_plugins(trt)`` registers the library with ``trt.get_plugin_registry().load_library(path)``; the
    library exports the two entry points TensorRT looks for (``getCreators``, ``setLoggerFinder``) and registers
    nothing by itself when loaded. ``trt.init_libnvinfer_plugins(logger, "")`` is not needed for it: that call
    registers NVIDIA's own plugins from libnvinfer_plugin, which this library does not use. Engines that contain
    the layer need the library loaded (in each process) before they are deserialized, and ``add_roi_align_layer``
    adds the layer to a network being built.

Status
    The plugin has never been compiled against real TensorRT headers nor run on real TensorRT in this project:
    the machines it was written on have neither TensorRT nor a GPU. Its C++ follows the documented TensorRT 10 V3
    plugin API (no TensorRT 11 change to the classes used was found in the documentation); the GPU test in ``tests/ext/test_trt_plugin.py``
    checks it against the CPU kernel where TensorRT and a GPU are present.

Importing this module never imports ``tensorrt``: every TensorRT call is made on the module object passed in.
"""
from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import EngineUnavailableError

__all__ = [
    "ENV_VAR",
    "PLUGIN_NAME",
    "PLUGIN_NAMESPACE",
    "PLUGIN_VERSION",
    "add_roi_align_layer",
    "load_trt_plugins",
    "plugin_fields",
    "plugin_library_path",
    "plugin_status",
]

PLUGIN_NAME = "GixdrtRoIAlign"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "gixdrt"

#: environment variable naming the plugin library to use instead of the installed one
ENV_VAR = "GIXDRT_TRT_PLUGIN"

#: file names CMake gives the MODULE library per platform
LIBRARY_NAMES = {"win32": "gixdrt_trt_plugins.dll", "darwin": "libgixdrt_trt_plugins.so"}
_DEFAULT_LIBRARY_NAME = "libgixdrt_trt_plugins.so"

#: the published detector's RoIAlign geometry (see gixdrt.kernels.roi_align)
_DEFAULT_OUTPUT_SIZE = 16
_DEFAULT_SCALE = (1.0 / 8.0, 1.0 / 4.0)

# handles returned by load_library, by resolved library path (TensorRT refuses to register a library twice)
_HANDLES: dict[str, Any] = {}


def library_name() -> str:
    """File name of the plugin library on this platform."""
    return LIBRARY_NAMES.get(sys.platform, _DEFAULT_LIBRARY_NAME)


def _package_dirs() -> list[Path]:
    """The folders of the ``gixdrt`` package (an editable install has two: the build's and the source's)."""
    import gixdrt

    return [Path(p) for p in gixdrt.__path__]


def plugin_library_path() -> Path | None:
    """Path of the plugin library to load, or None when there is none.

    ``$GIXDRT_TRT_PLUGIN`` wins when set (returned even if the file does not exist, so that the error can name
    it); otherwise the library installed in the ``gixdrt`` package folder next to ``gixdrt._ext``, if built.
    """
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override).expanduser()
    name = library_name()
    for folder in _package_dirs():
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def _build_info() -> dict[str, Any] | None:
    try:
        from .. import _ext
    except ImportError:
        return None
    return dict(_ext.build_info())


def plugin_status() -> str | None:
    """None when the plugin library could be loaded here, else why not.

    Checks, without importing TensorRT: the library (``$GIXDRT_TRT_PLUGIN`` or the built one), a CUDA GPU (asked
    of the driver library), and whether the ``tensorrt`` package is installed.
    """
    path = plugin_library_path()
    if os.environ.get(ENV_VAR):
        if not path.is_file():
            return f"{ENV_VAR}={os.environ[ENV_VAR]} does not exist"
    elif path is None:
        info = _build_info()
        if info is None:
            return "gixdrt._ext is not built, so neither is the TensorRT plugin library (reinstall gixdrt)"
        if not info.get("cuda"):
            return (
                "gixdrt was built without CUDA (no CUDA compiler at build time), so the TensorRT plugin library "
                "was not built"
            )
        if not info.get("trt_plugin"):
            return "gixdrt was built without TensorRT (TensorRT_ROOT not set when building)"
        folders = ", ".join(str(p) for p in _package_dirs())
        return f"the TensorRT plugin library was built but {library_name()} is not in {folders}"
    from .trt import tensorrt_status

    return tensorrt_status()


def _find_creator(trt: Any) -> Any:
    return trt.get_plugin_registry().get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE)


def load_trt_plugins(trt: Any, path: str | os.PathLike | None = None) -> Any:
    """Register gixdrt's plugin library with TensorRT and return the handle ``load_library`` gave.

    trt: the imported ``tensorrt`` module. path: the library (default :func:`plugin_library_path`).
    Calling it again in the same process returns the first handle without loading again (TensorRT refuses to
    register a plugin twice); if the plugin was registered by other means, returns None.
    Raises :class:`EngineUnavailableError`, naming the path, when the library is absent, cannot be loaded, or
    does not register the ``GixdrtRoIAlign`` creator.
    """
    lib = Path(path) if path is not None else plugin_library_path()
    if lib is None:
        why = plugin_status() or "no plugin library found"
        raise EngineUnavailableError(
            f"TensorRT plugins: {why}; looked for {library_name()} in "
            f"{', '.join(str(p) for p in _package_dirs())} (set {ENV_VAR} to a built library)"
        )
    if not lib.is_file():
        raise EngineUnavailableError(f"TensorRT plugins: the plugin library {lib} does not exist")
    key = str(lib.resolve())
    try:
        already = _find_creator(trt)
    except Exception as exc:  # noqa: BLE001 - a broken TensorRT install raises many kinds
        raise EngineUnavailableError(
            f"TensorRT plugins: cannot query the plugin registry ({type(exc).__name__}: {exc})"
        ) from None
    if already is not None:
        return _HANDLES.get(key)
    try:
        handle = trt.get_plugin_registry().load_library(str(lib))
    except Exception as exc:  # noqa: BLE001
        raise EngineUnavailableError(f"TensorRT plugins: loading {lib} failed ({type(exc).__name__}: {exc})") from None
    if handle is None:
        raise EngineUnavailableError(
            f"TensorRT plugins: load_library({lib}) failed: the library could not be opened (built for another "
            "TensorRT or CUDA version, or missing getCreators/setLoggerFinder) or its plugin is already "
            "registered; the TensorRT log says which"
        )
    if _find_creator(trt) is None:
        raise EngineUnavailableError(
            f"TensorRT plugins: {lib} was loaded but registered no {PLUGIN_NAMESPACE}::{PLUGIN_NAME} "
            f"version {PLUGIN_VERSION}"
        )
    _HANDLES[key] = handle
    return handle


def _pair(value: Any, what: str, cast: type) -> tuple[Any, Any]:
    from ..kernels.roi_align import pair

    return pair(value, f"{PLUGIN_NAME}: {what}", cast)


def plugin_fields(
    trt: Any,
    out_size: int | Sequence[int] = _DEFAULT_OUTPUT_SIZE,
    scales: float | Sequence[float] = _DEFAULT_SCALE,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Any:
    """The ``trt.PluginFieldCollection`` for ``creator.create_plugin(name, fields, trt.TensorRTPhase.BUILD)``.

    out_size: P or (P, Q) bins (out_h, out_w); scales: s or (s_y, s_x) multiplied into the RoI coordinates (the
    anisotropic map scale); sampling_ratio: samples per bin and axis, <= 0 adaptive; aligned: False is the legacy
    mode. Same meaning as :func:`gixdrt.kernels.roi_align.roi_align`. Fields: out_h, out_w, sampling_ratio,
    aligned as int32 and scale_y, scale_x as float32, one value each.
    """
    out_h, out_w = _pair(out_size, "out_size", int)
    scale_y, scale_x = _pair(scales, "scales", float)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"{PLUGIN_NAME}: output size must be >= 1 x 1, got {out_h} x {out_w}")
    for s in (scale_y, scale_x):
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"{PLUGIN_NAME}: scales must be finite and > 0, got ({scale_y}, {scale_x})")
    int32, float32 = trt.PluginFieldType.INT32, trt.PluginFieldType.FLOAT32
    fields = [
        trt.PluginField("out_h", np.array([out_h], dtype=np.int32), int32),
        trt.PluginField("out_w", np.array([out_w], dtype=np.int32), int32),
        trt.PluginField("scale_y", np.array([scale_y], dtype=np.float32), float32),
        trt.PluginField("scale_x", np.array([scale_x], dtype=np.float32), float32),
        trt.PluginField("sampling_ratio", np.array([int(sampling_ratio)], dtype=np.int32), int32),
        trt.PluginField("aligned", np.array([1 if aligned else 0], dtype=np.int32), int32),
    ]
    return trt.PluginFieldCollection(fields)


def add_roi_align_layer(
    network: Any,
    trt: Any,
    features: Any,
    rois: Any,
    output_size: int | Sequence[int] = _DEFAULT_OUTPUT_SIZE,
    spatial_scale: float | Sequence[float] = _DEFAULT_SCALE,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    name: str = "gixdrt_roi_align",
) -> Any:
    """Add a ``GixdrtRoIAlign`` layer to ``network`` (a ``trt.INetworkDefinition``) and return it.

    features: ITensor float32[N, C, H, W]; rois: ITensor float32[K, 5]; the layer's output 0 is
    float32[K, C, P, Q]. The other arguments are those of :func:`plugin_fields`. Needs
    :func:`load_trt_plugins` first; raises :class:`EngineUnavailableError` when the creator is not registered
    and RuntimeError when TensorRT rejects the plugin or the layer.
    """
    creator = _find_creator(trt)
    if creator is None:
        raise EngineUnavailableError(
            f"TensorRT plugins: {PLUGIN_NAMESPACE}::{PLUGIN_NAME} version {PLUGIN_VERSION} is not registered; "
            "call gixdrt.engine.plugins.load_trt_plugins(trt) first"
        )
    fields = plugin_fields(trt, output_size, spatial_scale, sampling_ratio, aligned)
    plugin = creator.create_plugin(name, fields, trt.TensorRTPhase.BUILD)
    if plugin is None:
        raise RuntimeError(f"{PLUGIN_NAME}: create_plugin({name!r}) failed; the TensorRT log says why")
    layer = network.add_plugin_v3([features, rois], [], plugin)
    if layer is None:
        raise RuntimeError(f"{PLUGIN_NAME}: network.add_plugin_v3 failed for {name!r}; the TensorRT log says why")
    layer.name = name
    return layer
