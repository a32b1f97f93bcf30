"""The network (model.py, fusion.py): encoders against independent implementations, weight files in their published
layouts, the thesis' parameter and FLOP counts, and the model's input checks."""
import ast
import copy
import importlib.util
import json
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import benchmark
import model as model_lib
from engine.checkpoints import state_dict_from_smp, state_dict_from_timm_bit
from fusion import DEFAULT_WIDTHS, FusionDecoder, FusionLayer, SEBlock
from model import WeightsError, build_model, load_encoder_weights

ROOT = Path(__file__).resolve().parents[1]


def randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Random weights and BatchNorm statistics, so a comparison exercises every tensor."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.dtype.is_floating_point:
                values = torch.randn(tensor.shape, generator=gen) * 0.1
                if name.endswith(("running_var", "weight")) and tensor.ndim == 1:  # norm scales: positive, near 1
                    values = 1 + values.abs()
                tensor.copy_(values)


# ----------------------------------------------------------------------------------------------- ResNet-34
def test_resnet34_matches_torchvision_at_every_stride(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    reference = torchvision.models.resnet34()
    randomise(reference)
    reference.eval()
    path = tmp_path / "resnet34-random.pth"
    torch.save(reference.state_dict(), path)  # torchvision's layout, fc included

    encoder = model_lib.ResNetEncoder(3)
    ignored = load_encoder_weights(encoder, "resnet34", str(path))
    assert ignored == ["fc.bias", "fc.weight"]
    encoder.eval()

    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ours = encoder(x)
        r = reference
        s2 = r.relu(r.bn1(r.conv1(x)))
        s4 = r.layer1(r.maxpool(s2))
        s8 = r.layer2(s4)
        s16 = r.layer3(s8)
        s32 = r.layer4(s16)
    expected = [x, s2, s4, s8, s16, s32]
    assert encoder.out_channels == (3, 64, 64, 128, 256, 512)
    for stride, got, want in zip((1, 2, 4, 8, 16, 32), ours, expected):
        assert got.shape == want.shape and got.shape[-1] == 96 // stride
        assert (got - want).abs().max() < 1e-5, f"stride {stride}"


def test_pretrained_rgb_weights_in_one_channel_model_compute_the_rgb_model_on_the_replicated_image(tmp_path):
    """Each model normalises its own input: the RGB one per channel with ImageNet's statistics, the 1-channel one
    with their average. On a gray image the two must agree (in eval mode, away from the zero-padded border, which
    the folded mean shift cannot reach)."""
    rgb = build_model("resnet34", "unet", in_channels=3)
    randomise(rgb.encoder, seed=1)
    path = tmp_path / "rgb.pth"
    torch.save(rgb.encoder.state_dict(), path)
    gray = build_model("resnet34", "unet", in_channels=1, weights=str(path))
    assert gray.encoder.conv1.weight.shape == (64, 1, 7, 7)
    gray.encoder.eval(), rgb.encoder.eval()
    image = torch.rand(1, 1, 64, 64)
    normalise = lambda x, config: (x - torch.tensor(config["mean"]).view(1, -1, 1, 1)) / torch.tensor(
        config["std"]).view(1, -1, 1, 1)
    assert rgb.config["std"] != [gray.config["std"][0]] * 3  # the case where a plain kernel sum is not enough
    with torch.no_grad():
        a = gray.encoder(normalise(image, gray.config))[1]  # stride 2, after conv1, bn1, relu
        b = rgb.encoder(normalise(image.expand(-1, 3, -1, -1), rgb.config))[1]
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))  # the 7x7 kernel reaches the padding 2 away
    assert (a[inner] - b[inner]).abs().max() <= 1e-5 * b.abs().max()  # float sums in another order
    assert (a - b).abs().max() > 1e-3 * b.abs().max()  # the border does differ: the test can tell


def test_weights_of_another_network_are_refused_in_one_line(tmp_path):
    path = tmp_path / "resnet18.pth"
    state = model_lib.ResNetEncoder(3).state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)  # a tensor of another shape
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"resnet18.pth does not fit the resnet34 encoder \(size mismatch for "
                                           "layer1.0.conv1.weight"):
        build_model("resnet34", "unet", weights=str(path))


# ----------------------------------------------------------------------------------------------- BiT R50x1
def write_bit_npz(path, *, head_classes: int = 7, seed: int = 0) -> dict:
    """Random arrays under every key of Google's BiT-M-R50x1.npz, in its HWIO layout (written from the key scheme
    documented by google-research/big_transfer, independently of model.py's loader)."""
    rng = np.random.default_rng(seed)
    arrays = {}

    def conv(key, kh, cin, cout):
        arrays[f"resnet/{key}/standardized_conv2d/kernel"] = rng.normal(size=(kh, kh, cin, cout)).astype(np.float32)

    def norm(key, c):
        arrays[f"resnet/{key}/group_norm/gamma"] = (1 + 0.1 * rng.normal(size=c)).astype(np.float32)
        arrays[f"resnet/{key}/group_norm/beta"] = (0.1 * rng.normal(size=c)).astype(np.float32)

    conv("root_block", 7, 3, 64)
    cin = 64
    for b, units in enumerate((3, 4, 6, 3), start=1):
        cout, cmid = 256 * 2 ** (b - 1), 64 * 2 ** (b - 1)
        for u in range(1, units + 1):
            unit = f"block{b}/unit{u:02d}"
            unit_in = cin if u == 1 else cout
            norm(f"{unit}/a", unit_in), conv(f"{unit}/a", 1, unit_in, cmid)
            norm(f"{unit}/b", cmid), conv(f"{unit}/b", 3, cmid, cmid)
            norm(f"{unit}/c", cmid), conv(f"{unit}/c", 1, cmid, cout)
            if u == 1:
                conv(f"{unit}/a/proj", 1, unit_in, cout)
        cin = cout
    norm("", 2048)
    arrays = {k.replace("resnet//", "resnet/"): v for k, v in arrays.items()}
    arrays["resnet/head/conv2d/kernel"] = rng.normal(size=(1, 1, 2048, head_classes)).astype(np.float32)
    arrays["resnet/head/conv2d/bias"] = np.zeros(head_classes, np.float32)
    np.savez(path, **arrays)
    return arrays


def test_bit_npz_loads_every_array_and_matches_timm(tmp_path):
    timm = pytest.importorskip("timm")
    path = tmp_path / "BiT-M-R50x1.npz"
    arrays = write_bit_npz(path)

    encoder = model_lib.ResNetV2Encoder(3)
    ignored = load_encoder_weights(encoder, "bit_r50x1", str(path))
    # Only the classifier (final norm and head) is left out; every backbone array went somewhere...
    assert ignored == ["ignored.group_norm/beta", "ignored.group_norm/gamma", "ignored.head/conv2d/bias",
                       "ignored.head/conv2d/kernel"]
    # ...and every parameter of ours was filled from the file (each one equals some array of the file).
    file_values = {tuple(np.asarray(v).ravel()[:4].round(5)) for v in arrays.values()}
    for name, p in encoder.named_parameters():
        assert p.numel() > 0
        first = p.detach().permute(*range(p.ndim)).numpy()
        if first.ndim == 4:
            first = first.transpose(2, 3, 1, 0)  # back to HWIO to compare with the file's order
        assert tuple(first.ravel()[:4].round(5)) in file_values, name

    reference = timm.create_model("resnetv2_50x1_bit", pretrained=False, num_classes=7)
    reference.load_pretrained(str(path))  # timm's own npz loader: an independent reading of the same file
    reference.eval(), encoder.eval()
    taps = []
    hooks = [reference.stem.conv.register_forward_hook(lambda m, i, o: taps.append(o))]
    hooks += [stage.register_forward_hook(lambda m, i, o: taps.append(o)) for stage in reference.stages]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference.forward_features(x)
        ours = encoder(x)
    assert encoder.out_channels == (3, 64, 256, 512, 1024, 2048)
    assert len(taps) == 5
    for stride, got, want in zip((2, 4, 8, 16, 32), ours[1:], taps):
        assert got.shape == want.shape and got.shape[-1] == 64 // stride
        scale = want.abs().max()
        assert (got - want).abs().max() <= 1e-4 * scale, f"stride {stride}"


def test_bit_npz_that_does_not_fit_is_rejected_by_name(tmp_path):
    path = tmp_path / "half.npz"
    arrays = write_bit_npz(path)
    np.savez(path, **{k: v for k, v in arrays.items() if "block4" not in k})
    with pytest.raises(WeightsError, match="does not fit the bit_r50x1 encoder"):
        load_encoder_weights(model_lib.ResNetV2Encoder(3), "bit_r50x1", str(path))


def standardised_conv(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The BiT formula written out in float64, independently of StdConv2d: (w - mean) / sqrt(var + 1e-10) per filter."""
    w = conv.weight.detach().double()
    w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.var(dim=(1, 2, 3), unbiased=False, keepdim=True) + 1e-10).sqrt()
    return F.conv2d(x.double(), w, None, conv.stride, conv.padding)


def test_std_conv_reuses_its_standardised_weight_without_autograd_until_the_weight_changes():
    torch.manual_seed(0)
    conv, x = model_lib.StdConv2d(8, 16, 3, padding=1, bias=False), torch.randn(2, 8, 12, 12)
    check = lambda: torch.testing.assert_close(conv(x).double(), standardised_conv(conv, x), rtol=1e-5, atol=1e-5)
    trained = conv(x)  # autograd on: computed from the weight, nothing kept
    assert conv._cache is None and trained.requires_grad
    conv.eval()
    with torch.no_grad():
        assert torch.equal(conv(x), trained)
        kept = conv._cache[2]
        check()
        assert conv._cache[2] is kept  # reused, not recomputed
    with torch.inference_mode():
        assert torch.equal(conv(x), trained) and conv._cache[2] is kept

    other = model_lib.StdConv2d(8, 16, 3, padding=1, bias=False)
    conv.load_state_dict(other.state_dict())
    with torch.no_grad():
        check()
        torch.testing.assert_close(conv(x), other(x))
    conv.train()  # a training step, then eval again
    optimizer = torch.optim.AdamW(conv.parameters(), lr=0.1, amsgrad=True)
    conv(x).square().mean().backward()
    optimizer.step()
    conv.eval()
    with torch.no_grad():
        check()
        conv.weight[3].mul_(-2.0)  # an in-place edit of one filter under no_grad
        check()
        conv.to(torch.float64)  # a new tensor (same values): recomputed, in the new dtype
        assert conv(x.double()).dtype == torch.float64 and conv._cache[2].dtype == torch.float64


def test_std_conv_cache_stays_out_of_the_state_dict_and_survives_deepcopy():
    encoder = model_lib.ResNetV2Encoder(1, blocks=(1, 1, 1, 1)).eval()
    keys = list(encoder.state_dict())
    with torch.no_grad():
        want = encoder(torch.ones(1, 1, 32, 32))[-1]
    assert encoder.root.conv._cache is not None and list(encoder.state_dict()) == keys
    twin = copy.deepcopy(encoder)
    with torch.no_grad():
        twin.root.conv.weight.zero_()  # the copy's weights are its own: its cache must follow them, not the original's
        assert twin(torch.ones(1, 1, 32, 32))[1].abs().max() == 0
        assert torch.equal(encoder(torch.ones(1, 1, 32, 32))[-1], want)


def test_bit_unet_with_timm_names_mapped_matches_smp_tu_encoder():
    smp = pytest.importorskip("segmentation_models_pytorch")
    reference = smp.Unet("tu-resnetv2_50x1_bit", encoder_weights=None, classes=3)
    randomise(reference, seed=4)
    ours = build_model("bit_r50x1", "unet", num_classes=3)
    ours.load_state_dict(state_dict_from_timm_bit(state_dict_from_smp(reference.state_dict())))
    reference.eval(), ours.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got, want = ours(x), reference(x)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()  # random norms grow the logits to ~1e5


# ---------------------------------------------------------------------------------------- weights: download
def test_imagenet_download_offline_fails_in_one_line_naming_url_and_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: a download would be attempted

    def offline(url, dst, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsError) as err:
        build_model("resnet34", "unet", weights="imagenet")
    message = str(err.value)
    assert "\n" not in message
    assert "https://download.pytorch.org/models/resnet34-b627a593.pth" in message and "--weights PATH" in message


def test_imagenet_download_checks_hash_and_uses_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        torch.save(model_lib.ResNetEncoder(3).state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    build_model("resnet34", "unet", weights="imagenet")
    build_model("resnet34", "unet", weights="imagenet")  # second time: from the cache
    assert calls == [("https://download.pytorch.org/models/resnet34-b627a593.pth", "b627a593")]
    build_model("resnet34", "fusion", weights="imagenet-timm", decoder_channels=(16, 16, 16, 16, 16))
    assert calls[1] == ("https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"
                        "resnet34-43635321.pth", None)  # timm's name carries no sha256 prefix to check


def test_missing_or_corrupt_weights_file_is_named(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        build_model("resnet34", "unet", weights=str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="bad.pth"):
        build_model("resnet34", "unet", weights=str(bad))


# ------------------------------------------------------------------------- decoders against the SMP originals
@pytest.mark.parametrize("decoder,smp_class,attention", [("unet", "Unet", None), ("unet", "Unet", "scse"),
                                                         ("unetplusplus", "UnetPlusPlus", "scse")])
def test_unet_decoders_match_segmentation_models_pytorch(decoder, smp_class, attention):
    smp = pytest.importorskip("segmentation_models_pytorch")
    reference = getattr(smp, smp_class)("resnet34", encoder_weights=None, classes=2,
                                        decoder_attention_type=attention)
    randomise(reference, seed=3)
    ours = build_model("resnet34", decoder, num_classes=2, attention=attention)
    ours.load_state_dict(state_dict_from_smp(reference.state_dict()))
    reference.eval(), ours.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- the thesis' counts (Tables 2, 4)
@pytest.mark.parametrize("label,kwargs,side,thesis_params_m,thesis_flops,thesis_seconds", benchmark.THESIS_ROWS)
def test_parameter_and_flop_counts_match_the_thesis(label, kwargs, side, thesis_params_m, thesis_flops,
                                                    thesis_seconds):
    costs = benchmark.model_costs(kwargs, side)
    exact_smp_counts = {"Table 2 (B)": 24_436_369, "Table 2 (C)": 26_281_332, "Table 4 (B)": 32_512_229}
    if label[:11] in exact_smp_counts:
        assert costs["params"] == exact_smp_counts[label[:11]]
    assert abs(costs["params"] / 1e6 / thesis_params_m - 1) < 0.01, costs["params"]
    if "Table 4 (B)" not in label:  # the thesis' 6.04 for that row fits no counting rule (see benchmark.py)
        tolerance = 0.03 if "proposed" in label else 0.015
        assert abs(costs["thesis_convention_flops"] / 1e9 / thesis_flops - 1) < tolerance, costs


def test_unetplusplus_without_attention_has_smp_default_count():
    assert benchmark.model_costs(dict(encoder="resnet34", decoder="unetplusplus", attention=None), 64)[
        "params"] == 26_078_609


# ----------------------------------------------------------------------------------------- fusion building blocks
def test_se_block_matches_the_formula_and_torchvisions_squeeze_excitation():
    torch.manual_seed(0)
    se = SEBlock(8, reduction=4)
    x = torch.randn(2, 8, 5, 7)
    z = x.mean(dim=(2, 3))  # squeeze
    s = torch.sigmoid(F.relu(z @ se.fc1.weight.T + se.fc1.bias) @ se.fc2.weight.T + se.fc2.bias)  # excitation
    torch.testing.assert_close(se(x), x * s[:, :, None, None])
    # An independent implementation holding the same weights (its FC layers are 1x1 convolutions)
    torchvision = pytest.importorskip("torchvision")
    reference = torchvision.ops.SqueezeExcitation(8, 2)
    with torch.no_grad():
        for ours, theirs in ((se.fc1, reference.fc1), (se.fc2, reference.fc2)):
            theirs.weight.copy_(ours.weight[:, :, None, None])  # (out, in) -> (out, in, 1, 1)
            theirs.bias.copy_(ours.bias)
        torch.testing.assert_close(se(x), reference(x))


def test_fusion_layer_doubles_resolution_and_uses_every_parameter():
    layer = FusionLayer(32, 12, 16, se_reduction=4)
    high, skip = torch.randn(2, 32, 4, 6), torch.randn(2, 12, 8, 12)
    out = layer(high, skip)
    assert out.shape == (2, 16, 8, 12)
    out.square().mean().backward()
    unused = [n for n, p in layer.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not unused
    assert FusionLayer(32, 16, 16).skip_projection is None  # equal widths: the skip is added as it is


def test_fusion_decoder_needs_one_width_per_level_and_build_model_gives_the_thesis_widths():
    with pytest.raises(ValueError, match="needs 5 positive widths"):
        FusionDecoder((3, 64, 64, 128, 256, 512), decoder_channels=(64, 32))
    for decoder in ("fusion", "unet", "unetplusplus"):  # not low-resolution logits, nor a shape error deep inside
        for widths in ((64, 32), (16, 16, 16, 16, 0), (8,) * 6):
            with pytest.raises(ValueError, match=r"decoder_channels needs 5 positive widths, one per level"):
                build_model("resnet34", decoder, decoder_channels=widths)
    with pytest.raises(TypeError, match="decoder_channels"):  # one place says the thesis' widths: build_model
        FusionDecoder((3, 64, 64, 128, 256, 512))
    with torch.device("meta"):  # widths only: no memory for the weights
        for encoder in ("resnet34", "bit_r50x1"):
            built = build_model(encoder, "fusion", in_channels=1)
            assert built.decoder.options["decoder_channels"] == list(DEFAULT_WIDTHS[encoder])
            narrow = build_model(encoder, "fusion", decoder_channels=(8, 8, 8, 8, 8))
            assert narrow.config["decoder_channels"] == [8] * 5


def test_model_and_fusion_copy_out_with_torch_alone(monkeypatch):
    """model.py + fusion.py import nothing of this project but each other (and numpy, lazily, for BiT files); model.py
    alone, without fusion.py beside it, still builds the two baselines."""
    for name in ("model.py", "fusion.py"):
        tree = ast.parse((ROOT / name).read_text())
        top_level = {alias.name.split(".")[0] for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
                     for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
        assert top_level <= {"__future__", "collections", "os", "torch"}, (name, top_level)
    monkeypatch.setitem(sys.modules, "fusion", None)  # as if fusion.py were not there: importing it fails
    spec = importlib.util.spec_from_file_location("model_alone", ROOT / "model.py")
    alone = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(alone)
    with torch.device("meta"):
        assert alone.build_model("resnet34", "unet").config["decoder"] == "unet"
        assert alone.build_model("bit_r50x1", "unetplusplus", num_classes=21).config["decoder"] == "unetplusplus"
        with pytest.raises(ImportError):
            alone.build_model("resnet34", "fusion")


# ------------------------------------------------------------------------------------------ the whole model
@pytest.mark.parametrize("encoder,decoder,in_channels", [
    ("resnet34", "fusion", 1), ("resnet34", "fusion", 3), ("resnet34", "unet", 1), ("resnet34", "unetplusplus", 3),
    ("bit_r50x1", "fusion", 3), ("bit_r50x1", "unet", 1), ("bit_r50x1", "unetplusplus", 1)])
def test_forward_shapes_for_every_encoder_decoder_and_channel_count(encoder, decoder, in_channels):
    small = dict(decoder_channels=(64, 32, 16, 16, 8))  # narrow decoders keep the test fast; structure unchanged
    model = build_model(encoder, decoder, num_classes=3, in_channels=in_channels, **small).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, in_channels, 64, 96))
    assert logits.shape == (2, 3, 64, 96) and torch.isfinite(logits).all()
    assert len(model.config["mean"]) == in_channels


@pytest.mark.parametrize("shape", [(1, 3, 100, 64), (1, 3, 64, 48), (1, 1, 64, 64), (3, 64, 64)])
def test_bad_inputs_are_rejected_clearly(shape):
    model = build_model("resnet34", "unet", decoder_channels=(32, 16, 16, 8, 8))
    with pytest.raises(ValueError, match="multiples of 32|expected input"):
        model(torch.randn(shape))


def test_bad_arguments_are_rejected_clearly():
    with pytest.raises(ValueError, match="unknown encoder 'resnet50'"):
        build_model("resnet50", "unet")
    with pytest.raises(ValueError, match="unknown decoder"):
        build_model("resnet34", "deeplab")
    with pytest.raises(ValueError, match="'cbam'"):
        build_model("resnet34", "unet", attention="cbam")
    with pytest.raises(ValueError, match="mean and std need 1 values"):
        build_model("resnet34", "unet", in_channels=1, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))


@pytest.mark.parametrize("encoder,decoder", [("resnet34", "fusion"), ("bit_r50x1", "unet"),
                                             ("resnet34", "unetplusplus")])
def test_config_rebuilds_the_model_through_a_weights_only_checkpoint(tmp_path, encoder, decoder):
    with torch.device("meta"):
        original = build_model(encoder, decoder, num_classes=2, in_channels=1)
    config = original.config
    assert json.loads(json.dumps(config)) == config  # plain data only
    expected_normalisation = {"resnet34": ([0.449], [0.226]), "bit_r50x1": ([0.5], [0.5])}[encoder]
    assert (config["mean"], config["std"]) == expected_normalisation
    torch.save({"model_config": config}, tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)["model_config"]
    with torch.device("meta"):
        rebuilt = build_model(**loaded)
    assert rebuilt.config == config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in
                                                                      original.state_dict().items()}


def test_thesis_default_widths_are_recorded_in_the_config():
    with torch.device("meta"):
        cbis = build_model("resnet34", "fusion")
        voc = build_model("bit_r50x1", "fusion", num_classes=21)
    assert cbis.config["decoder_channels"] == [768, 384, 256, 96, 48] and cbis.config["se_reduction"] == 4
    assert voc.config["decoder_channels"] == [1024, 512, 256, 128, 64] and voc.config["se_reduction"] == 4
