"""The ``tensorrt`` backend of :class:`gixdrt.engine.Detector`: the dense and head graphs as TensorRT engines,
everything else as in the ``torch-cuda`` backend.

:class:`TrtStages` is :class:`gixdrt.engine.torch_cuda.TorchCudaStages` with its two PyTorch stages replaced by
:class:`gixdrt.engine.trt.TensorRTRunner` s: the same static device buffers, the same Numba CUDA kernels and
``_ext`` CUDA RoIAlign between the stages, the same single copy of the final peaks back to the host, and
``Pipeline`` keeps raw frames on the GPU in the same way. Engines are built on first use per (model weights,
image shape, batch, precision) from the exported ONNX graphs (:func:`gixdrt.export.export_dense` /
:func:`~gixdrt.export.export_head`) with :func:`gixdrt.engine.trt.build_engine`, and cached with their sidecars
next to the graphs (``$GIXDRT_CACHE/onnx``, or ``engine_cache``); an engine whose sidecar does not match this
machine (another TensorRT version or GPU, another graph) is rebuilt. A first build takes minutes.

**Not yet run on real TensorRT in this project** (no machine here has TensorRT); tested with a stand-in
``tensorrt`` module and the host check path of :class:`TorchCudaStages`.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from .base import EngineUnavailableError
from .torch_cuda import TorchCudaStages

log = logging.getLogger(__name__)

__all__ = ["TrtStages"]


class _EngineStage:
    """One TensorRT engine per input shape, called like the PyTorch stage it replaces."""

    def __init__(self, owner: TrtStages, kind: str):
        self.owner = owner
        self.kind = kind  # "dense" or "head"
        self.runners: dict[tuple[int, ...], Any] = {}
        self.level_shapes: list[tuple[int, int]] | None = None

    def runner(self, shape: tuple[int, ...]):
        if shape not in self.runners:
            self.runners[shape] = self.owner.open_engine(self.kind, shape)
        return self.runners[shape]

    def __call__(self, x):
        import torch

        shape = tuple(int(v) for v in x.shape)
        runner = self.runner(shape)
        name = "images" if self.kind == "dense" else "roi_features"
        out = runner.infer({name: x}, check=False)
        if self.kind == "head":
            return out["logits"].reshape(-1), out["deltas"].reshape(-1, 4)
        levels = len(self.owner.config.anchor_sizes)
        flat_logits, flat_deltas = [], []
        shapes = []
        for i in range(levels):
            lg, dl = out[f"logits_{i}"], out[f"deltas_{i}"]
            n, a, h, w = lg.shape
            shapes.append((int(h), int(w)))
            flat_logits.append(lg.permute(0, 2, 3, 1).reshape(n, h * w * a))
            flat_deltas.append(dl.reshape(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, h * w * a, 4))
        self.level_shapes = shapes
        return out["p2"], torch.cat(flat_logits, 1).contiguous(), torch.cat(flat_deltas, 1).contiguous()

    def close(self) -> None:
        for r in self.runners.values():
            r.deactivate()
        self.runners.clear()


class TrtStages(TorchCudaStages):
    """``model`` as TensorRT engines with gixdrt's CUDA kernels between them (see the module docstring).

    precision: ``"fp32"`` or ``"fp16"`` (an fp16 graph, built strongly typed: the TensorRT 11 way, also used on
    10). cuda_graphs: each engine's ``execute_async_v3`` is captured in a CUDA graph after its first call.
    engine_cache: where graphs and engines are kept (True: ``gixdrt.io.cache_dir() / "onnx"``; a directory).
    workspace_gib: the builder's workspace limit.
    """

    def __init__(self, model, *, device: str = "cuda", precision: str = "fp32", cuda_graphs: bool = True,
                 engine_cache: Any = True, workspace_gib: float = 4.0, timed: bool = False):
        from .trt import require_tensorrt

        if not str(device).startswith("cuda"):
            raise EngineUnavailableError("the tensorrt backend runs on a CUDA GPU only")
        self.trt = require_tensorrt()
        # the PyTorch stages are built (small: 5.9M parameters) but never run: the engines replace them
        super().__init__(model, device=device, precision=precision, cuda_graphs=False, timed=timed)
        from ..export.graphs import model_digest
        from .staged import graph_cache_dir

        self.engine_graphs = bool(cuda_graphs)
        self.workspace_gib = float(workspace_gib)
        self.cache = graph_cache_dir() if engine_cache is True else Path(engine_cache)
        self.digest = model_digest(model)
        self.dense_net = _EngineStage(self, "dense")
        self.head_net = _EngineStage(self, "head")

    def describe(self) -> str:
        graphs = "CUDA graphs" if self.engine_graphs else "no CUDA graphs"
        return f"TensorRT {getattr(self.trt, '__version__', '?')} engines on {self.device}, {self.precision}, {graphs}"

    # --- engines --------------------------------------------------------------------------------
    def paths(self, kind: str, shape: tuple[int, ...]) -> tuple[Path, Path]:
        """(ONNX graph, engine) file paths of a stage for an input shape."""
        from ..export.graphs import EXPORT_VERSION

        tag = f"{shape[2]}x{shape[3]}-b{shape[0]}" if kind == "dense" else f"r{shape[0]}"
        stem = f"{kind}-{self.digest[:16]}-{tag}-{self.precision}-v{EXPORT_VERSION}"
        return self.cache / f"{stem}.onnx", self.cache / f"{stem}.engine"

    def open_engine(self, kind: str, shape: tuple[int, ...]):
        """An active :class:`TensorRTRunner` for stage ``kind`` at input ``shape``: exports the graph and builds
        the engine first when missing, or when the cached engine does not fit this machine."""
        from ..export import export_dense, export_head
        from .trt import EngineMismatchError, TensorRTRunner, build_engine

        onnx_path, engine_path = self.paths(kind, shape)
        self.cache.mkdir(parents=True, exist_ok=True)
        fp16 = self.precision == "fp16"
        if not onnx_path.is_file():
            t0 = time.perf_counter()
            model = self.model.cpu() if next(self.model.parameters()).is_cuda else self.model
            try:
                if kind == "dense":
                    export_dense(model, onnx_path, shape=(shape[2], shape[3]), batch=shape[0], fp16=fp16)
                else:
                    export_head(model, onnx_path, rois=shape[0], fp16=fp16)
            finally:
                if model is not self.model:
                    self.model.to(self.device)
            log.info("exported %s in %.1f s", onnx_path.name, time.perf_counter() - t0)
        for attempt in (1, 2):
            if not engine_path.is_file():
                t0 = time.perf_counter()
                log.warning("building TensorRT engine %s (once per model, shape and GPU; takes minutes)", engine_path.name)
                build_engine(onnx_path, engine_path, precision=self.precision, workspace_gib=self.workspace_gib)
                log.info("built %s in %.0f s", engine_path.name, time.perf_counter() - t0)
            try:
                return TensorRTRunner(engine_path, device=str(self.device), onnx_path=onnx_path,
                                      cuda_graph=self.engine_graphs).activate()
            except EngineMismatchError as exc:
                if attempt == 2:
                    raise
                log.warning("%s; rebuilding it", exc)
                engine_path.unlink(missing_ok=True)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        self.dense_net.close()
        self.head_net.close()
        super().close()

