"""The network (thesis §4.2-4.3): ResNet-34 and BiT-R50x1 encoders with their pretrained weights,
SMP's Unet and Unet++ decoders (baselines B and C of Tables 2 and 4), and build_model, which joins
an encoder, a decoder (the proposed one is fusion.py's) and a 3x3 head. Imports only torch (numpy
for BiT .npz files): copy it with fusion.py; alone it builds the two baselines.

    model = build_model("resnet34", "fusion", num_classes=1, in_channels=1, weights="imagenet")
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

# The named weights. ResNet-34: "imagenet" is torchvision's IMAGENET1K_V1 file, SMP's baselines';
# "imagenet-timm" the file timm's resnet34 loaded in 2022, §4.3's "pretrained encoders from TIMM"
# and the CBIS-DDSM recipe's. BiT: Google's .npz files, "imagenet" the distilled ImageNet-1k R50x1
# of the thesis' reference [38] (timm's resnetv2_50x1_bit_distilled), "imagenet21k" BiT-M's.
WEIGHT_URLS = {
    "resnet34": {
        "imagenet": "https://download.pytorch.org/models/resnet34-b627a593.pth",
        "imagenet-timm": "https://github.com/rwightman/pytorch-image-models/releases/download/"
                         "v0.1-weights/resnet34-43635321.pth"},
    "bit_r50x1": {
        "imagenet": "https://storage.googleapis.com/bit_models/distill/R50x1_224.npz",
        "imagenet21k": "https://storage.googleapis.com/bit_models/BiT-M-R50x1.npz",
        "imagenet21k-ft1k": "https://storage.googleapis.com/bit_models/BiT-M-R50x1-ILSVRC2012.npz"},
}
# Each encoder's pretraining normalisation of [0, 1] images; a 1-channel model takes the means.
INPUT_NORMALISATION = {
    "resnet34": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # torchvision ImageNet
    "bit_r50x1": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # BiT: inputs in [-1, 1]
}


class WeightsError(RuntimeError):
    """Pretrained weights could not be downloaded or do not fit; the message says what to do."""


# -------------------------------------------------------------------------------- ResNet-34 encoder
class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions and an identity or 1x1 projection shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None if stride == 1 and in_channels == out_channels else nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
            nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += shortcut  # in place, as torchvision: one activation-sized allocation fewer per block
        return self.relu(out)


class ResNetEncoder(nn.Module):
    """ResNet-34 without avgpool/fc, torchvision's names; six feature maps at strides 1 to 32."""

    def __init__(self, in_channels: int = 3, *, blocks: tuple[int, ...] = (3, 4, 6, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths, width_in = (64, 128, 256, 512), 64
        for i, (width, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            layer = ([BasicBlock(width_in, width, stride)]
                     + [BasicBlock(width, width) for _ in range(n - 1)])
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
            width_in = width
        self.out_channels = (in_channels, 64, 64, 128, 256, 512)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        s2 = self.relu(self.bn1(self.conv1(x)))  # the stride-2 map is taken before the max-pool
        s4 = self.layer1(self.maxpool(s2))
        s8 = self.layer2(s4)
        s16 = self.layer3(s8)
        s32 = self.layer4(s16)
        return [x, s2, s4, s8, s16, s32]


# ------------------------------------------------------------------------ BiT ResNetV2-50x1 encoder
class StdConv2d(nn.Conv2d):
    """Convolution with BiT's weight standardisation: each filter zero mean, unit variance."""

    _cache = None  # (alias of the weight, its version, standardised weight); not in state_dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # layer_norm over each filter's (in, kh, kw) is Google's (w - mean) / sqrt(var + 1e-10),
        # biased variance, in one fused op and backward: a third of the time of var_mean, sub, div.
        w = self.weight
        if (torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling()
                or w.is_inference()):
            self._cache = None  # training, or a traced/compiled graph: keep no copy
            return self._conv_forward(x, F.layer_norm(w, w.shape[1:], eps=1e-10), self.bias)
        # Without autograd the result is reused until the weight changes: an in-place write
        # (load_state_dict, an optimizer step) bumps its version; a new tensor (.to(), .data = t) is
        # not is_set_to the alias. Not seen: writes through .data (p.data.add_) skip the version.
        if self._cache is None or self._cache[1] != w._version or not self._cache[0].is_set_to(w):
            self._cache = (w.detach(), w._version, F.layer_norm(w, w.shape[1:], eps=1e-10))
        return self._conv_forward(x, self._cache[2], self.bias)


class PreActBottleneck(nn.Module):
    """ResNetV2 pre-activation bottleneck: GN+ReLU before each conv, stride on the 3x3 (BiT)."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int, stride: int = 1):
        super().__init__()
        self.gn1 = nn.GroupNorm(32, in_channels)
        self.conv1 = StdConv2d(in_channels, mid_channels, 1, bias=False)
        self.gn2 = nn.GroupNorm(32, mid_channels)
        self.conv2 = StdConv2d(mid_channels, mid_channels, 3, stride, 1, bias=False)
        self.gn3 = nn.GroupNorm(32, mid_channels)
        self.conv3 = StdConv2d(mid_channels, out_channels, 1, bias=False)
        self.downsample = None if stride == 1 and in_channels == out_channels else StdConv2d(
            in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.gn1(x), inplace=True)  # in place, as timm: GN's backward needs its input
        # the projection sees the pre-activated input
        shortcut = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.gn2(out), inplace=True))
        out = self.conv3(F.relu(self.gn3(out), inplace=True))
        return out + shortcut


class ResNetV2Encoder(nn.Module):
    """BiT ResNetV2-50x{width}: std-conv 7x7 stem, max-pool, four stages of bottlenecks.
    Names follow the .npz: root.conv, body.block1.unit01.conv1, ..."""

    def __init__(self, in_channels: int = 3, *, blocks: tuple[int, ...] = (3, 4, 6, 3),
                 width: int = 1):
        super().__init__()
        self.root = nn.Module()
        self.root.conv = StdConv2d(in_channels, 64 * width, 7, 2, 3, bias=False)
        # BiT pads with zeros then pools without padding, "subtly not the same" as padding=1.
        self.root.pool = nn.Sequential(nn.ConstantPad2d(1, 0.0), nn.MaxPool2d(3, 2))
        self.body = nn.Module()
        width_in = 64 * width
        for b, n in enumerate(blocks):
            width_out, mid, stride = 256 * width * 2**b, 64 * width * 2**b, 1 if b == 0 else 2
            units = {f"unit{u + 1:02d}": PreActBottleneck(width_in if u == 0 else width_out,
                                                         width_out, mid, stride if u == 0 else 1)
                     for u in range(n)}
            self.body.add_module(f"block{b + 1}", nn.ModuleDict(units))
            width_in = width_out
        self.out_channels = (in_channels, 64 * width, 256 * width, 512 * width, 1024 * width,
                             2048 * width)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # timm's features_only taps, which SMP's tu-resnetv2_50x1_bit baseline fed its decoder: the
        # raw stem convolution and each stage's raw residual sum (no classifier GN+ReLU)
        features = [x, self.root.conv(x)]
        out = self.root.pool(features[-1])
        for block in self.body.children():
            for unit in block.values():
                out = unit(out)
            features.append(out)
        return features


# Each encoder returns six maps at strides 1 to 32 (the first is the input), their widths in
# out_channels: SMP's convention.
ENCODERS = {"resnet34": ResNetEncoder, "bit_r50x1": ResNetV2Encoder}


# ------------------------------------------------------------------------------- pretrained weights
def _state_dict_from_npz(path: str) -> dict[str, torch.Tensor]:
    """Google's BiT .npz (resnet/block1/unit01/a/standardized_conv2d/kernel, HWIO) -> our names."""
    import numpy as np  # only needed for BiT weights

    with np.load(path) as arrays:
        arrays = {key[len("resnet/"):]: arrays[key] for key in arrays.files
                  if key.startswith("resnet/")}
    state = {}
    for key, array in arrays.items():
        parts, value = key.split("/"), torch.from_numpy(array)
        if value.ndim == 4:
            value = value.permute(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
        leaf = {"kernel": "weight", "gamma": "weight", "beta": "bias", "bias": "bias"}[parts[-1]]
        if parts[0] == "root_block":  # root_block/standardized_conv2d/kernel
            state["root.conv.weight"] = value
        elif parts[0].startswith("block"):
            # block1/unit01/{a,b,c}[/proj]/{standardized_conv2d,group_norm}/leaf
            block, unit, sub, kind = parts[:4]
            index = "abc".index(sub) + 1
            name = ("downsample" if kind == "proj"
                    else f"conv{index}" if kind == "standardized_conv2d" else f"gn{index}")
            state[f"body.{block}.{unit}.{name}.{leaf}"] = value
        else:  # the classifier's final group_norm and head: not part of the encoder
            state["ignored." + "/".join(parts)] = value
    return state


def default_normalisation(encoder: str,
                          in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the input: the encoder's pretraining statistics, RGB-averaged for gray."""
    mean, std = INPUT_NORMALISATION[encoder]
    return (mean, std) if in_channels == 3 else ((round(sum(mean) / 3, 4),) * in_channels,
                                                 (round(sum(std) / 3, 4),) * in_channels)


def adapt_first_conv(state: dict[str, torch.Tensor], key: str, in_channels: int, *,
                     rgb: tuple[Sequence[float], Sequence[float]] = ((0.0,) * 3, (1.0,) * 3),
                     gray: tuple[float, float] = (0.0, 1.0),
                     bn_mean_key: str | None = None) -> None:
    """Fit RGB first-layer kernels, normalised with rgb = (mean, std), to a 1-channel input
    normalised with gray = (mean, std). How exact: docs/reproduce.md, "Pretrained weights"."""
    weight = state[key]
    if weight.shape[1] == in_channels:
        return
    if weight.shape[1] != 3 or in_channels != 1:
        raise WeightsError(f"pretrained {key} has {weight.shape[1]} input channels; "
                           f"in_channels must be 1 or 3")
    (rgb_mean, rgb_std), (gray_mean, gray_std) = rgb, gray
    # kernel c scaled by gray std / std[c], the three summed
    scale = torch.tensor([gray_std / s for s in rgb_std], dtype=weight.dtype).view(1, 3, 1, 1)
    state[key] = (weight * scale).sum(dim=1, keepdim=True)  # (out, 3, k, k) -> (out, 1, k, k)
    # the constant the means leave, sum_c (gray mean - mean[c]) / std[c] * sum(W_c), comes off
    # BatchNorm's running mean
    shift = torch.tensor([(gray_mean - m) / s for m, s in zip(rgb_mean, rgb_std)],
                         dtype=weight.dtype)
    offset = (weight.sum(dim=(2, 3)) * shift).sum(dim=1)  # (out,): what the RGB model adds
    if bn_mean_key is not None:
        if bn_mean_key not in state:
            raise WeightsError(f"pretrained weights have {key} but no {bn_mean_key} to take the "
                               f"mean shift")
        state[bn_mean_key] = state[bn_mean_key] - offset


def load_encoder_weights(encoder: nn.Module, name: str, weights: str, *,
                         mean: Sequence[float] | None = None,
                         std: Sequence[float] | None = None) -> list[str]:
    """Load a name of WEIGHT_URLS[name] (downloaded once into torch.hub's cache) or a .pth/.npz
    file into `encoder`, a 1-channel first layer adapted to mean/std; returns the keys left out."""
    known = WEIGHT_URLS[name]
    if weights in known:
        url = known[weights]
        path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
        try:
            if not os.path.exists(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                # torchvision names its files by their sha256 prefix (resnet34-b627a593.pth):
                # checked. Google's .npz names hold no hash; timm's 8 digits are not documented one.
                torchvision = url.startswith("https://download.pytorch.org/")
                hash_prefix = url.rsplit("-", 1)[-1].split(".")[0] if torchvision else None
                torch.hub.download_url_to_file(url, path, hash_prefix=hash_prefix, progress=True)
        except (OSError, RuntimeError) as err:  # URLError is an OSError
            raise WeightsError(f"could not download {weights!r} weights from {url} ({err}); "
                               f"download the file elsewhere and pass its path (--weights PATH), "
                               f"or start from scratch (--weights none)") from None
    elif os.path.isfile(weights):
        path = weights
    else:
        raise WeightsError(f"weights {weights!r}: no such file, and not one of {sorted(known)} "
                           f"for {name}")

    try:
        if path.endswith(".npz"):
            state = _state_dict_from_npz(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state)
    except Exception as err:  # a truncated or foreign file: say which one
        raise WeightsError(f"could not read weights file {path}: {err}") from None
    ignored = sorted(k for k in state if k.startswith(("fc.", "ignored.")))
    state = {k: v for k, v in state.items() if k not in ignored}
    first_conv = "conv1.weight" if name == "resnet34" else "root.conv.weight"
    in_channels = encoder.out_channels[0]
    if first_conv in state:
        default_mean, default_std = default_normalisation(name, in_channels)
        gray = ((mean or default_mean)[0], (std or default_std)[0])
        adapt_first_conv(state, first_conv, in_channels, rgb=INPUT_NORMALISATION[name], gray=gray,
                         bn_mean_key="bn1.running_mean" if name == "resnet34" else None)
    try:
        missing, unexpected = encoder.load_state_dict(state, strict=False)
    except RuntimeError as err:  # strict=False still refuses another shape: another network's
        # the last line: "size mismatch for ..."
        detail = [line.strip() for line in str(err).splitlines() if line.strip()][-1]
        raise WeightsError(f"{path} does not fit the {name} encoder ({detail})") from None
    if missing or unexpected:
        raise WeightsError(f"{path} does not fit the {name} encoder: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]} "
                           f"({len(missing)} and {len(unexpected)} keys)")
    return ignored


# -------------------------------------------------------------------- decoders: SMP Unet and Unet++
class ConvBNReLU(nn.Sequential):
    """Convolution without bias + BatchNorm + ReLU: SMP's Conv2dReLU with use_batchnorm=True."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__(nn.Conv2d(in_channels, out_channels, kernel_size,
                                   padding=kernel_size // 2, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class SCSE(nn.Module):
    """Concurrent spatial and channel SE (Roy et al. 2018): x*cSE(x) + x*sSE(x)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 1)  # SMP would build an empty layer below 16 channels
        self.cse = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1),
                                 nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1),
                                 nn.Sigmoid())
        self.sse = nn.Sequential(nn.Conv2d(channels, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.cse(x) + x * self.sse(x)


def _attention(kind: str | None, channels: int) -> nn.Module:
    if kind not in (None, "scse"):
        raise ValueError(f"attention must be None or 'scse', got {kind!r}")
    return nn.Identity() if kind is None else SCSE(channels)


class DecoderBlock(nn.Module):
    """U-Net up block: nearest x2 upsampling, concatenate the skip, two ConvBNReLU (SMP's)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, *,
                 attention: str | None = None):
        super().__init__()
        self.attention1 = _attention(attention, in_channels + skip_channels)
        self.conv1 = ConvBNReLU(in_channels + skip_channels, out_channels)
        self.conv2 = ConvBNReLU(out_channels, out_channels)
        self.attention2 = _attention(attention, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = self.attention1(torch.cat([x, skip], dim=1))  # (B, C_in + C_skip, H, W)
        return self.attention2(self.conv2(self.conv1(x)))


def _decoder_plan(encoder_channels, decoder_channels):
    """SMP's bookkeeping: (in, skip, out) widths per level, deepest first; no skip at stride 1."""
    encoder_channels = list(encoder_channels[1:])[::-1]  # drop the input; (s32, s16, s8, s4, s2)
    if len(decoder_channels) != len(encoder_channels) or min(decoder_channels) < 1:
        raise ValueError(f"decoder_channels needs {len(encoder_channels)} positive widths, one per "
                         f"level, got {list(decoder_channels)}")
    in_channels, skip_channels = ([encoder_channels[0]] + list(decoder_channels[:-1]),
                                  encoder_channels[1:] + [0])
    return in_channels, skip_channels, list(decoder_channels)


class UNetDecoder(nn.Module):
    """segmentation_models_pytorch's default Unet decoder: five DecoderBlocks."""

    def __init__(self, encoder_channels, *, decoder_channels=(256, 128, 64, 32, 16),
                 attention: str | None = None):
        super().__init__()
        ins, skips, outs = _decoder_plan(encoder_channels, decoder_channels)
        self.blocks = nn.ModuleList(DecoderBlock(i, s, o, attention=attention)
                                    for i, s, o in zip(ins, skips, outs))
        self.out_channels = outs[-1]
        self.options = dict(decoder_channels=outs, attention=attention)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        skips = features[1:-1][::-1] + [None]  # (s16, s8, s4, s2, none)
        x = features[-1]
        for block, skip in zip(self.blocks, skips):
            x = block(x, skip)
        return x


class UNetPlusPlusDecoder(nn.Module):
    """segmentation_models_pytorch's UnetPlusPlus decoder: nested nodes x_{depth}_{level}."""

    def __init__(self, encoder_channels, *, decoder_channels=(256, 128, 64, 32, 16),
                 attention: str | None = "scse"):
        super().__init__()
        ins, skips, outs = _decoder_plan(encoder_channels, decoder_channels)
        self.depth = len(ins) - 1
        blocks = {}
        for level in range(self.depth):
            for depth in range(level + 1):
                if depth == 0:  # the backbone path of the nest, as in a plain U-Net
                    block = (ins[level], skips[level] * (level + 1), outs[level])
                else:  # inner nodes keep the width of the encoder map at their resolution
                    block = (skips[level - 1], skips[level] * (level + 1 - depth), skips[level])
                blocks[f"x_{depth}_{level}"] = DecoderBlock(*block, attention=attention)
        blocks[f"x_0_{self.depth}"] = DecoderBlock(ins[-1], 0, outs[-1], attention=attention)
        self.blocks = nn.ModuleDict(blocks)
        self.out_channels = outs[-1]
        self.options = dict(decoder_channels=outs, attention=attention)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        features = features[1:][::-1]  # (s32, s16, s8, s4, s2)
        nodes = {}
        for level in range(self.depth):
            for depth in range(self.depth - level):
                if level == 0:
                    node = f"x_{depth}_{depth}"
                    nodes[node] = self.blocks[node](features[depth], features[depth + 1])
                    continue
                col = depth + level
                dense = ([nodes[f"x_{d}_{col}"] for d in range(depth + 1, col + 1)]
                         + [features[col + 1]])
                nodes[f"x_{depth}_{col}"] = self.blocks[f"x_{depth}_{col}"](
                    nodes[f"x_{depth}_{col - 1}"], torch.cat(dense, dim=1))
        return self.blocks[f"x_0_{self.depth}"](nodes[f"x_0_{self.depth - 1}"])


BASELINE_DECODERS = {"unet": UNetDecoder, "unetplusplus": UNetPlusPlusDecoder}


# ---------------------------------------------------------------------------------------- the model
class SegmentationModel(nn.Module):
    """Encoder -> decoder -> 3x3 convolution to one logit per class and pixel (no activation)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, num_classes: int, config: dict):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.head = nn.Conv2d(decoder.out_channels, num_classes, 3, padding=1)
        for m in decoder.modules():  # SMP's initialisation: Kaiming-uniform (fan_in), head Xavier
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.config = config  # plain build_model kwargs: build_model(**model.config) rebuilds it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = self.encoder.out_channels[0]
        if x.ndim != 4 or x.shape[1] != channels or x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(f"expected input (B, {channels}, H, W) with H and W multiples of 32 "
                             f"(the encoder's output stride), got {tuple(x.shape)}: resize or pad "
                             f"the image")
        return self.head(self.decoder(self.encoder(x)))  # (B, num_classes, H, W)


def build_model(encoder: str = "resnet34", decoder: str = "fusion", num_classes: int = 1,
                in_channels: int = 3, weights: str | None = None, mean: tuple | None = None,
                std: tuple | None = None, **decoder_options) -> SegmentationModel:
    """Encoder + decoder + head. weights: None (random), a name in WEIGHT_URLS or a .pth/.npz path.
    decoder_options: decoder_channels (all), attention (unet, unetplusplus), se_reduction (fusion).
    mean/std override the input normalisation; model.config keeps them, so no code guesses."""
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; choose one of {sorted(ENCODERS)}")
    if decoder not in ("fusion", *BASELINE_DECODERS):
        raise ValueError(f"unknown decoder {decoder!r}; choose one of fusion, "
                         f"{', '.join(BASELINE_DECODERS)}")
    if num_classes < 1 or in_channels < 1:
        raise ValueError(f"num_classes and in_channels must be >= 1, got {num_classes} and "
                         f"{in_channels}")
    mean, std = (default_normalisation(encoder, in_channels) if mean is None or std is None
                 else (mean, std))
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(f"mean and std need {in_channels} values each, got {mean} and {std}")

    enc = ENCODERS[encoder](in_channels)
    if weights is not None:
        load_encoder_weights(enc, encoder, weights, mean=mean, std=std)
    if decoder == "fusion":  # imported only here: without fusion.py, model.py builds the baselines
        from fusion import DEFAULT_WIDTHS, FusionDecoder
        if decoder_options.get("decoder_channels") is None:  # the widths of Tables 2 and 4
            decoder_options["decoder_channels"] = DEFAULT_WIDTHS[encoder]
        dec = FusionDecoder(enc.out_channels, **decoder_options)
    else:
        dec = BASELINE_DECODERS[decoder](enc.out_channels, **decoder_options)
    # The resolved decoder options (defaults too) go into the config: a checkpoint rebuilds it all.
    config = dict(encoder=encoder, decoder=decoder, num_classes=num_classes,
                  in_channels=in_channels, mean=[float(m) for m in mean],
                  std=[float(s) for s in std], **dec.options)
    return SegmentationModel(enc, dec, num_classes, config)
