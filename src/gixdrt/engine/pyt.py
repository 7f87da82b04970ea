"""PyTorch runner: the reference every other runtime is compared with."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .base import Runner, TensorMeta

__all__ = ["TorchRunner", "dense_runner", "head_runner"]


class TorchRunner(Runner):
    """Runs a ``torch.nn.Module`` (or a zero-argument callable returning one) under ``torch.inference_mode``.

    inputs: graph input name → (dtype, shape), in the order of ``forward``'s arguments; outputs: names for
    the module's outputs (a tensor or a tuple of tensors), in order. device: where the module and the
    inputs go (NumPy inputs are wrapped without a copy on the CPU). ``infer`` returns torch tensors on
    ``device`` (``np.asarray`` views a CPU tensor without copying).
    """

    name = "torch"

    def __init__(
        self,
        module: Any,
        inputs: Mapping[str, tuple[Any, Sequence[int]]],
        outputs: Sequence[str],
        *,
        device: str = "cpu",
    ):
        super().__init__()
        self._source: Callable[[], Any] = module if not hasattr(module, "forward") else (lambda: module)
        self._input_spec = {k: TensorMeta(np.dtype(d), tuple(int(s) for s in shape)) for k, (d, shape) in inputs.items()}
        self.output_names = tuple(outputs)
        self.device_name = device
        self.module = None

    def activate_impl(self) -> None:
        import torch

        self.device = torch.device(self.device_name)
        self.module = self._source().to(self.device).eval()

    def input_metadata_impl(self) -> Mapping[str, TensorMeta]:
        return self._input_spec

    def infer_impl(self, feed: Mapping[str, Any]) -> dict[str, Any]:
        import torch

        args = []
        for name in self._input_spec:
            x = feed[name]
            x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
            args.append(x.to(self.device))
        with torch.inference_mode():
            out = self.module(*args)
        out = (out,) if isinstance(out, torch.Tensor) else tuple(out)
        if len(out) != len(self.output_names):
            raise RuntimeError(f"{self.name}: the module returned {len(out)} outputs, {len(self.output_names)} names given")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return dict(zip(self.output_names, out))

    def deactivate_impl(self) -> None:
        self.module = None


def dense_runner(model, *, shape: tuple[int, int] = (512, 1024), batch: int = 1, device: str = "cpu") -> TorchRunner:
    """A :class:`TorchRunner` for the dense graph of ``model`` with the exported graph's names and shapes
    (BN not folded: this is the reference the folded and exported graphs are compared with)."""
    from ..export.graphs import DENSE_INPUTS, dense_outputs

    def build():
        from ..export.graphs import DenseGraph

        return DenseGraph(model)

    h, w = shape
    spec = {DENSE_INPUTS[0]: (np.float32, (batch, model.config.in_channels, h, w))}
    return TorchRunner(build, spec, dense_outputs(len(model.config.anchor_sizes)), device=device)


def head_runner(model, *, rois: int = 1000, device: str = "cpu") -> TorchRunner:
    """A :class:`TorchRunner` for the head graph of ``model`` (``roi_features`` → ``logits``, ``deltas``)."""
    from ..export.graphs import HEAD_INPUTS, HEAD_OUTPUTS

    def build():
        from ..export.graphs import HeadGraph

        return HeadGraph(model)

    c, p = model.config.fpn_channels, model.config.roi_output_size
    return TorchRunner(build, {HEAD_INPUTS[0]: (np.float32, (rois, c, p, p))}, HEAD_OUTPUTS, device=device)
