"""Fold eval-mode BatchNorm into the preceding convolution, on a copy of the model.

A BN layer after a convolution is an affine map per output channel: y = γ·(x − μ)/√(σ² + ε) + β. With
s = γ/√(σ² + ε) it folds into the convolution as W' = s·W (per output channel) and b' = s·(b − μ) + β.
The folded weights are computed in float64 and stored in the convolution's dtype.
"""
from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

__all__ = ["fold_batchnorm", "fold_conv_bn"]


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new Conv2d equal to ``bn(conv(x))`` with BN's running statistics (eval mode), with a bias."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    if conv.out_channels != bn.num_features:
        raise ValueError(f"conv has {conv.out_channels} output channels, BN {bn.num_features} features")
    w = conv.weight.double()
    b = conv.bias.double() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=torch.float64)
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(b)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(b)
    scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
        conv.groups, bias=True, padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    fused.weight.copy_(w * scale.reshape(-1, *([1] * (w.ndim - 1))))
    fused.bias.copy_((b - bn.running_mean.double()) * scale + beta)
    return fused


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` (eval mode) with every Conv2d→BatchNorm2d pair folded.

    Pairs are found structurally: siblings named ``convK``/``bnK`` (ResNet blocks, the stem) and adjacent
    (Conv2d, BatchNorm2d) entries of an ``nn.Sequential`` (downsample branches). The BN is replaced by
    ``nn.Identity``, so the modules' ``forward`` methods run unchanged. Raises ValueError if any BN is left
    (one that follows no convolution cannot be folded and would need its own graph op).
    """
    folded = copy.deepcopy(model).eval()
    for parent in folded.modules():
        children = dict(parent.named_children())
        if isinstance(parent, nn.Sequential):
            names = list(children)
            for a, b in itertools.pairwise(names):
                if isinstance(children[a], nn.Conv2d) and isinstance(children[b], nn.BatchNorm2d):
                    setattr(parent, a, fold_conv_bn(children[a], children[b]))
                    setattr(parent, b, nn.Identity())
        for name, child in children.items():
            if isinstance(child, nn.BatchNorm2d) and name.startswith("bn"):
                conv_name = "conv" + name[2:]
                conv = children.get(conv_name)
                if isinstance(conv, nn.Conv2d):
                    setattr(parent, conv_name, fold_conv_bn(conv, child))
                    setattr(parent, name, nn.Identity())
    left = [n for n, m in folded.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise ValueError(f"BatchNorm layers not preceded by a convolution could not be folded: {', '.join(left)}")
    return folded
