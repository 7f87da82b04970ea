"""TensorRT runner (lifecycle and availability only, for now).

TensorRT is imported only after a CUDA GPU has been found (:func:`gixdrt.engine.base.cuda_gpu` asks the
driver library, without TensorRT): on a machine without a GPU, TensorRT objects can crash the process.
Building engines from gixdrt's graphs and running them arrive with the next part of the engines issue;
until then :meth:`TensorRTRunner.activate` says why it cannot run, and never pretends to.
"""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Any

from .base import EngineUnavailableError, Runner, TensorMeta, cuda_gpu

__all__ = ["TensorRTRunner", "require_tensorrt", "tensorrt_status"]


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


class TensorRTRunner(Runner):
    """Runs a serialized TensorRT engine (``engine_path``) on ``device``. Not functional yet: ``activate``
    raises :class:`EngineUnavailableError` with the reason (no GPU, TensorRT not installed, or the engine
    runner not being part of gixdrt yet)."""

    name = "tensorrt"

    def __init__(self, engine_path: str | os.PathLike, *, device: str = "cuda"):
        super().__init__()
        self.engine_path = os.fspath(engine_path)
        self.device = device

    def activate_impl(self) -> None:
        require_tensorrt()
        raise EngineUnavailableError(
            "TensorRT runner: running TensorRT engines is not implemented in this gixdrt version yet "
            "(use backend='onnxruntime' with device='cuda', or 'torch')"
        )

    def input_metadata_impl(self) -> Mapping[str, TensorMeta]:  # pragma: no cover - never active yet
        raise NotImplementedError

    def infer_impl(self, feed: Mapping[str, Any]) -> dict[str, Any]:  # pragma: no cover - never active yet
        raise NotImplementedError

    def deactivate_impl(self) -> None:  # pragma: no cover - never active yet
        pass
