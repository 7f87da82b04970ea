"""Spot masking with the U-Net as one plan of the engine, from raw powder frames to a bool mask.

::

    frames ─ powder_normalize ─ [ring_normalize] ─ [extract_tiles] ─▶ [unet graph] ─▶ stitch_logits ─ spot_mask ─ …
    [N, H, W]   float32[N, C, Hp, Wp]                                logits [N·T, 2, Sh, Sw]   log-odds [N, H, W]

    … ─ [remove_small_components] → bool[N, H, W]

- ``powder_normalize`` (kernel): the robust per-frame scaling of :mod:`gixdrt.kernels.reference.powder`, detector-
  masked pixels set to 0, zero padding up to multiples of the network's pooling factor (Hp, Wp): channel 0;
- ``ring_normalize`` (kernel, two-channel models only): channel 1, each pixel's robust z-score against its powder
  ring (asinh-compressed), from a ring index built once per geometry, frame shape and detector mask;
- tiles (only when the padded frame is larger than ``tile`` (768) on a side): overlapping tiles of at most ``tile`` px
  with ``halo`` px of context on each inner side, the last tile of a row or column flush with the frame's edge; the
  network runs on them one at a time (:class:`~gixdrt.engine.chunked.ChunkedRunner`), so the peak memory is that of
  one tile. ``stitch_logits`` takes each pixel's log-odds from the tile whose core holds it (the cores partition the
  frame; a core's edge lies ≥ ``halo`` px inside its tile except at the frame's edge), *before* any probability or
  threshold. With a halo at least the network's receptive radius, the tiled result equals the whole-frame one up to
  float rounding;
- ``unet`` (graph): ONNX Runtime (the shipped ``unet.onnx``) or PyTorch (the module), logits [.., 2, ..];
- ``spot_mask`` (kernel): P(spot) = softmax(logits)[spot] > ``threshold`` ⇔ logit_spot − logit_bg > log(t/(1 − t)),
  and never a detector-masked pixel;
- ``remove_small_components`` (kernel, when ``min_size`` > 1): connected components (``connectivity`` 8 or 4) of
  fewer than ``min_size`` pixels are dropped.

>>> from gixdrt.powder.plan import PowderMasker
>>> masker = PowderMasker("default", detector_mask=dmask)        # ONNX Runtime on the CPU, host kernels
>>> spots = masker(frame)                                        # bool[H, W], True = spot pixel (exclude it)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from ..engine.plan import Buffer, GraphStage, KernelStage, Plan
from ..kernels.reference.powder import BINS_PER_UNIT, MAX_LOG, MIN_MAD, RING_MIN_PIXELS, RING_MIN_SCALE

__all__ = ["RING_DEFAULTS", "MaskSettings", "PowderMasker", "TileLayout", "auto_runtime", "powder_plan",
           "ring_index", "tile_layout"]

#: the ring channel's defaults: rings 2 px wide (as the classical mask), its statistics' minimum pixels and scale floor
RING_DEFAULTS: dict[str, Any] = {"width_px": 2.0, "min_pixels": RING_MIN_PIXELS, "min_scale": RING_MIN_SCALE}


def ring_index(geometry: Any, shape: tuple[int, int], mask: np.ndarray | None = None, *, width_px: float = 2.0):
    """The :class:`~gixdrt.powder.classical.RingIndex` of frames of ``shape`` under ``geometry`` (a
    :class:`~gixdrt.powder.geometry.PowderGeometry`, whose shape is replaced by the frames'), detector mask
    excluded."""
    from .classical import RingIndex

    shape = (int(shape[0]), int(shape[1]))
    if tuple(geometry.shape) != shape:
        geometry = geometry.replace(shape=shape)
    return RingIndex.from_geometry(geometry, mask, width_px=float(width_px))


@dataclass(frozen=True)
class MaskSettings:
    """What turns the network's output into a mask, and how frames are normalised and tiled."""

    threshold: float = 0.5  # P(spot) above which a pixel is a spot pixel
    min_size: int = 0  # connected components smaller than this are dropped (≤ 1: none)
    connectivity: int = 8
    tile: int = 768  # the network runs on at most tile × tile px at once (0: always the whole frame); 768 px tiles
    # are the fastest measured on 2880² frames with PyTorch bf16 (cache-sized) and as fast as any with ONNX Runtime
    halo: int = 32  # context on each inner side of a tile (px)
    normalization: dict[str, Any] = field(
        default_factory=lambda: {"bins_per_unit": BINS_PER_UNIT, "max_log": MAX_LOG, "min_mad": MIN_MAD})
    # the ring channel of two-channel models: ring width (px of radius) and the ring_normalize parameters
    ring: dict[str, Any] = field(default_factory=lambda: dict(RING_DEFAULTS))

    def __post_init__(self) -> None:
        if not 0.0 < float(self.threshold) < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {self.threshold}")
        if self.connectivity not in (4, 8):
            raise ValueError(f"connectivity must be 4 or 8, got {self.connectivity}")
        if self.tile < 0 or self.halo < 0:
            raise ValueError("tile and halo must be ≥ 0")

    @classmethod
    def from_card(cls, card: dict[str, Any], **overrides: Any) -> MaskSettings:
        """The settings a model card recommends (its ``mask`` and ``normalization``), with ``overrides``."""
        m = card.get("mask", {})
        base = cls(threshold=float(m.get("threshold", 0.5)), min_size=int(m.get("min_size", 0)),
                   connectivity=int(m.get("connectivity", 8)), normalization=dict(card.get("normalization", {})),
                   ring={**RING_DEFAULTS, **card.get("ring", {})})
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TileLayout:
    """Tiles of a padded frame: tile (a, b) covers rows starts_y[a] … + tile[0] and columns starts_x[b] … + tile[1];
    its core (cores_y[a] × cores_x[b], absolute [lo, hi) ranges) is where its output is used."""

    padded: tuple[int, int]
    tile: tuple[int, int]
    starts_y: tuple[int, ...]
    starts_x: tuple[int, ...]
    cores_y: tuple[tuple[int, int], ...]
    cores_x: tuple[tuple[int, int], ...]

    @property
    def count(self) -> int:
        return len(self.starts_y) * len(self.starts_x)

    @property
    def whole(self) -> bool:
        return self.count == 1

    def params(self) -> dict[str, Any]:
        return {"starts_y": list(self.starts_y), "starts_x": list(self.starts_x),
                "cores_y": [list(c) for c in self.cores_y], "cores_x": [list(c) for c in self.cores_x]}


def _axis(length: int, tile: int, halo: int) -> tuple[list[int], list[tuple[int, int]], int]:
    if tile <= 0 or length <= tile:
        return [0], [(0, length)], length
    step = tile - 2 * halo
    if step <= 0:
        raise ValueError(f"tile {tile} leaves no core with a halo of {halo} px")
    starts = [0]
    while starts[-1] + tile < length:
        starts.append(min(starts[-1] + step, length - tile))
    bounds = [0] + [(b + a + tile) // 2 for a, b in zip(starts, starts[1:])] + [length]
    return starts, list(zip(bounds[:-1], bounds[1:])), tile


def tile_layout(height: int, width: int, *, multiple: int, tile: int = 1024, halo: int = 32) -> TileLayout:
    """Tiles for a frame of ``height`` × ``width``: padded up to multiples of ``multiple``; whole when it fits in
    ``tile`` (rounded down to a multiple) on both sides or ``tile`` is 0."""
    m = int(multiple)
    hp, wp = -(-int(height) // m) * m, -(-int(width) // m) * m
    t = (int(tile) // m) * m if tile else 0
    if tile and t < m:
        raise ValueError(f"tile {tile} is smaller than the network's multiple {m}")
    if t and hp <= t and wp <= t:
        t = 0
    ys, cy, sh = _axis(hp, t, halo)
    xs, cx, sw = _axis(wp, t, halo)
    return TileLayout((hp, wp), (sh, sw), tuple(ys), tuple(xs), tuple(cy), tuple(cx))


def powder_plan(height: int, width: int, *, batch: int = 1, dtype: str = "float32", mask: np.ndarray | None = None,
                settings: MaskSettings | None = None, multiple: int = 4, rings: Any = None) -> Plan:
    """The plan for ``batch`` frames of ``height`` × ``width`` (``dtype``), detector mask ``mask`` (uint8/bool
    [H, W], nonzero = excluded, or None). Inputs: ``frames`` [N, H, W]. Outputs: ``spots`` bool[N, H, W] and
    ``log_odds`` float32[N, H, W]. The graph ``unet`` takes ``x`` float32[N·T, C, Sh, Sw] and gives ``logits``
    float32[N·T, 2, Sh, Sw] (T tiles per frame; see :func:`tile_layout`). ``rings``: the frames' ring index
    (:func:`ring_index`) for a two-channel model (C = 2), else None (C = 1)."""
    s = settings or MaskSettings()
    c = 1 if rings is None else 2
    if rings is not None and tuple(rings.shape) != (int(height), int(width)):
        raise ValueError(f"ring index of {tuple(rings.shape)} for frames of {(int(height), int(width))}")
    n, h, w = int(batch), int(height), int(width)
    lay = tile_layout(h, w, multiple=multiple, tile=s.tile, halo=s.halo)
    hp, wp = lay.padded
    sh, sw = lay.tile
    t = lay.count
    buffers: dict[str, Buffer] = {
        "frames": Buffer((n, h, w), dtype, "input"),
        "net_input": Buffer((n, c, hp, wp), "float32"),
        "logits": Buffer((n * t, 2, sh, sw), "float32", "graph"),
        "log_odds": Buffer((n, h, w), "float32"),
        "spots_raw": Buffer((n, h, w), "bool"),
    }
    mk: dict[str, str] = {}
    if mask is not None:
        if np.shape(mask) != (h, w):
            raise ValueError(f"detector mask shape {np.shape(mask)} differs from the frames' {(h, w)}")
        buffers["detector_mask"] = Buffer.of(np.ascontiguousarray(mask).astype(np.uint8))
        mk = {"mask": "detector_mask"}
    stages: list[Any] = [KernelStage("normalize", "powder_normalize", ("frames",), ("net_input",),
                                     dict(s.normalization), kwargs=mk, timer="normalize")]
    if rings is not None:
        buffers["ring_pixels"] = Buffer.of(np.ascontiguousarray(rings.pixels))
        buffers["ring_ptr"] = Buffer.of(np.ascontiguousarray(rings.ptr, dtype=np.int64))
        rp = {k: v for k, v in s.ring.items() if k in ("min_pixels", "min_scale")}
        stages.append(KernelStage("ring", "ring_normalize", ("frames",), ("net_input",), {"channel": 1, **rp},
                                  kwargs={"pixels": "ring_pixels", "ptr": "ring_ptr"}, timer="ring"))
    graph_in = "net_input"
    if not lay.whole:
        buffers["tiles"] = Buffer((n * t, c, sh, sw), "float32")
        stages.append(KernelStage("tiles", "extract_tiles", ("net_input",), ("tiles",), lay.params(), timer="tiles"))
        graph_in = "tiles"
    stages += [
        GraphStage("unet", "unet", {"x": graph_in}, {"logits": "logits"}, timer="unet"),
        KernelStage("stitch", "stitch_logits", ("logits",), ("log_odds",), lay.params(), timer="stitch"),
        KernelStage("threshold", "spot_mask", ("log_odds",), ("spots_raw",), {"threshold": float(s.threshold)},
                    kwargs=mk, timer="mask"),
    ]
    final = "spots_raw"
    if s.min_size > 1:
        buffers["spots"] = Buffer((n, h, w), "bool")
        stages.append(KernelStage("components", "remove_small_components", ("spots_raw",), ("spots",),
                                  {"min_size": int(s.min_size), "connectivity": int(s.connectivity)}, timer="mask"))
        final = "spots"
    plan = Plan("powder-unet", buffers, tuple(stages), (final, "log_odds"))
    return plan


def auto_runtime() -> tuple[str, str]:
    """The fastest CPU runtime here → (runtime, precision): PyTorch in bfloat16 where PyTorch is installed and the
    CPU has native bf16 (AMX / AVX512-BF16: ~1.6× ONNX Runtime fp32 on this network), else ONNX Runtime fp32."""
    import importlib.util

    from ..engine.pyt import cpu_bf16_fast

    if importlib.util.find_spec("torch") is not None and cpu_bf16_fast():
        return "torch", "bf16"
    return "onnxruntime", "fp32"


class PowderMasker:
    """Spot masks of powder frames with a U-Net model through the engine.

    model: a model name or directory (:mod:`gixdrt.powder.model`), or a :class:`~gixdrt.model.unet.UNet` (runs on
    PyTorch). runtime: ``"onnxruntime"`` (default; the model's ONNX graph on the CPU), ``"torch"``, ``"tensorrt"``
    (on a CUDA GPU where TensorRT is installed: the graph with the tile's static shape built into an engine, cached
    under ``$GIXDRT_CACHE/powder-engines/``, between the plan's CUDA kernels; EngineUnavailableError elsewhere), or
    ``"auto"`` (:func:`auto_runtime`: the fastest CPU runtime here, with its precision). precision: ``"fp32"`` or ``"bf16"`` (PyTorch on
    the CPU: autocast in bfloat16; the masks agree with fp32's to a few pixels per frame). kernels:
    ``"cpu"`` (Numba) or ``"reference"`` (NumPy). threads: ONNX Runtime / PyTorch CPU threads (None: default).
    detector_mask: [H, W] nonzero = excluded (never masked as spots, not used for the normalisation). geometry: the
    detector geometry (:class:`~gixdrt.powder.geometry.PowderGeometry`, or a PONI file), needed by two-channel models
    (their second channel is each pixel against its powder ring) and ignored by one-channel ones. settings:
    overrides of the card's :class:`MaskSettings` (threshold, min_size, tile, ...).
    """

    def __init__(self, model: Any = "default", *, runtime: str = "onnxruntime", kernels: str = "cpu",
                 threads: int | None = None, detector_mask: np.ndarray | None = None, geometry: Any = None,
                 precision: str = "fp32", device: str = "cpu", **settings: Any):
        from ..engine.kernelsets import DeviceKernels, HostKernels

        if runtime == "auto":
            runtime, precision = auto_runtime()
        if runtime not in ("onnxruntime", "torch", "tensorrt"):
            raise ValueError(f"runtime must be 'auto', 'onnxruntime', 'torch' or 'tensorrt', got {runtime!r}")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        if precision == "bf16" and runtime != "torch":
            raise ValueError("precision 'bf16' runs on PyTorch (runtime='torch'); ONNX Runtime's CPU provider has "
                             "no bfloat16 convolutions")
        self.device = str(device)
        if runtime == "tensorrt":
            # the network as a TensorRT engine (built from the model's graph with the tile's static shape, cached)
            # between the plan's CUDA kernels; gated: where TensorRT or a GPU is missing, say so here
            from ..engine import EngineUnavailableError
            from ..engine.backends import backend_status

            if precision != "fp32":
                raise ValueError("runtime 'tensorrt' builds fp32 engines")
            if self.device == "cpu":
                self.device = "cuda"
            why = backend_status().get(("tensorrt", "cuda"))
            if why:
                raise EngineUnavailableError(f"the powder U-Net on TensorRT cannot run here: {why}")
        elif self.device != "cpu":
            # the plan's buffers as PyTorch tensors on the GPU, the CUDA kernels, the network on torch-cuda;
            # "cpu-check": the same sequence on CPU tensors with the host kernels (tests without a GPU)
            if runtime != "torch":
                raise ValueError(f"device {self.device!r} runs the network on PyTorch (runtime='torch')")
            if self.device != "cpu-check" and not self.device.startswith("cuda"):
                raise ValueError(f"device must be 'cpu', 'cuda[:N]' or 'cpu-check', got {self.device!r}")
        self.runtime = runtime
        self.precision = precision
        self.threads = threads
        self.detector_mask = None if detector_mask is None else np.ascontiguousarray(detector_mask)
        self._module = None
        self._graph = None
        if hasattr(model, "forward"):
            self._module = model.eval()
            card = getattr(model, "card", None) or {}
            if runtime != "torch":
                raise ValueError("a PyTorch module runs with runtime='torch'; give a model name or path for "
                                 f"{runtime}")
            self.multiple = model.config.multiple
        else:
            from .model import load_card, model_dir, onnx_graph

            card = load_card(model)
            self.multiple = 2 ** (int(card["architecture"].get("depth", 3)) - 1)
            if runtime == "onnxruntime":
                self._graph = onnx_graph(model).read_bytes()
            elif runtime == "tensorrt":
                self._graph = None
            else:
                from .model import load_unet

                self._module = load_unet(model)
            self.model_dir = model_dir(model)
        self.card = card
        if self._module is not None:
            self.in_channels = int(self._module.config.in_channels)
        else:
            self.in_channels = int(card["architecture"].get("in_channels", 1))
        if self.in_channels not in (1, 2):
            raise ValueError(f"powder models take 1 or 2 input channels, this one {self.in_channels}")
        if geometry is not None and not hasattr(geometry, "tth"):
            from .geometry import PowderGeometry

            # the frames' shape replaces the geometry's when the ring index is built (ring_index)
            geometry = PowderGeometry.from_poni(geometry, shape=(1, 1) if self.detector_mask is None
                                                else self.detector_mask.shape)
        if self.in_channels == 2 and geometry is None:
            from ..errors import ConfigError

            raise ConfigError("this powder model compares each pixel with its ring: give the detector geometry "
                              "(geometry=PowderGeometry or a PONI file; gixdrt mask --poni)")
        self.geometry = geometry
        self._rings: dict[tuple[int, int], Any] = {}
        settings = {k: v for k, v in settings.items() if v is not None}
        self.settings = MaskSettings.from_card(card, **settings) if card else MaskSettings(**settings)
        if self.device == "cpu":
            self.kernels = HostKernels(kernels)
        elif runtime == "tensorrt":
            self.kernels = DeviceKernels(self.device)
        else:
            self.kernels = DeviceKernels("cpu" if self.device == "cpu-check" else self.device)
        self._executors: dict[tuple, Any] = {}
        self.timings: dict[str, float] = {}

    def _runner(self, lay: TileLayout, batch: int):
        from ..engine.chunked import ChunkedRunner

        total = batch * lay.count
        chunk = 1 if not lay.whole else batch
        sh, sw = lay.tile
        if self.runtime == "tensorrt":
            from ..engine.trt import TensorRTRunner
            from ..io.assets import cache_dir
            from .model import static_graph

            folder = cache_dir() / "powder-engines"
            onnx_path = static_graph(self.model_dir, (chunk, self.in_channels, sh, sw), folder)
            inner = TensorRTRunner(onnx_path.with_suffix(".engine"), device=self.device, onnx_path=onnx_path,
                                   cuda_graph=True, build={"precision": "fp32"})
            return inner if chunk == total else ChunkedRunner(inner, total)
        if self.runtime == "onnxruntime":
            from ..engine.onnxrt import OnnxRuntimeRunner

            inner = OnnxRuntimeRunner(self._graph, threads=self.threads, dims={"n": chunk, "h": sh, "w": sw})
        else:
            from ..engine.pyt import TorchRunner

            if self.threads:
                import torch

                torch.set_num_threads(int(self.threads))
            dev = str(self.kernels.device) if self.kernels.on_device else "cpu"
            module = self._module
            if self.precision == "bf16":
                import copy

                import torch

                # channels-last weights: oneDNN's bf16 convolutions run ~2× faster on them (the caller's module is
                # left as it is)
                module = copy.deepcopy(module).to(memory_format=torch.channels_last)
            inner = TorchRunner(module, {"x": (np.float32, (chunk, self.in_channels, sh, sw))}, ["logits"],
                                precision=self.precision, device=dev)
        return inner if chunk == total else ChunkedRunner(inner, total)

    def rings(self, shape: tuple[int, int]):
        """The ring index for frames of ``shape`` (two-channel models; None for one-channel ones), built once."""
        if self.in_channels == 1:
            return None
        shape = (int(shape[0]), int(shape[1]))
        idx = self._rings.get(shape)
        if idx is None:
            idx = self._rings[shape] = ring_index(self.geometry, shape, self.detector_mask,
                                                  width_px=float(self.settings.ring.get("width_px", 2.0)))
        return idx

    def executor(self, shape: tuple[int, ...], dtype: Any):
        """The executor for frames of ``shape`` ([N, H, W]) and ``dtype`` (made once, then reused)."""
        from ..engine.executor import Executor

        n, h, w = (int(s) for s in shape)
        key = (n, h, w, np.dtype(dtype).name)
        ex = self._executors.get(key)
        if ex is None:
            if self.detector_mask is not None and self.detector_mask.shape != (h, w):
                raise ValueError(f"frames of {h}×{w} but the detector mask is {self.detector_mask.shape}")
            plan = powder_plan(h, w, batch=n, dtype=key[3], mask=self.detector_mask, settings=self.settings,
                               multiple=self.multiple, rings=self.rings((h, w)))
            lay = tile_layout(h, w, multiple=self.multiple, tile=self.settings.tile, halo=self.settings.halo)
            ex = self._executors[key] = Executor(plan, {"unet": self._runner(lay, n)}, self.kernels)
        return ex

    def run(self, frames: np.ndarray, *, timed: bool = False) -> dict[str, np.ndarray]:
        """frames [H, W] or [N, H, W] → {"spots": bool, "log_odds": float32} of the same leading shape (copies)."""
        arr = np.asarray(frames)
        single = arr.ndim == 2
        if single:
            arr = arr[None]
        if arr.ndim != 3:
            raise ValueError(f"frames must be [H, W] or [N, H, W], got shape {arr.shape}")
        ex = self.executor(arr.shape, arr.dtype)
        out = ex.run({"frames": np.ascontiguousarray(arr)}, timed=timed)
        if timed:
            self.timings = dict(ex.timings)
        spots_name = ex.plan.outputs[0]
        spots, log_odds = ex.kernels.to_host([out[spots_name], out["log_odds"]])
        res = {"spots": np.array(spots), "log_odds": np.array(log_odds)}
        return {k: v[0] for k, v in res.items()} if single else res

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """bool spot mask of frame(s) [H, W] or [N, H, W]."""
        return self.run(frames)["spots"]

    def close(self) -> None:
        for ex in self._executors.values():
            for r in ex.runners.values():
                r.deactivate()
            ex.close()
        self._executors.clear()
