"""The thesis' proposed decoder (§4.2, Fig. 5-6): U-Net levels joined by SE fusion layers.
Fig. 5-6 are missing from the thesis text: the fusion layer is AUNet's block (Sun et al. 2019),
inferred as docs/reproduce.md explains.

    decoder = FusionDecoder((3, 64, 64, 128, 256, 512), decoder_channels=DEFAULT_WIDTHS["resnet34"])
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

# Decoder widths, deepest level first. The thesis gives none, only parameter and FLOP counts:
# BiT's halve from 1024 and fit Table 4 to 0.04%; no rule shared with BiT fits ResNet-34, whose
# widths won a search against Table 2 (docs/reproduce.md) and are the least certain part.
DEFAULT_WIDTHS = {
    "bit_r50x1": (1024, 512, 256, 128, 64),  # Table 4: 202.44M, 115.82 FLOPS (ours 202.35M, 115.77)
    "resnet34": (768, 384, 256, 96, 48),  # Table 2: 89.62M, 32.22 FLOPS (fitted: 89.25M, 31.83)
}


class FusionConv(nn.Sequential):
    """Convolution with bias (as AUNet) + BatchNorm + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__(nn.Conv2d(in_channels, out_channels, kernel_size,
                                   padding=kernel_size // 2),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class SEBlock(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): x * sigmoid(FC(ReLU(FC(global average))))."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = x.mean(dim=(2, 3))  # (B, C): one descriptor per channel
        weights = torch.sigmoid(self.fc2(F.relu(self.fc1(squeezed))))  # (B, C) in (0, 1)
        return x * weights[:, :, None, None]  # (B, C, H, W)


# Fig. 6 as inferred (the figure is not in the thesis text: docs/reproduce.md), m output channels:
#   semantic: high -> bilinear x2 -> conv3x3
#   detail:   high -> conv3x3 to 4m -> pixel shuffle x2 (+ skip) -> conv3x3
#   output:   concat(detail, semantic) (2m) -> SE -> conv3x3 -> conv3x3 (m)
class FusionLayer(nn.Module):
    """Fig. 6, inferred: the previous decoder level (high) fused with the encoder's (skip) by SE."""

    def __init__(self, high_channels: int, skip_channels: int, out_channels: int, *,
                 se_reduction: int = 4):
        super().__init__()
        self.bilinear_branch = FusionConv(high_channels, out_channels)
        # Dense upsampling convolution: 4 sub-pixels per channel, rearranged into a 2x larger map.
        self.dense_upsampling = nn.Sequential(FusionConv(high_channels, 4 * out_channels),
                                              nn.PixelShuffle(2))
        self.skip_projection = None
        # AUNet adds the skip as it is (its widths match); ours may differ: a 1x1 FusionConv first
        if skip_channels and skip_channels != out_channels:
            self.skip_projection = FusionConv(skip_channels, out_channels, kernel_size=1)
        self.smooth = FusionConv(out_channels, out_channels)
        self.se = SEBlock(2 * out_channels, se_reduction)  # 4, not AUNet's 16: fits the counts
        self.conv1 = FusionConv(2 * out_channels, out_channels)
        self.conv2 = FusionConv(out_channels, out_channels)

    def forward(self, high: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        upsampled = F.interpolate(high, scale_factor=2.0, mode="bilinear",
                                  align_corners=True)  # as AUNet
        semantic = self.bilinear_branch(upsampled)  # (B, m, 2H, 2W)
        detail = self.dense_upsampling(high)  # (B, 4m, H, W) -> (B, m, 2H, 2W)
        if skip is not None:
            detail = detail + (skip if self.skip_projection is None else self.skip_projection(skip))
        fused = torch.cat([self.smooth(detail), semantic], dim=1)  # (B, 2m, 2H, 2W)
        return self.conv2(self.conv1(self.se(fused)))  # (B, m, 2H, 2W)


class FusionDecoder(nn.Module):
    """Fig. 5: five fusion layers from stride 32 up to 1; decoder_channels deepest first."""

    def __init__(self, encoder_channels: Sequence[int], *, decoder_channels: Sequence[int],
                 se_reduction: int = 4):
        super().__init__()
        deepest, *skips = list(encoder_channels[1:])[::-1]  # (s32; s16, s8, s4, s2)
        skips = skips + [0]  # no skip for the last level: at stride 1 the encoder has the image
        if len(decoder_channels) != len(skips) or min(decoder_channels) < 1:
            raise ValueError(f"decoder_channels needs {len(skips)} positive widths, one per level, "
                             f"got {list(decoder_channels)}")
        highs = [deepest] + list(decoder_channels[:-1])
        self.layers = nn.ModuleList(FusionLayer(h, s, o, se_reduction=se_reduction)
                                    for h, s, o in zip(highs, skips, decoder_channels))
        self.out_channels = decoder_channels[-1]
        self.options = dict(decoder_channels=list(decoder_channels), se_reduction=se_reduction)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        skips = features[1:-1][::-1] + [None]  # (s16, s8, s4, s2, none)
        x = features[-1]
        for layer, skip in zip(self.layers, skips):
            x = layer(x, skip)
        return x
