"""A runner that runs a graph on a large batch a few items at a time: the batch's peak memory is that of one chunk.

>>> inner = OnnxRuntimeRunner("unet.onnx", dims={"n": 1, "h": 1024, "w": 1024})   # a graph for one tile
>>> runner = ChunkedRunner(inner, batch=9)         # takes [9, 1, 1024, 1024], runs 9 calls of [1, 1, 1024, 1024]

Used where a fully convolutional network runs on the tiles of a frame too large to process at once (the powder
U-Net on 2880² frames): the plan stays a fixed-shape batch of tiles, and the activations of one tile are all that is
ever allocated. Every input and output is split and joined along its first dimension; the inner runner's first
dimension (the chunk) must divide ``batch``. Outputs are written into arrays (or tensors on the inner outputs'
device) that this runner owns and reuses: valid until the next call.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Runner, TensorMeta

__all__ = ["ChunkedRunner"]


class ChunkedRunner(Runner):
    """Runs ``inner`` (a runner whose inputs have a static first dimension c) on batches of ``batch`` items, c at a
    time; ``batch`` must be a multiple of c. Activating it activates ``inner``; deactivating deactivates it."""

    name = "chunked"

    def __init__(self, inner: Runner, batch: int):
        super().__init__()
        if int(batch) < 1:
            raise ValueError(f"ChunkedRunner: batch must be ≥ 1, got {batch}")
        self.inner = inner
        self.batch = int(batch)
        self.chunk = 0
        self._out: dict[str, Any] = {}
        self.name = f"chunked {getattr(inner, 'name', 'runner')}"

    def activate_impl(self) -> None:
        self.inner.activate()
        metas = self.inner.input_metadata()
        chunks = {m.shape[0] for m in metas.values() if m.shape}
        if len(chunks) != 1:
            raise ValueError(f"{self.name}: the inner graph's inputs disagree on their first dimension ({chunks})")
        self.chunk = chunks.pop()
        if self.chunk < 1 or self.batch % self.chunk:
            raise ValueError(f"{self.name}: batch {self.batch} is not a multiple of the inner graph's {self.chunk}")
        self._out = {}

    def input_metadata_impl(self) -> Mapping[str, TensorMeta]:
        return {k: TensorMeta(m.dtype, (self.batch, *m.shape[1:])) for k, m in self.inner.input_metadata().items()}

    def infer_impl(self, feed: Mapping[str, Any]) -> dict[str, Any]:
        c = self.chunk
        for start in range(0, self.batch, c):
            part = self.inner.infer({k: v[start:start + c] for k, v in feed.items()}, check=False)
            for name, value in part.items():
                out = self._out.get(name)
                if out is None:
                    out = self._out[name] = _empty_like_batch(value, self.batch)
                out[start:start + c] = value
        return dict(self._out)

    def deactivate_impl(self) -> None:
        self._out = {}
        self.inner.deactivate()


def _empty_like_batch(value: Any, batch: int) -> Any:
    shape = (batch, *tuple(int(s) for s in value.shape[1:]))
    if type(value).__module__.startswith("torch"):
        import torch

        return torch.empty(shape, dtype=value.dtype, device=value.device)
    import numpy as np

    return np.empty(shape, dtype=value.dtype)
