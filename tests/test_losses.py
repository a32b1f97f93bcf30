"""Tests for losses.py: hand-computed values, an independent reference formula, SMP as an oracle, the 255 rule,
degenerate batches, extreme logits, gradcheck in float64, bf16 autocast, and build_loss parsing."""
import math

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

import losses
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
    ("dice+2*dice", 1, "appears twice"),
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
