"""The detector's two graphs as PyTorch modules: what is exported to ONNX and what the torch runners run.

- :class:`DenseGraph`: ``images`` float32[N, 1, H, W] (contrast image in [0, 1]) → ``p2`` float32[N, C, H/8, W/4],
  ``logits`` float32[N, A] and ``deltas`` float32[N, A, 4]: normalisation, ResNet body, FPN and RPN head, the
  RPN outputs already flattened level by level in anchor order (:func:`gixdrt.model.network.flatten_levels`,
  :func:`gixdrt.model.config.anchors`).
- :class:`HeadGraph`: ``roi_features`` float32[R, C, P, P] → ``logits`` float32[R], ``deltas`` float32[R, 4]
  (relative to the proposals): fc6, fc7 and the predictor.

Everything between the graphs (proposals, RoIAlign, the final filter) is a kernel stage of the detector's plan
(:mod:`gixdrt.gixd.plan`). ``dtype`` runs the body in float16 (inputs and outputs stay float32, so all box
arithmetic stays fp32); ``channels_last`` is for GPUs. The graphs share the model's modules and convert them
in place for another dtype or layout: give them a copy (e.g. :func:`gixdrt.export.fold_batchnorm`'s) then.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import DENSE_INPUTS, DENSE_OUTPUTS, HEAD_INPUTS, HEAD_OUTPUTS
from .network import GixdDetector, flatten_levels

__all__ = ["DENSE_INPUTS", "DENSE_OUTPUTS", "HEAD_INPUTS", "HEAD_OUTPUTS", "DenseGraph", "HeadGraph"]


class DenseGraph(nn.Module):
    """images float32[N, 1, H, W] → (p2, logits [N, A], deltas [N, A, 4]), all float32 (see the module docstring).

    The normalisation runs in float32, the body and RPN head in ``dtype`` (channels-last if asked).
    """

    def __init__(self, model: GixdDetector, dtype: torch.dtype = torch.float32, channels_last: bool = False):
        super().__init__()
        self.transform_img = model.transform_img
        self.backbone = model.backbone.to(dtype)
        self.rpn_head = model.rpn_head.to(dtype)
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
            self.rpn_head.to(memory_format=torch.channels_last)
        self.dtype = dtype
        self.channels_last = channels_last
        self.eval()

    def forward(self, images):
        x = self.transform_img(images)
        if self.dtype != torch.float32:
            x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        features = self.backbone(x)
        logits, deltas = flatten_levels(*self.rpn_head(features))
        p2 = features[0]
        if self.dtype != torch.float32 or self.channels_last:
            p2 = p2.to(torch.float32, memory_format=torch.contiguous_format)
            logits, deltas = logits.float().contiguous(), deltas.float().contiguous()
        return p2, logits, deltas


class HeadGraph(nn.Module):
    """roi_features float32[R, C, P, P] → (logits float32[R], deltas float32[R, 4]); runs in ``dtype``."""

    def __init__(self, model: GixdDetector, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.box_head = model.box_head.to(dtype)
        self.box_predictor = model.box_predictor.to(dtype)
        self.dtype = dtype
        self.eval()

    def forward(self, roi_features):
        x = roi_features if self.dtype == torch.float32 else roi_features.to(self.dtype)
        logits, deltas = self.box_predictor(self.box_head(x))
        if self.dtype != torch.float32:
            logits, deltas = logits.float(), deltas.float()
        return logits, deltas
