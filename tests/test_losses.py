"""Tests for losses.py: hand-computed values, an independent reference formula, SMP as an oracle, the 255 rule,
degenerate batches, extreme logits, gradcheck in float64, bf16 autocast, build_loss parsing, and two gloo processes
with distributed=True against one process on the whole batch."""
import math
import os

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.distributed as dist
import torch.nn.functional as F

import losses
from helpers import run_processes
from losses import IGNORE_INDEX, build_loss

REGION_LOSSES = ["jaccard", "dice", "tversky", "focal_tversky"]
ALL_LOSSES = REGION_LOSSES + ["ce"]


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def make_batch(num_classes: int, *, batch=3, size=6, seed=0, dtype=torch.float32):
    """Random logits and labels with some 255 pixels; the last class never appears in a multiclass target."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, num_classes, size, size, generator=gen, dtype=dtype) * 2
    num_labels = 2 if num_classes == 1 else num_classes - 1
    target = torch.randint(0, num_labels, (batch, size, size), generator=gen)
    target[torch.rand(batch, size, size, generator=gen) < 0.2] = IGNORE_INDEX
    return logits, target


def reference_region_loss(name, logits, target, *, aggregation="batch", alpha=0.7, beta=0.3, gamma=4 / 3):
    """Loop-by-loop float64 restatement of the documented formulas (module docstring), independent of losses.py."""
    logits = logits.double()
    batch, channels = logits.shape[:2]
    probs = torch.sigmoid(logits) if channels == 1 else torch.softmax(logits, dim=1)
    labels = [1] if channels == 1 else list(range(channels))  # label scored by each channel
    groups = [list(range(batch))] if aggregation == "batch" else [[b] for b in range(batch)]
    values = []
    for images in groups:
        for channel, label in enumerate(labels):
            tp = fp = fn = 0.0
            for b in images:
                valid = target[b] != IGNORE_INDEX
                p, t = probs[b, channel][valid], (target[b][valid] == label).double()
                tp, fp, fn = tp + (p * t).sum().item(), fp + (p * (1 - t)).sum().item(), fn + ((1 - p) * t).sum().item()
            if tp + fn == 0:  # no target pixel of this class in the group: loss 0, still counted in the mean
                values.append(0.0)
            elif name == "jaccard":
                values.append(1 - tp / (tp + fp + fn))
            elif name == "dice":
                values.append(1 - 2 * tp / (2 * tp + fp + fn))
            else:
                tversky = 1 - tp / (tp + alpha * fn + beta * fp)
                values.append(tversky if name == "tversky" else tversky ** (1 / gamma))
    return sum(values) / len(values)


def test_hand_computed_binary_values():
    # one image of 4 pixels: probabilities 0.8, 0.6 on the lesion, 0.3, 0.1 on background
    logits = torch.tensor([logit(0.8), logit(0.6), logit(0.3), logit(0.1)]).reshape(1, 1, 2, 2)
    target = torch.tensor([[[1, 1], [0, 0]]])
    tp, fp, fn = 1.4, 0.4, 0.6
    assert losses.JaccardLoss(1)(logits, target).item() == pytest.approx(1 - 1.4 / 2.4, abs=1e-6)  # 5/12
    assert losses.DiceLoss(1)(logits, target).item() == pytest.approx(1 - 2.8 / 3.8, abs=1e-6)  # 5/19
    tversky = tp / (tp + 0.7 * fn + 0.3 * fp)  # 1.4 / 1.94: alpha=0.7 multiplies the false negatives
    assert losses.TverskyLoss(1)(logits, target).item() == pytest.approx(1 - tversky, abs=1e-6)
    assert losses.FocalTverskyLoss(1)(logits, target).item() == pytest.approx((1 - tversky) ** 0.75, abs=1e-6)
    bce = -(math.log(0.8) + math.log(0.6) + math.log(0.7) + math.log(0.9)) / 4
    assert losses.CrossEntropyLoss(1)(logits, target).item() == pytest.approx(bce, abs=1e-6)


def test_hard_masks_give_iou_and_dice_and_per_image_aggregation():
    # image 0 predicted exactly (2 lesion pixels); image 1: 4 lesion pixels, 2 of them predicted, nothing else
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[0, 0, :2] = 1
    target[1, 1, :4] = 1
    predicted = target.clone()
    predicted[1, 1, 2:] = 0
    logits = (predicted.float() * 2 - 1).mul(30).unsqueeze(1)  # +-30: probabilities 0/1 to float32 precision
    # batch: TP 4, FN 2 -> IoU 4/6, Dice 8/10; per image: IoU 1 and 1/2, Dice 1 and 2/3
    assert losses.JaccardLoss(1)(logits, target).item() == pytest.approx(1 / 3, abs=1e-6)
    assert losses.DiceLoss(1)(logits, target).item() == pytest.approx(1 / 5, abs=1e-6)
    assert losses.JaccardLoss(1, aggregation="image")(logits, target).item() == pytest.approx(0.25, abs=1e-6)
    assert losses.DiceLoss(1, aggregation="image")(logits, target).item() == pytest.approx(1 / 6, abs=1e-6)
    # an image with an empty target scores 0 in image mode and still counts in the mean (SMP's rule per image)
    target[0], logits[0] = 0, -30
    assert losses.JaccardLoss(1, aggregation="image")(logits, target).item() == pytest.approx(0.25, abs=1e-6)


@pytest.mark.parametrize("num_classes", [1, 4])
@pytest.mark.parametrize("aggregation", ["batch", "image"])
@pytest.mark.parametrize("name", REGION_LOSSES)
def test_region_losses_match_reference_formula(name, aggregation, num_classes):
    logits, target = make_batch(num_classes, seed=num_classes)
    if num_classes == 1:
        target[1][target[1] == 1] = 0  # an image without lesion
    module = losses.LOSSES[name](num_classes, aggregation=aggregation)
    expected = reference_region_loss(name, logits, target, aggregation=aggregation)
    assert module(logits, target).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("mode", ["binary", "multiclass"])
def test_matches_smp_where_conventions_agree(mode):
    num_classes = 1 if mode == "binary" else 5
    logits, target = make_batch(num_classes, batch=4, size=8, seed=7)
    smp_target = target.unsqueeze(1) if mode == "binary" else target
    pairs = [
        (losses.JaccardLoss(num_classes), smp.losses.JaccardLoss(mode, ignore_index=IGNORE_INDEX)),
        (losses.DiceLoss(num_classes), smp.losses.DiceLoss(mode, ignore_index=IGNORE_INDEX)),
        # SMP's alpha weights false positives: the paper's (alpha=0.7 on FN, beta=0.3 on FP) is SMP's (0.3, 0.7)
        (losses.TverskyLoss(num_classes), smp.losses.TverskyLoss(mode, ignore_index=IGNORE_INDEX, alpha=0.3, beta=0.7)),
    ]
    if mode == "binary":  # one class: exponent per class == exponent after the class mean
        pairs.append((losses.FocalTverskyLoss(num_classes),
                      smp.losses.TverskyLoss(mode, ignore_index=IGNORE_INDEX, alpha=0.3, beta=0.7, gamma=0.75)))
    for ours, theirs in pairs:
        assert ours(logits, target).item() == pytest.approx(theirs(logits, smp_target).item(), abs=1e-6), ours


def test_focal_exponent_is_applied_per_class_before_the_mean():
    logits, target = make_batch(4, batch=4, size=8, seed=3)
    ours = losses.FocalTverskyLoss(4)(logits, target).item()
    smp_style = smp.losses.TverskyLoss("multiclass", ignore_index=IGNORE_INDEX, alpha=0.3, beta=0.7, gamma=0.75)
    assert ours == pytest.approx(reference_region_loss("focal_tversky", logits, target), abs=1e-6)
    assert abs(ours - smp_style(logits, target).item()) > 1e-3  # the two documented orders really differ here
    plain = losses.TverskyLoss(4)(logits, target).item()  # SMP's order: (mean of 1 - TI) ** 0.75
    assert smp_style(logits, target).item() == pytest.approx(plain ** 0.75, abs=1e-6)


def test_cross_entropy_matches_torch_on_valid_pixels():
    logits, target = make_batch(5, seed=11)
    expected = F.cross_entropy(logits.double(), target, ignore_index=IGNORE_INDEX)
    assert losses.CrossEntropyLoss(5)(logits, target).item() == pytest.approx(expected.item(), abs=1e-6)
    logits, target = make_batch(1, seed=12)
    valid = target != IGNORE_INDEX
    expected = F.binary_cross_entropy_with_logits(logits[:, 0][valid].double(), target[valid].double())
    assert losses.CrossEntropyLoss(1)(logits, target).item() == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.parametrize("num_classes", [1, 4])
@pytest.mark.parametrize("name", ALL_LOSSES)
def test_ignored_pixels_count_nowhere(name, num_classes):
    logits, target = make_batch(num_classes, seed=5)
    module = losses.LOSSES[name](num_classes)
    ignored = (target == IGNORE_INDEX).unsqueeze(1).expand_as(logits)
    assert ignored.any()
    changed = torch.where(ignored, torch.randn_like(logits) * 50, logits).requires_grad_()
    value = module(changed, target)
    assert value.item() == pytest.approx(module(logits, target).item(), abs=1e-6)
    value.backward()
    assert torch.all(changed.grad[ignored] == 0) and changed.grad[~ignored].abs().sum() > 0


@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("name", ALL_LOSSES)
def test_degenerate_batches_are_finite(name, num_classes):
    module = losses.LOSSES[name](num_classes)
    logits = torch.randn(2, num_classes, 5, 5, requires_grad=True)
    all_ignored = torch.full((2, 5, 5), IGNORE_INDEX)
    value = module(logits, all_ignored)
    value.backward()
    assert value.item() == 0 and torch.all(logits.grad == 0)  # documented: nothing to learn from, loss 0
    empty = torch.zeros(2, 5, 5, dtype=torch.long)  # background only (no lesion / only class 0)
    logits.grad = None
    value = module(logits, empty)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    if name in REGION_LOSSES and num_classes == 1:
        assert value.item() == 0  # SMP's rule: a class with no target pixel in the batch contributes 0


@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("name", ALL_LOSSES)
def test_extreme_logits_are_finite_and_exact(name, num_classes):
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[:, 1:3, 1:3] = 1
    target[1, 0, 0] = num_classes - 1 if num_classes > 1 else 1
    one_hot = F.one_hot(target, max(num_classes, 2)).permute(0, 3, 1, 2).float()
    one_hot = one_hot[:, 1:] if num_classes == 1 else one_hot
    for sign, expected in ((1, 0.0), (-1, None)):  # right and totally wrong at +-1e4
        logits = ((2 * one_hot - 1) * 1e4 * sign).requires_grad_()
        value = losses.LOSSES[name](num_classes)(logits, target)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
        if sign == 1:  # focal Tversky clamps 1 - TI at eps before the power: eps ** 0.75
            assert value.item() == pytest.approx(1e-7 ** 0.75 if name == "focal_tversky" else 0.0, abs=1e-9)
        elif name in ("jaccard", "dice", "tversky", "focal_tversky"):
            assert value.item() == pytest.approx(1.0, abs=1e-6)
        else:
            # BCE of a 1e4 logit on the wrong side is 1e4; softmax CE: log(2 exp(2e4)) with two wrong classes at +1e4
            assert value.item() == pytest.approx(2e4 + math.log(2) if num_classes > 1 else 1e4, abs=1e-2)


GRADCHECK_CASES = [(name, aggregation) for name in REGION_LOSSES for aggregation in ("batch", "image")] + [("ce", None)]


@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("name, aggregation", GRADCHECK_CASES)
def test_gradcheck_float64(name, aggregation, num_classes):
    logits, target = make_batch(num_classes, batch=2, size=3, seed=21, dtype=torch.float64)
    target[0, 0, 0] = 1  # each image has the class-1 lesion, so the per-image terms are all active
    target[1, 0, 0] = 1
    options = {"aggregation": aggregation} if aggregation else {}
    module = losses.LOSSES[name](num_classes, **options)
    assert torch.autograd.gradcheck(lambda x: module(x, target), (logits.requires_grad_(),), fast_mode=True)


@pytest.mark.parametrize("num_classes", [1, 3])
def test_bf16_autocast_computes_in_float32(num_classes):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, num_classes, 3, padding=1)
    images = torch.randn(2, 2, 8, 8)
    _, target = make_batch(num_classes, batch=2, size=8, seed=9)
    criterion = build_loss("ce+focal_tversky" if num_classes > 1 else "jaccard+focal_tversky", num_classes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(images)
        value = criterion(logits, target)
    assert logits.dtype == torch.bfloat16 and value.dtype == torch.float32
    assert value.item() == pytest.approx(criterion(logits.detach().float(), target).item(), abs=1e-6)
    value.backward()
    assert torch.isfinite(conv.weight.grad).all()
    half = (logits.detach().float() * 1e3).half()  # fp16 logits near its range: still float32 inside
    _, terms = criterion.forward_with_terms(half, target)
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in terms.values())


def test_build_loss_thesis_specs_and_weights():
    cbis = build_loss("jaccard+focal_tversky", 1)
    assert [(w, n, type(m)) for w, n, m in cbis.terms] == [
        (1.0, "jaccard", losses.JaccardLoss), (1.0, "focal_tversky", losses.FocalTverskyLoss)]
    voc = build_loss("ce+focal_tversky", 21)
    assert [n for _, n, _ in voc.terms] == ["ce", "focal_tversky"] and all(m.num_classes == 21 for _, _, m in voc.terms)
    logits, target = make_batch(1, seed=2)
    weighted = build_loss(" 0.5*Dice + bce ", 1)
    expected = 0.5 * losses.DiceLoss(1)(logits, target) + losses.CrossEntropyLoss(1)(logits, target)
    total, parts = weighted.forward_with_terms(logits, target)
    assert total.item() == pytest.approx(expected.item(), abs=1e-6) and set(parts) == {"dice", "bce"}
    assert build_loss("ce", 1)(logits, target).item() == build_loss("bce", 1)(logits, target).item()


@pytest.mark.parametrize("spec, num_classes, message", [
    ("jacard+focal_tversky", 1, "known losses: jaccard, dice, tversky, focal_tversky, ce, bce"),
    ("bce+dice", 21, "use 'ce'"),
    ("half*dice", 1, "not a number"),
    ("-1*dice", 1, "must be > 0"),
    ("dice+2*dice", 1, "'dice' repeats 'dice'"),
    ("ce+bce", 1, "'bce' repeats 'ce', the same loss"),  # binary: both are BCE
    ("dice+", 1, "unknown loss ''"),
])
def test_build_loss_rejects_bad_specs(spec, num_classes, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("*", r"\*")):
        build_loss(spec, num_classes)


def test_bad_inputs_raise_clear_errors():
    loss = losses.JaccardLoss(1)
    with pytest.raises(ValueError, match=r"logits must have shape \(B, 1, H, W\)"):
        loss(torch.zeros(2, 2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target must have shape \(B, H, W\)"):
        loss(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer class labels"):
        loss(torch.zeros(2, 1, 4, 4), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match=r"labels \[2\] outside 0..1"):  # e.g. a mask that was never binarised
        loss(torch.zeros(1, 1, 2, 2), torch.tensor([[[0, 2], [1, 255]]]))
    with pytest.raises(ValueError, match="aggregation"):
        losses.DiceLoss(3, aggregation="pixel")


SHARDS = [slice(0, 3), slice(3, 5)]  # two processes, unequal shares of a batch of 5 (as a last batch can be)


def sharded_batch(num_classes: int, variant: str):
    """5 images (2 channels, 8x8) and labels; shard 0 has ~10% ignored pixels, shard 1 ~40%.

    "mixed": binary shard 1 has no lesion; multiclass shard 0 uses labels 0..11, shard 1 labels 8..19, 20 nowhere.
    "shard_ignored": as mixed, but shard 1 is all 255. "no_lesion": binary, no lesion in the whole batch.
    """
    gen = torch.Generator().manual_seed(num_classes)
    images = torch.randn(5, 2, 8, 8, generator=gen)
    if num_classes == 1:
        target = (torch.rand(5, 8, 8, generator=gen) < 0.3).long()
        target[SHARDS[1]] = 0
    else:
        target = torch.randint(0, 12, (5, 8, 8), generator=gen)
        target[SHARDS[1]] += 8
    ignore_rate = torch.tensor([0.1, 0.1, 0.1, 0.4, 0.4]).view(5, 1, 1)
    target[torch.rand(5, 8, 8, generator=gen) < ignore_rate] = IGNORE_INDEX
    if variant == "shard_ignored":
        target[SHARDS[1]] = IGNORE_INDEX
    elif variant == "no_lesion":
        target[target == 1] = 0
    return images, target


DDP_CASES = {  # name: (num_classes, batch variant, loss factory taking `distributed`)
    "cbis": (1, "mixed", lambda d: build_loss("jaccard+focal_tversky", 1, distributed=d)),
    "voc": (21, "mixed", lambda d: build_loss("ce+focal_tversky", 21, distributed=d)),
    "dice": (1, "mixed", lambda d: build_loss("dice", 1, distributed=d)),
    "tversky": (21, "mixed", lambda d: build_loss("tversky", 21, distributed=d)),
    "bce": (1, "mixed", lambda d: build_loss("bce", 1, distributed=d)),
    "dice_image": (1, "mixed", lambda d: losses.DiceLoss(1, aggregation="image", distributed=d)),
    "tversky_image": (21, "mixed", lambda d: losses.TverskyLoss(21, aggregation="image", distributed=d)),
    "focal_tversky_image": (1, "mixed", lambda d: losses.FocalTverskyLoss(1, aggregation="image", distributed=d)),
    "cbis_shard_ignored": (1, "shard_ignored", lambda d: build_loss("jaccard+focal_tversky+bce", 1, distributed=d)),
    "voc_shard_ignored": (21, "shard_ignored", lambda d: build_loss("ce+focal_tversky", 21, distributed=d)),
    "cbis_no_lesion": (1, "no_lesion", lambda d: build_loss("jaccard+focal_tversky+bce", 1, distributed=d)),
}


def loss_and_weight_gradient(criterion, images, target, num_classes):
    """(loss, gradient of a tiny conv producing the logits); the conv has the same weights in every process."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, num_classes, 3, padding=1)
    value = criterion(conv(images), target)
    value.backward()
    return value.detach(), torch.cat([conv.weight.grad.flatten(), conv.bias.grad])


def _losses_on_rank(rank, world_size, store_path, out_dir):
    torch.set_num_threads(1)  # forked child: keep clear of the parent's thread pool
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world_size)
    results = {}
    for name, (num_classes, variant, make) in DDP_CASES.items():
        images, target = sharded_batch(num_classes, variant)
        value, grad = loss_and_weight_gradient(make(True), images[SHARDS[rank]], target[SHARDS[rank]], num_classes)
        dist.all_reduce(grad)  # what DDP does to every parameter's gradient: the mean over processes
        results[name] = torch.cat([value.view(1), grad / world_size])
    images, target = sharded_batch(1, "mixed")
    torch.manual_seed(0)
    conv, criterion = torch.nn.Conv2d(2, 1, 3, padding=1), build_loss("jaccard+focal_tversky", 1, distributed=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(images[SHARDS[rank]])
        value = criterion(logits, target[SHARDS[rank]])
    value.backward()
    results["autocast"] = value.detach()
    results["autocast_float32_logits"] = criterion(logits.detach().float(), target[SHARDS[rank]]).detach()
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_distributed_losses_equal_one_process_on_the_whole_batch(tmp_path):
    run_processes(_losses_on_rank, (2, str(tmp_path / "store"), str(tmp_path)), 2)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    for name, (num_classes, variant, make) in DDP_CASES.items():
        images, target = sharded_batch(num_classes, variant)
        value, grad = loss_and_weight_gradient(make(False), images, target, num_classes)
        for result in ranks:  # every process: the loss and DDP-averaged gradient of one process on the whole batch
            assert torch.isfinite(result[name]).all(), name
            torch.testing.assert_close(result[name], torch.cat([value.view(1), grad]), rtol=1e-5, atol=1e-7,
                                       msg=lambda text: f"{name}: {text}")
        # the same shards without distributed=True optimise something else, so the comparison above can fail
        local = [loss_and_weight_gradient(make(False), images[s], target[s], num_classes) for s in SHARDS]
        assert max(abs(local_value - value).item() for local_value, _ in local) > 1e-3, name
        assert not torch.allclose((local[0][1] + local[1][1]) / 2, grad, rtol=1e-2, atol=1e-4), name
        if variant == "no_lesion":
            assert grad.abs().sum() > 0  # only BCE pushes, towards background
    for result in ranks:  # bf16 autocast: the counts stay float32, so the value is the float32 one
        assert result["autocast"].dtype == torch.float32
        assert result["autocast"].item() == pytest.approx(result["autocast_float32_logits"].item(), abs=1e-6)
        assert result["autocast"].item() == pytest.approx(ranks[0]["autocast"].item(), abs=0)


def test_distributed_without_process_group_says_what_to_do():
    logits, target = make_batch(1)
    with pytest.raises(RuntimeError, match="init_process_group"):
        build_loss("jaccard+focal_tversky", 1, distributed=True)(logits, target)
