"""TensorRT engines for gixdrt's graphs: build them (TensorRT 10 and 11), check they fit this machine, run them.

>>> build_engine("head.onnx", "head.engine", precision="fp32")        # + head.engine.json (the sidecar)
>>> with TensorRTRunner("head.engine", onnx_path="head.onnx") as runner:
...     out = runner.infer({"roi_features": feats})                    # torch CUDA tensors

Building (:func:`build_engine`) parses an ONNX graph with TensorRT's ONNX parser into a network, adds one
optimisation profile, builds and serialises the engine, and writes a JSON sidecar ``<engine>.json`` beside
it: the TensorRT version, the GPU (name, compute capability), the precision, the batch profile, the sha256
of the ONNX file and of the engine, gixdrt's version, the creation time and the engine's inputs and
outputs. A TensorRT engine runs only with the TensorRT version and on the kind of GPU it was built for;
:func:`check_sidecar` compares the sidecar with this machine and refuses an engine that does not fit (or
that has no sidecar), naming what differs, before TensorRT is asked to deserialise it.

Precision. TensorRT 11 builds *strongly typed* networks only: every tensor's type comes from the graph, and
the builder flags that allowed reduced precision (``BuilderFlag.FP16``...) are gone. An fp16 engine is built
from an fp16 graph (``export_dense(..., fp16=True)``: fp16 weights and activations, fp32 inputs and
outputs). TensorRT 10 builds an fp16 graph strongly typed too, and an fp32 graph with ``precision="fp16"``
with ``BuilderFlag.FP16`` (TensorRT then chooses fp16 kernels where it sees fit). ``precision="fp32"``
also turns TF32 off, so fp32 engines compute in fp32.

TensorRT is imported only after a CUDA GPU has been found (:func:`gixdrt.engine.base.cuda_gpu` asks the
driver library, without TensorRT): on a machine without a GPU, TensorRT objects can crash the process.
Everything here raises :class:`EngineUnavailableError` with the reason where TensorRT cannot run.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GixdrtError
from ..io.assets import sha256 as file_sha256
from .base import EngineUnavailableError, Runner, TensorMeta, cuda_driver, cuda_gpu

log = logging.getLogger(__name__)

__all__ = [
    "EngineBuildError",
    "EngineMismatchError",
    "TensorRTRunner",
    "build_engine",
    "check_sidecar",
    "file_sha256",
    "gpu_info",
    "profile_shapes",
    "read_sidecar",
    "require_tensorrt",
    "sidecar_path",
    "tensorrt_major",
    "tensorrt_status",
]

PRECISIONS = ("fp32", "fp16")
#: ``format`` field of the sidecar, and the version of its layout
SIDECAR_FORMAT = "gixdrt.tensorrt-engine"
SIDECAR_VERSION = 1

#: TensorRT DataType member name → NumPy dtype name (the types gixdrt's engines use)
_TRT_NUMPY = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "INT32": "int32", "INT64": "int64",
              "BOOL": "bool", "UINT8": "uint8"}


class EngineBuildError(GixdrtError, RuntimeError):
    """TensorRT could not parse a graph or build an engine from it; the message has TensorRT's errors."""


class EngineMismatchError(EngineUnavailableError):
    """A serialized engine that must not run here: no sidecar, or built for another TensorRT version, another
    GPU or another ONNX graph. ``engine_path`` and ``differences`` (one line each) say which and why."""

    def __init__(self, engine_path: str | os.PathLike, differences: Sequence[str], *, advice: str = ""):
        self.engine_path = os.fspath(engine_path)
        self.differences = list(differences)
        text = "; ".join(self.differences)
        super().__init__(f"{self.engine_path}: {text}" + (f". {advice}" if advice else ""))


# -------------------------------------------------------------------------------------------------
# Availability
# -------------------------------------------------------------------------------------------------
def tensorrt_status() -> str | None:
    """None when TensorRT could be loaded here, else why not. Probes for a GPU first; never imports TensorRT."""
    ok, why = cuda_gpu()
    if not ok:
        return f"no CUDA GPU ({why})"
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (pip install tensorrt)"
    return None


def require_tensorrt():
    """Import and return the ``tensorrt`` module, or raise :class:`EngineUnavailableError` saying why not."""
    why = tensorrt_status()
    if why:
        raise EngineUnavailableError(f"TensorRT runner: {why}")
    try:
        import tensorrt
    except Exception as exc:  # noqa: BLE001 - a broken install (missing libnvinfer, CUDA mismatch) raises many kinds
        raise EngineUnavailableError(f"TensorRT runner: importing tensorrt failed ({type(exc).__name__}: {exc})") from None
    return tensorrt


def tensorrt_major(trt) -> int:
    """Major version of a ``tensorrt`` module (from ``trt.__version__``, e.g. ``"10.9.0.34"`` → 10)."""
    version = str(getattr(trt, "__version__", ""))
    try:
        return int(version.split(".")[0])
    except ValueError:
        raise EngineUnavailableError(f"TensorRT reports an unreadable version {version!r}") from None


def _require_supported(trt) -> int:
    major = tensorrt_major(trt)
    if major < 10:
        raise EngineUnavailableError(f"TensorRT {trt.__version__} is too old: gixdrt builds and runs engines with TensorRT 10 or 11")
    return major


# -------------------------------------------------------------------------------------------------
# The GPU an engine is built for
# -------------------------------------------------------------------------------------------------
def gpu_info(index: int | None = None) -> dict[str, Any]:
    """``{"name", "compute_capability" ("9.0"), "index"}`` of CUDA device ``index`` (None: the current one).

    Asks PyTorch when it has CUDA, else the CUDA driver library. Raises :class:`EngineUnavailableError`
    when neither can tell (no GPU).
    """
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        i = torch.cuda.current_device() if index is None else int(index)
        major, minor = torch.cuda.get_device_capability(i)
        return {"name": torch.cuda.get_device_name(i), "compute_capability": f"{major}.{minor}", "index": i}
    return _driver_gpu_info(0 if index is None else int(index))


def _driver_gpu_info(index: int) -> dict[str, Any]:
    ok, why = cuda_gpu()
    if not ok:
        raise EngineUnavailableError(f"no CUDA GPU ({why})")
    lib = cuda_driver()
    if lib is None:  # pragma: no cover - cuda_gpu() found the library a moment ago
        raise EngineUnavailableError("no CUDA driver library (libcuda) found")
    dev, major, minor = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
    buf = ctypes.create_string_buffer(256)
    # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, ..._MINOR = 76 (cuda.h)
    if (lib.cuInit(0) or lib.cuDeviceGet(ctypes.byref(dev), index) or lib.cuDeviceGetName(buf, len(buf), dev)
            or lib.cuDeviceGetAttribute(ctypes.byref(major), 75, dev) or lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)):
        raise EngineUnavailableError(f"the CUDA driver could not describe GPU {index}")
    return {"name": buf.value.decode(errors="replace"), "compute_capability": f"{major.value}.{minor.value}", "index": index}


# -------------------------------------------------------------------------------------------------
# Sidecar
# -------------------------------------------------------------------------------------------------
def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """The sidecar of an engine file: the engine's path with ``.json`` appended (``m.engine`` → ``m.engine.json``)."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def _rebuild_hint(engine_path: str | os.PathLike, side: Mapping[str, Any] | None = None) -> str:
    onnx = (side or {}).get("onnx", {}).get("path") or "MODEL.onnx"
    precision = (side or {}).get("precision") or "fp32"
    return f"rebuild it on this machine: gixdrt build {onnx} --precision {precision} --out {os.fspath(engine_path)}"


def read_sidecar(engine_path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar of ``engine_path`` as a dict; :class:`EngineMismatchError` when it is missing or unreadable."""
    side = sidecar_path(engine_path)
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EngineMismatchError(
            engine_path, [(f"no sidecar {side.name} beside it (TensorRT version, GPU and source graph of the engine), "
                           "so nothing says it was built for this machine; gixdrt runs only engines it built")],
            advice=_rebuild_hint(engine_path)) from None
    except (OSError, ValueError) as exc:
        raise EngineMismatchError(engine_path, [f"its sidecar {side.name} is unreadable ({exc})"],
                                  advice=_rebuild_hint(engine_path)) from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise EngineMismatchError(engine_path, [f"{side.name} is not a gixdrt engine sidecar"], advice=_rebuild_hint(engine_path))
    return data


def _gpu_text(gpu: Mapping[str, Any]) -> str:
    return f"{gpu.get('name', '?')} (compute capability {gpu.get('compute_capability', '?')})"


def check_sidecar(engine_path: str | os.PathLike, *, onnx_path: str | os.PathLike | None = None, trt_version: str,
                  gpu: Mapping[str, Any] | str, verify_engine: bool = True) -> dict[str, Any]:
    """Check that the engine at ``engine_path`` was built for this setup → its sidecar (dict).

    trt_version: the TensorRT version here (``tensorrt.__version__``); gpu: the GPU here (:func:`gpu_info`,
    or just its name); onnx_path: the graph the engine should come from (its sha256 is compared; None: not
    checked); verify_engine: also compare the engine file's sha256 with the sidecar's (a sidecar left
    beside another engine). Raises :class:`EngineMismatchError` naming the engine file and every
    difference, or when the engine has no sidecar.
    """
    side = read_sidecar(engine_path)
    diffs = []
    built_version = side.get("tensorrt_version")
    if str(built_version) != str(trt_version):
        diffs.append(f"built with TensorRT {built_version}, this is TensorRT {trt_version}")
    here = {"name": gpu} if isinstance(gpu, str) else dict(gpu)
    built = side.get("gpu") or {}
    keys = [k for k in ("name", "compute_capability") if k in here]
    if any(str(built.get(k)) != str(here[k]) for k in keys):
        diffs.append(f"built for GPU {_gpu_text(built)}, this GPU is {_gpu_text(here)}")
    if onnx_path is not None:
        want = (side.get("onnx") or {}).get("sha256")
        try:
            have = file_sha256(onnx_path)
        except OSError as exc:
            diffs.append(f"cannot read the ONNX graph {os.fspath(onnx_path)} to compare ({exc})")
        else:
            if have != want:
                source = (side.get("onnx") or {}).get("path", "?")
                diffs.append(f"built from another ONNX graph ({source}, sha256 {str(want)[:12]}…) than "
                             f"{os.fspath(onnx_path)} (sha256 {have[:12]}…)")
    if verify_engine and side.get("engine_sha256"):
        try:
            if file_sha256(engine_path) != side["engine_sha256"]:
                diffs.append(f"the engine file does not match its sidecar {sidecar_path(engine_path).name} "
                             "(replaced after the build?)")
        except OSError as exc:
            diffs.append(f"the engine file is unreadable ({exc})")
    if diffs:
        raise EngineMismatchError(engine_path, diffs, advice=_rebuild_hint(engine_path, side))
    return side


# -------------------------------------------------------------------------------------------------
# Building
# -------------------------------------------------------------------------------------------------
def _batch_triple(batch: int | Sequence[int] | None) -> tuple[int, int, int] | None:
    if batch is None:
        return None
    if isinstance(batch, (int, np.integer)) and not isinstance(batch, bool):
        triple = (int(batch),) * 3
    else:
        try:
            triple = tuple(int(b) for b in batch)
        except (TypeError, ValueError):
            raise ValueError(f"batch must be an int or (min, opt, max), got {batch!r}") from None
        if len(triple) != 3:
            raise ValueError(f"batch must be an int or (min, opt, max), got {batch!r}")
    if not 1 <= triple[0] <= triple[1] <= triple[2]:
        raise ValueError(f"batch profile must satisfy 1 ≤ min ≤ opt ≤ max, got {triple}")
    return triple


def profile_shapes(inputs: Mapping[str, Sequence[int]], batch: int | Sequence[int] | None, *, source: str = "graph"
                   ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """Optimisation-profile shapes (min, opt, max) for network inputs ``name → shape`` (-1: dynamic).

    An input whose first dimension is static keeps its shape (min = opt = max; ``batch``, when given, must
    agree with it). A dynamic first dimension (the batch) ranges over ``batch`` (an int or (min, opt, max),
    required then). Other dynamic dimensions are refused: gixdrt's graphs have static shapes.
    """
    triple = _batch_triple(batch)
    shapes = {}
    for name, shape in inputs.items():
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape[1:]):
            raise EngineBuildError(f"{source}: input {name!r} has dynamic dimensions {list(shape)} besides the batch; "
                                   "export the graph with static shapes")
        if not shape or shape[0] >= 0:
            if triple is not None and shape and triple != (shape[0],) * 3:
                raise EngineBuildError(f"{source}: input {name!r} has a static batch of {shape[0]} ({list(shape)}); "
                                       f"the batch profile {triple} needs a graph exported for it "
                                       f"(export with batch={triple[1]}, or leave the batch out)")
            shapes[name] = (shape, shape, shape)
        else:
            if triple is None:
                raise EngineBuildError(f"{source}: input {name!r} has a dynamic batch dimension {list(shape)}; "
                                       "give the batch profile (batch=N or (min, opt, max))")
            shapes[name] = tuple((b, *shape[1:]) for b in triple)
    return shapes


def _graph_info(onnx_path: Path) -> dict[str, Any]:
    """Precision ("fp32"/"fp16") and gixdrt metadata of an ONNX file (reads it with the onnx package)."""
    try:
        import onnx
        from onnx import TensorProto
    except ImportError:
        raise EngineUnavailableError("reading the graph's precision needs the onnx package (pip install 'gixdrt[torch]')") from None
    try:
        model = onnx.load(os.fspath(onnx_path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError and others on a corrupt file
        raise EngineBuildError(f"{onnx_path}: not a readable ONNX graph ({type(exc).__name__}: {exc})") from None
    meta = {p.key: p.value for p in model.metadata_props if p.key.startswith("gixdrt.")}
    half = {TensorProto.FLOAT16, TensorProto.BFLOAT16}
    g = model.graph
    is_half = any(i.data_type in half for i in g.initializer)
    for node in g.node:
        for a in node.attribute:
            if (node.op_type == "Cast" and a.name == "to" and a.i in half) or (a.name == "value" and a.t.data_type in half):
                is_half = True
    is_half = is_half or any(v.type.tensor_type.elem_type in half for v in [*g.input, *g.output, *g.value_info])
    precision = meta.get("gixdrt.precision") or ("fp16" if is_half else "fp32")
    return {"precision": precision, "metadata": meta}


def _enum_name(value) -> str:
    """Member name of a TensorRT enum value (``DataType.HALF`` → ``"HALF"``)."""
    return str(getattr(value, "name", value)).rpartition(".")[2].upper()


def _make_logger(trt):
    """A ``trt.ILogger`` that forwards TensorRT's messages to Python logging and keeps the errors."""
    base = trt.ILogger

    class _Logger(base):
        def __init__(self):
            base.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            level = _enum_name(severity)
            if level in ("INTERNAL_ERROR", "ERROR"):
                self.errors.append(str(msg))
                log.error("TensorRT: %s", msg)
            elif level == "WARNING":
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return _Logger()


def _load_plugins(trt, logger, want: bool) -> str | None:
    """Register TensorRT's own plugins and, when ``want``, gixdrt's plugin library (optional) → the library
    (a path, or "loaded") or None when it was not loaded. Never raises: the dense and head graphs need no
    plugin."""
    init = getattr(trt, "init_libnvinfer_plugins", None)
    if init is not None:
        try:
            init(logger, "")
        except Exception as exc:  # noqa: BLE001
            log.warning("TensorRT's plugin library was not initialised (%s)", exc)
    if not want:
        return None
    try:
        module = importlib.import_module(f"{__package__}.plugins")
        loader = module.load_trt_plugins
    except (ImportError, AttributeError):
        log.debug("gixdrt's TensorRT plugins are not part of this install")
        return None
    try:
        result = loader(trt)
    except EngineUnavailableError as exc:  # not built or not found: usual, and only GixdrtRoIAlign needs it
        log.info("gixdrt's TensorRT plugin library is not loaded (%s); graphs using GixdrtRoIAlign will not parse", exc)
        return None
    except Exception as exc:  # noqa: BLE001 - a mismatched plugin library
        log.warning("gixdrt's TensorRT plugin library was not loaded (%s: %s); graphs using GixdrtRoIAlign will not parse",
                    type(exc).__name__, exc)
        return None
    if isinstance(result, (str, os.PathLike)):
        return os.fspath(result)
    where = getattr(module, "plugin_library_path", None)
    try:
        path = where() if callable(where) else None
    except Exception:  # noqa: BLE001
        path = None
    return os.fspath(path) if path is not None else "loaded"


def _progress_monitor(trt):
    """A ``trt.IProgressMonitor`` printing the builder's top-level phases on stderr (None where unsupported)."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class _Progress(base):
        def __init__(self):
            base.__init__(self)
            self.t0 = time.perf_counter()

        def phase_start(self, phase_name, parent_phase, num_steps):
            if parent_phase is None:
                print(f"  TensorRT [{time.perf_counter() - self.t0:6.1f} s] {phase_name} ({num_steps} steps)",
                      file=sys.stderr, flush=True)

        def step_complete(self, phase_name, step):
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            pass

    return _Progress()


def _error_field(err, name: str) -> Any:
    """``err.name()`` of a parser error, or None where this TensorRT's parser lacks the accessor."""
    fn = getattr(err, name, None)
    try:
        return fn() if callable(fn) else None
    except Exception:  # noqa: BLE001
        return None


def _parser_errors(parser) -> list[str]:
    """Every error the ONNX parser recorded, one line each (node, operator, description)."""
    lines = []
    for i in range(int(parser.num_errors)):
        err = parser.get_error(i)
        parts = []
        node, node_name, op = (_error_field(err, k) for k in ("node", "node_name", "node_operator"))
        if node is not None and int(node) >= 0:
            parts.append(f"node {node}")
        if node_name:
            parts.append(repr(node_name))
        if op:
            parts.append(f"({op})")
        desc = _error_field(err, "desc") or str(err)
        code = _error_field(err, "code")
        code_text = f" [{_enum_name(code)}]" if code is not None else ""
        lines.append(f"{' '.join(parts)}: {desc}{code_text}" if parts else f"{desc}{code_text}")
    return lines


def _tensor_record(t) -> dict[str, Any]:
    dt = _enum_name(t.dtype)
    return {"name": t.name, "shape": [int(d) for d in t.shape], "dtype": _TRT_NUMPY.get(dt, dt.lower())}


def build_engine(onnx_path: str | os.PathLike, out_path: str | os.PathLike, *, precision: str = "fp32",
                 batch: int | Sequence[int] | None = None, workspace_gib: float = 4, timing_cache: str | os.PathLike | None = None,
                 plugins: bool = True, progress: bool = False) -> Path:
    """Build a TensorRT engine from an ONNX graph → ``out_path`` (returned), with its sidecar ``<out>.json``.

    precision: ``"fp32"`` or ``"fp16"``. With TensorRT 11 it must match the graph (strongly typed builds:
        an fp16 engine needs an fp16 graph); with TensorRT 10 an fp32 graph can be built fp16
        (``BuilderFlag.FP16``). fp32 builds have TF32 off.
    batch: the optimisation profile of the batch dimension, an int or (min, opt, max). None: the graph's
        (gixdrt's graphs have a static batch: the profile is min = opt = max = the graph's input shapes).
    workspace_gib: the builder's workspace limit. timing_cache: a file of TensorRT's timing cache, read when
        it exists (and made by the same TensorRT on the same GPU) and written back after the build.
    plugins: register gixdrt's TensorRT plugin library before parsing, where it is installed.
    progress: print the builder's phases on stderr.

    The engine and the sidecar are each written atomically. Raises :class:`EngineUnavailableError` when
    TensorRT or a GPU is missing, :class:`EngineBuildError` (with every parser error, or TensorRT's
    errors) when the graph does not parse or build, ValueError for bad arguments.
    """
    from .. import __version__
    from ..io.atomic import atomic_path

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    triple = _batch_triple(batch)
    if not workspace_gib > 0:
        raise ValueError(f"workspace_gib must be > 0, got {workspace_gib}")
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path}: no such ONNX file")

    trt = require_tensorrt()
    major = _require_supported(trt)
    graph = _graph_info(onnx_path)
    graph_precision = graph["precision"]
    if graph_precision == "fp16" and precision == "fp32":
        raise EngineBuildError(f"{onnx_path}: the graph is fp16 (weights and activations), so its engine is fp16: "
                               "build it with precision='fp16' (--precision fp16), or export an fp32 graph")
    if major >= 11 and precision == "fp16" and graph_precision != "fp16":
        raise EngineBuildError(
            f"{onnx_path}: TensorRT {trt.__version__} builds strongly typed networks only, where the precision comes "
            "from the graph, and this graph is fp32. For an fp16 engine export an fp16 graph "
            "(gixdrt.export.export_dense / export_head with fp16=True) and build that")
    strongly_typed = major >= 11 or graph_precision == "fp16"
    gpu = gpu_info()

    logger = _make_logger(trt)
    loaded = _load_plugins(trt, logger, plugins)
    builder = trt.Builder(logger)
    flags = 0
    if strongly_typed:  # on TensorRT 11 always on (the flag is accepted and ignored there)
        flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if flag is not None:
            flags |= 1 << int(flag)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse(onnx_path.read_bytes(), os.fspath(onnx_path))
    errors = _parser_errors(parser)
    if not ok or errors:
        listed = "\n  ".join(errors or logger.errors or ["(the parser gave no details)"])
        raise EngineBuildError(f"{onnx_path}: TensorRT's ONNX parser failed with {len(errors)} error(s):\n  {listed}")

    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    outputs = [network.get_output(i) for i in range(network.num_outputs)]
    shapes = profile_shapes({t.name: tuple(t.shape) for t in inputs}, triple, source=os.fspath(onnx_path))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp16" and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "fp32":
        tf32 = getattr(trt.BuilderFlag, "TF32", None)
        if tf32 is not None:
            config.clear_flag(tf32)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache_file = Path(timing_cache) if timing_cache is not None else None
    if cache_file is not None:
        blob = cache_file.read_bytes() if cache_file.is_file() else b""
        if not config.set_timing_cache(config.create_timing_cache(blob), False):
            log.warning("%s: timing cache not usable with this TensorRT or GPU; starting a new one", cache_file)
            config.set_timing_cache(config.create_timing_cache(b""), False)
    monitor = _progress_monitor(trt) if progress else None
    if monitor is not None:
        try:
            config.progress_monitor = monitor
        except (AttributeError, TypeError):
            monitor = None

    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        detail = "\n  ".join(logger.errors) or "see TensorRT's messages in the log"
        raise EngineBuildError(f"{onnx_path}: TensorRT could not build an engine:\n  {detail}")
    data = memoryview(plan).cast("B")
    build_s = time.perf_counter() - t0

    first = next(iter(shapes.values()), None)
    sidecar = {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_VERSION,
        "engine": out_path.name,
        "engine_sha256": hashlib.sha256(data).hexdigest(),
        "tensorrt_version": str(trt.__version__),
        "gpu": gpu,
        "precision": precision,
        "strongly_typed": bool(strongly_typed),
        "batch": None if first is None or not first[0] else {"min": first[0][0], "opt": first[1][0], "max": first[2][0]},
        "profile": {n: {"min": list(lo), "opt": list(opt), "max": list(hi)} for n, (lo, opt, hi) in shapes.items()},
        "onnx": {"path": os.path.abspath(onnx_path), "sha256": file_sha256(onnx_path), "precision": graph_precision,
                 "metadata": graph["metadata"]},
        "gixdrt_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(build_s, 3),
        "workspace_gib": workspace_gib,
        "plugins": loaded,
        "inputs": [_tensor_record(t) for t in inputs],
        "outputs": [_tensor_record(t) for t in outputs],
    }
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(data)
    with atomic_path(sidecar_path(out_path)) as tmp:
        tmp.write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    if cache_file is not None:
        cache = config.get_timing_cache()
        if cache is not None:
            with atomic_path(cache_file) as tmp:
                tmp.write_bytes(memoryview(cache.serialize()).cast("B"))
    log.info("built %s (%s, TensorRT %s, %s) in %.1f s", out_path, precision, trt.__version__, _gpu_text(gpu), build_s)
    return out_path


# -------------------------------------------------------------------------------------------------
# Running
# -------------------------------------------------------------------------------------------------
def _cuda_index(device: str) -> int:
    kind, _, index = str(device).partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ValueError(f"invalid device {device!r} for TensorRT: it runs on a CUDA GPU, use cuda or cuda:N")
    return int(index or 0)


def _torch_cuda():
    try:
        import torch
    except ImportError:
        raise EngineUnavailableError("TensorRT runner: PyTorch is needed for its CUDA buffers and stream "
                                     "(pip install gixdrt[torch])") from None
    if not torch.cuda.is_available():
        raise EngineUnavailableError("TensorRT runner: PyTorch sees no CUDA GPU (a CUDA build of PyTorch is needed)")
    return torch


def _numpy_dtype(trt_dtype, name: str) -> np.dtype:
    dt = _enum_name(trt_dtype)
    if dt not in _TRT_NUMPY:
        raise EngineUnavailableError(f"TensorRT runner: tensor {name!r} has type {dt}, which gixdrt does not run")
    return np.dtype(_TRT_NUMPY[dt])


class TensorRTRunner(Runner):
    """Runs a serialized TensorRT engine (``engine_path``, built by :func:`build_engine`) on a CUDA GPU.

    device: ``"cuda"`` or ``"cuda:N"``. onnx_path: the graph the engine must have been built from (checked
    against the sidecar's sha256; None: not checked). cuda_graph: after one warm-up call, capture the
    engine's launch in a CUDA graph and replay it on later calls (falls back, with a logged warning, when
    capture fails). build: :func:`build_engine`'s keywords (``precision``, ``workspace_gib``...): build the
    engine from ``onnx_path`` when the file is missing, and rebuild it once when its sidecar does not fit this
    machine (another TensorRT version or GPU, another graph); None: refuse such an engine.

    ``activate`` checks the sidecar (TensorRT version, GPU, graph: :func:`check_sidecar`), deserialises
    the engine, creates an execution context, allocates the outputs as torch CUDA tensors and a CUDA stream
    of its own. ``infer`` takes torch CUDA tensors (used in place, by pointer; copied into the runner's input
    buffers with ``cuda_graph``) or NumPy arrays / CPU tensors (uploaded) and returns name → torch CUDA
    tensor. The returned tensors are the runner's output buffers: valid until the next call, which
    overwrites them (clone what must be kept). Each call waits for the caller's current stream before it
    starts and makes the caller's current stream wait for it before it returns (no host synchronisation). Dynamic input dimensions (an engine built with a
    batch range) are fixed at the profile's opt shape.
    """

    name = "tensorrt"

    def __init__(self, engine_path: str | os.PathLike, *, device: str = "cuda", onnx_path: str | os.PathLike | None = None,
                 cuda_graph: bool = False, build: Mapping[str, Any] | None = None):
        super().__init__()
        self.engine_path = os.fspath(engine_path)
        self.onnx_path = None if onnx_path is None else os.fspath(onnx_path)
        self.device = device
        self._index = _cuda_index(device)
        self.cuda_graph = bool(cuda_graph)
        self.build = None if build is None else dict(build)
        if self.build is not None and self.onnx_path is None:
            raise ValueError("TensorRTRunner: build= needs the onnx_path to build the engine from")
        self.sidecar: dict[str, Any] | None = None
        self._release()

    def _release(self) -> None:
        # order matters: the graph and the context use the engine, the engine the runtime
        self._graph = None
        self._context = None
        self._engine = None
        self._runtime = None
        self._trt_logger = None
        self._stream = None
        self._torch = None
        self._dev = None
        self._in_meta: dict[str, TensorMeta] = {}
        self._outputs: dict[str, TensorMeta] = {}
        self._in_bufs: dict[str, Any] = {}
        self._out_bufs: dict[str, Any] = {}
        self._graph_failed = False

    @property
    def graph_captured(self) -> bool:
        """Whether later calls replay a captured CUDA graph."""
        return self._graph is not None

    def output_metadata(self) -> dict[str, TensorMeta]:
        self._require_active()
        return dict(self._outputs)

    def activate_impl(self) -> None:
        trt = require_tensorrt()
        _require_supported(trt)
        torch = _torch_cuda()
        path = Path(self.engine_path)
        if not path.is_file() and self.build is not None:
            self._build(path)
        if not path.is_file():
            raise EngineUnavailableError(f"{path}: no such engine file (build one: gixdrt build MODEL.onnx --out {path})")
        try:
            self.sidecar = check_sidecar(path, onnx_path=self.onnx_path, trt_version=trt.__version__,
                                         gpu=gpu_info(self._index))
        except EngineMismatchError as exc:
            if self.build is None:
                raise
            log.warning("%s; rebuilding it", exc)
            path.unlink(missing_ok=True)
            self._build(path)
            self.sidecar = check_sidecar(path, onnx_path=self.onnx_path, trt_version=trt.__version__,
                                         gpu=gpu_info(self._index))
        dev = torch.device("cuda", self._index)
        try:
            with torch.cuda.device(dev):
                self._open(trt, torch, dev, path)
        except BaseException:
            self._release()
            raise

    def _build(self, path: Path) -> None:
        t0 = time.perf_counter()
        log.warning("building TensorRT engine %s (once per model, shape and GPU; takes minutes)", path.name)
        build_engine(self.onnx_path, path, **self.build)
        log.info("built %s in %.0f s", path.name, time.perf_counter() - t0)

    def _open(self, trt, torch, dev, path: Path) -> None:
        self._torch, self._dev = torch, dev
        self._trt_logger = _make_logger(trt)
        _load_plugins(trt, self._trt_logger, True)
        self._runtime = trt.Runtime(self._trt_logger)
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            detail = "; ".join(self._trt_logger.errors) or "see TensorRT's messages in the log"
            raise EngineUnavailableError(f"{path}: TensorRT could not deserialize the engine ({detail})")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise EngineUnavailableError(f"{path}: TensorRT could not create an execution context (GPU memory?)")
        self._stream = torch.cuda.Stream(device=dev)
        engine, ctx = self._engine, self._context
        out_types = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = _numpy_dtype(engine.get_tensor_dtype(name), name)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                shape = tuple(int(d) for d in engine.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    shape = tuple(int(d) for d in engine.get_tensor_profile_shape(name, 0)[1])
                if not ctx.set_input_shape(name, shape):
                    raise EngineUnavailableError(f"{path}: input {name!r} does not accept the shape {list(shape)}")
                self._in_meta[name] = TensorMeta(dtype, shape)
            else:
                out_types[name] = dtype
        for name, dtype in out_types.items():
            shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise EngineUnavailableError(f"{path}: output {name!r} has a data-dependent shape {list(shape)}; "
                                             "gixdrt runs engines with static output shapes")
            self._outputs[name] = TensorMeta(dtype, shape)
            self._out_bufs[name] = torch.empty(shape, dtype=getattr(torch, dtype.name), device=dev)
        if self.cuda_graph:  # fixed input addresses: the graph replays with the pointers it was captured with
            for name, meta in self._in_meta.items():
                self._input_buffer(name, meta)

    def input_metadata_impl(self) -> Mapping[str, TensorMeta]:
        return dict(self._in_meta)

    def _input_buffer(self, name: str, meta: TensorMeta):
        buf = self._in_bufs.get(name)
        if buf is None:
            torch = self._torch
            buf = self._in_bufs[name] = torch.empty(meta.shape, dtype=getattr(torch, meta.dtype.name), device=self._dev)
        return buf

    def _input_pointer(self, name: str, x: Any) -> int:
        torch, meta = self._torch, self._in_meta[name]
        if isinstance(x, torch.Tensor):
            direct = (not self.cuda_graph and x.is_cuda and x.device == self._dev and x.is_contiguous()
                      and x.dtype == getattr(torch, meta.dtype.name))
            if direct:
                return x.data_ptr()
            src = x
        else:
            src = torch.from_numpy(np.ascontiguousarray(np.asarray(x)))
        buf = self._input_buffer(name, meta)
        buf.copy_(src.reshape(meta.shape))
        return buf.data_ptr()

    def infer_impl(self, feed: Mapping[str, Any]) -> dict[str, Any]:
        torch, stream, ctx = self._torch, self._stream, self._context
        stream.wait_stream(torch.cuda.current_stream(self._dev))  # inputs made on the caller's stream are ready
        with torch.cuda.device(self._dev), torch.cuda.stream(stream):
            pointers = {name: self._input_pointer(name, feed[name]) for name in self._in_meta}
            if self._graph is not None:
                self._graph.replay()
            else:
                for name, meta in self._in_meta.items():
                    ctx.set_input_shape(name, meta.shape)
                    ctx.set_tensor_address(name, pointers[name])
                for name, buf in self._out_bufs.items():
                    ctx.set_tensor_address(name, buf.data_ptr())
                if not ctx.execute_async_v3(stream.cuda_stream):
                    detail = "; ".join(self._trt_logger.errors[-3:]) or "see TensorRT's messages in the log"
                    raise RuntimeError(f"{self.engine_path}: TensorRT execution failed ({detail})")
                if self.cuda_graph and not self._graph_failed:
                    self._capture()  # after this warm-up call; on failure it replaces self._stream
        # no host synchronisation: the caller's stream waits for this one, so the kernels after the engine (and
        # any copy of its outputs) are ordered after it on the device
        torch.cuda.current_stream(self._dev).wait_stream(self._stream)
        return dict(self._out_bufs)

    def _capture(self) -> None:
        """Capture the engine's launch (addresses already set to the runner's buffers) in a CUDA graph."""
        torch = self._torch
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self._stream):
                ok = self._context.execute_async_v3(self._stream.cuda_stream)
            if not ok:
                raise RuntimeError("execute_async_v3 failed while capturing")
        except Exception as exc:  # noqa: BLE001 - capture fails in many ways (unsupported layers, driver)
            self._graph_failed = True
            log.warning("%s: CUDA graph capture failed (%s: %s); running without a CUDA graph",
                        self.engine_path, type(exc).__name__, exc)
            try:
                self._stream.synchronize()
            except Exception as sync_exc:  # noqa: BLE001 - an invalidated capture can leave an error on the stream
                log.debug("stream after the failed capture: %s", sync_exc)
            self._stream = torch.cuda.Stream(device=self._dev)  # a fresh stream, whatever the capture left
            return
        self._graph = graph

    def deactivate_impl(self) -> None:
        try:
            if self._stream is not None:
                self._stream.synchronize()
        finally:
            self._release()
