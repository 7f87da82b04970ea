"""The powder pipeline's spot-masking network: a tunable U-Net (PyTorch).

Architecture (depth d, base channels c_b, growth r; level i has ``c_i = int(c_b·r^i)`` channels, i = 0 … d − 1):

- encoder level i: two 3×3 convolutions (padding 1, with bias), each followed by BatchNorm and ReLU; then a 2×2
  max-pool down to level i + 1 (none after the deepest level);
- decoder level i (i = d − 2 … 0): a 2×2 stride-2 transposed convolution (with bias, no normalisation) from c_{i+1}
  to c_i channels, concatenation with the encoder's level-i output (skip first), then two 3×3 conv–BN–ReLU blocks
  (2·c_i → c_i → c_i);
- a final 1×1 convolution (with bias) to ``out_channels`` logits (2: background, spot); no final activation.

With 1 input channel, c_b = 8, r = 2 and 2 output channels this has 6,562 / 29,650 / 121,394 / 487,154 trainable
parameters for depths 2 / 3 / 4 / 5, the counts of the published study.

Input float32[N, in_channels, H, W]; H and W must be multiples of 2^(d − 1) (the pooling factor): a forward call
with other sizes raises ValueError naming them (tiles of 256×256 always fit; pad whole frames with
:func:`pad_to_multiple`). The network is fully convolutional: one set of weights serves every tile size, and its
ONNX graph can keep H and W dynamic. Call ``.eval()`` before inference: BatchNorm then uses its running statistics.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PAPER_PARAMETER_COUNTS", "UNet", "UNetConfig", "pad_to_multiple", "spot_probability"]

PAPER_PARAMETER_COUNTS = {2: 6_562, 3: 29_650, 4: 121_394, 5: 487_154}  # c_b = 8, r = 2, 1 in, 2 out


@dataclass(frozen=True)
class UNetConfig:
    """Shape of a :class:`UNet`."""

    depth: int = 3
    base_channels: int = 8
    growth: float = 2.0
    in_channels: int = 1
    out_channels: int = 2

    def __post_init__(self) -> None:
        if not 2 <= int(self.depth) <= 8 or int(self.depth) != self.depth:
            raise ValueError(f"UNetConfig.depth must be an integer in [2, 8], got {self.depth!r}")
        if self.base_channels < 1 or self.in_channels < 1 or self.out_channels < 1:
            raise ValueError("UNetConfig: base_channels, in_channels and out_channels must be ≥ 1")
        if not self.growth > 0:
            raise ValueError(f"UNetConfig.growth must be > 0, got {self.growth!r}")

    @property
    def channels(self) -> list[int]:
        """Channels per level, c_i = int(base_channels · growth^i) (at least 1)."""
        return [max(int(self.base_channels * self.growth**i), 1) for i in range(self.depth)]

    @property
    def multiple(self) -> int:
        """H and W must be multiples of this (2^(depth − 1))."""
        return 2 ** (self.depth - 1)

    def to_dict(self) -> dict:
        return asdict(self)


class ConvBlock(nn.Sequential):
    """Two (3×3 conv → BatchNorm → ReLU) steps: cin → cout → cout."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=True),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=True),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """Tunable U-Net: float32[N, C_in, H, W] → logits float32[N, C_out, H, W] (see the module docstring)."""

    def __init__(self, config: UNetConfig | None = None, **kwargs):
        super().__init__()
        if config is None:
            config = UNetConfig(**kwargs)
        elif kwargs:
            raise TypeError("give either a UNetConfig or keyword arguments, not both")
        self.config = config
        ch = config.channels
        self.encoders = nn.ModuleList(
            [ConvBlock(config.in_channels if i == 0 else ch[i - 1], ch[i]) for i in range(config.depth)]
        )
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList(
            [nn.ConvTranspose2d(ch[i + 1], ch[i], 2, stride=2, bias=True) for i in range(config.depth - 1)]
        )
        self.decoders = nn.ModuleList([ConvBlock(2 * ch[i], ch[i]) for i in range(config.depth - 1)])
        self.head = nn.Conv2d(ch[0], config.out_channels, 1, bias=True)

    def check_size(self, h: int, w: int) -> None:
        """ValueError unless H and W are multiples of 2^(depth − 1)."""
        m = self.config.multiple
        if h % m or w % m or h < m or w < m:
            raise ValueError(
                f"U-Net of depth {self.config.depth}: input height and width must be positive multiples of {m}, "
                f"got {h}×{w} (pad with gixdrt.model.unet.pad_to_multiple)"
            )

    def forward(self, x: Tensor) -> Tensor:
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()):
            if x.dim() != 4 or x.shape[1] != self.config.in_channels:
                raise ValueError(f"U-Net input must be [N, {self.config.in_channels}, H, W], got {tuple(x.shape)}")
            self.check_size(int(x.shape[-2]), int(x.shape[-1]))
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x)
            if i < len(self.encoders) - 1:
                skips.append(x)
                x = self.pool(x)
        for i in range(len(self.ups) - 1, -1, -1):
            x = self.ups[i](x)
            x = self.decoders[i](torch.cat([skips[i], x], dim=1))
        return self.head(x)

    def n_parameters(self) -> int:
        """Trainable parameters (BatchNorm's running statistics are buffers, not counted)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def pad_to_multiple(x: Tensor, multiple: int, mode: str = "reflect") -> tuple[Tensor, tuple[int, int]]:
    """Pad the last two dimensions at the bottom/right up to multiples of ``multiple``; returns the padded tensor
    and the original (H, W) to crop the output back with ``y[..., :H, :W]``."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode=mode if (ph < h and pw < w) else "replicate")
    return x, (h, w)


def spot_probability(logits: Tensor) -> Tensor:
    """P(spot) per pixel from logits [N, 2, H, W] (softmax over the two classes) → [N, H, W]."""
    return torch.softmax(logits, dim=1)[:, 1]
