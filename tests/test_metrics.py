"""Tests for the metrics in metrics.py: hand-computed masks, independent reference formulas, the 255 rule, the
empty-mask convention, batch-split/order invariance, and a real two-process gloo reduce;
lesion counts against scipy's labelling."""
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist

from helpers import run_processes
import losses
from metrics import (FROC_THRESHOLDS, IGNORE_INDEX, BinaryStats, ConfusionMatrix, LesionStats,
                     build_metrics, count_lesions, label_components, predict_labels,
                     sensitivity_at)
from scipy import ndimage

I = IGNORE_INDEX


def labels(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long)


def random_binary_set(num_images=11, size=12, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions and targets with lesions of very different sizes, two empty targets and a few 255 pixels."""
    gen = torch.Generator().manual_seed(seed)
    target = torch.zeros(num_images, size, size, dtype=torch.long)
    pred = torch.zeros_like(target)
    for i in range(num_images):
        r, c = torch.randint(0, size - 2, (2,), generator=gen).tolist()
        extent = 1 + i % 6
        target[i, r:r + extent, c:c + extent] = 1 if i not in (3, 8) else 0
        shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
        grow = torch.randint(0, 3, (1,), generator=gen).item()
        pred[i, max(r + shift[0], 0):r + shift[0] + extent + grow, max(c + shift[1], 0):c + shift[1] + extent] = 1
    target[torch.rand(target.shape, generator=gen) < 0.05] = IGNORE_INDEX
    return pred, target


def reference_binary(pred, target) -> dict:
    """Plain-Python restatement of the documented formulas, pixel by pixel."""
    per_image, totals = [], [0, 0, 0, 0]
    for p_img, t_img in zip(pred.tolist(), target.tolist()):
        tp = fp = fn = tn = 0
        for p, t in zip(sum(p_img, []), sum(t_img, [])):
            if t == IGNORE_INDEX:
                continue
            tp, fp = tp + (p == 1 and t == 1), fp + (p == 1 and t == 0)
            fn, tn = fn + (p == 0 and t == 1), tn + (p == 0 and t == 0)
        totals = [a + b for a, b in zip(totals, (tp, fp, fn, tn))]
        if tp + fp + fn + tn:
            per_image.append((1.0, 1.0, False) if tp + fp + fn == 0 else
                             (2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn), tp + fn > 0))
    with_lesion = [(d, i) for d, i, lesion in per_image if lesion]
    tp, fp, fn, tn = totals
    return {"dice_pooled": 2 * tp / (2 * tp + fp + fn), "iou_pooled": tp / (tp + fp + fn),
            "dice_mean_per_image": sum(d for d, _, _ in per_image) / len(per_image),
            "iou_mean_per_image": sum(i for _, i, _ in per_image) / len(per_image),
            "dice_mean_lesion_images": sum(d for d, _ in with_lesion) / len(with_lesion),
            "iou_mean_lesion_images": sum(i for _, i in with_lesion) / len(with_lesion),
            "sensitivity": tp / (tp + fn), "precision": tp / (tp + fp), "specificity": tn / (tn + fp)}


def summary_of(metrics, pred, target, batch_size, order=None):
    order = torch.arange(len(pred)) if order is None else order
    for start in range(0, len(pred), batch_size):
        index = order[start:start + batch_size]
        metrics.update(pred[index], target[index])
    return metrics.summary()


def test_the_ignore_label_is_the_losses_one():  # each file stands alone, so each names it; they must agree
    assert IGNORE_INDEX == losses.IGNORE_INDEX == 255


def test_predict_labels_thresholds_and_argmax():
    binary = torch.tensor([-1.0, 0.0, 1e-3, 5.0]).reshape(1, 1, 2, 2)
    assert predict_labels(binary).tolist() == [[[0, 0], [1, 1]]]  # logit 0 = probability 0.5 -> background
    multi = torch.tensor([[[1.0, 0.0]], [[2.0, -1.0]], [[0.5, 3.0]]]).unsqueeze(0)  # (1, 3, 1, 2)
    assert predict_labels(multi).tolist() == [[[1, 2]]] and predict_labels(multi).dtype == torch.int64
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        predict_labels(torch.zeros(2, 3))


def test_confusion_matrix_hand_computed():
    cm = ConfusionMatrix(4)  # class 3 appears nowhere
    cm.update(labels([[0, 1, 1], [2, 2, 0]]), labels([[0, 0, 1], [1, 2, I]]))
    assert cm.matrix.dtype == torch.int64
    assert cm.matrix.tolist() == [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]  # rows target, cols pred
    iou, dice = cm.iou(), cm.dice()
    assert iou[:3].tolist() == pytest.approx([1 / 2, 1 / 3, 1 / 2]) and math.isnan(iou[3])
    assert dice[:3].tolist() == pytest.approx([2 / 3, 1 / 2, 2 / 3]) and math.isnan(dice[3])
    assert cm.mean_iou() == pytest.approx(4 / 9)  # class 3 (in neither) left out
    summary = cm.summary()
    assert summary["pixel_accuracy"] == pytest.approx(3 / 5) and summary["images"] == 1
    assert summary["mean_dice"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    cm.update(labels([[3]]), labels([[0]]))  # class 3 predicted but never true: IoU 0, and it counts
    assert cm.iou()[3] == 0 and cm.mean_iou() == pytest.approx((1 / 3 + 1 / 3 + 1 / 2 + 0) / 4)


def test_confusion_matrix_all_ignored_and_errors():
    cm = ConfusionMatrix(3)
    cm.update(labels([[1, 2]]), labels([[I, I]]))
    assert cm.matrix.sum() == 0 and math.isnan(cm.mean_iou()) and math.isnan(cm.summary()["pixel_accuracy"])
    with pytest.raises(ValueError, match="num_classes >= 2"):
        ConfusionMatrix(1)
    with pytest.raises(ValueError, match=r"outside 0..2"):
        cm.update(labels([[0, 3]]), labels([[0, 1]]))
    with pytest.raises(ValueError, match=r"outside 0..2"):
        cm.update(labels([[0, 1]]), labels([[7, 1]]))
    with pytest.raises(ValueError, match="integer labels"):
        cm.update(torch.zeros(1, 1, 2), labels([[0, 1]]))
    with pytest.raises(ValueError, match="one shape"):
        cm.update(labels([[0, 1]]), labels([[0, 1, 1]]))


def test_binary_stats_hand_computed():
    stats = BinaryStats()
    target, pred = torch.zeros(5, 4, 4, dtype=torch.long), torch.zeros(5, 4, 4, dtype=torch.long)
    target[0, 0, :4] = 1  # 4 lesion pixels; predicted 3, 2 of them right: TP 2, FP 1, FN 2, TN 11
    pred[0, 0, :2], pred[0, 1, 0] = 1, 1
    pred[2, 3, 2:] = 1  # image 1: empty and empty; image 2: empty target, 2 false positives
    target[3], pred[3] = 1, 1  # image 3: full and full
    target[4], pred[4] = I, 1  # image 4: all ignored -- nothing to score, whatever was predicted
    stats.update(pred[:2], target[:2])
    stats.update(pred[2:], target[2:])
    assert stats.counts().tolist() == [[2, 1, 2, 11], [0, 0, 0, 16], [0, 2, 0, 14], [16, 0, 0, 0], [0, 0, 0, 0]]
    assert stats.counts().dtype == torch.int64
    dice, iou = stats.per_image()
    assert dice[:4].tolist() == pytest.approx([4 / 7, 1, 0, 1]) and iou[:4].tolist() == pytest.approx([2 / 5, 1, 0, 1])
    assert math.isnan(dice[4]) and math.isnan(iou[4])
    tp, fp, fn, tn = 18, 3, 2, 41
    assert stats.summary() == pytest.approx({
        "dice_pooled": 2 * tp / (2 * tp + fp + fn), "iou_pooled": tp / (tp + fp + fn),
        "dice_mean_per_image": (4 / 7 + 1 + 0 + 1) / 4, "iou_mean_per_image": (2 / 5 + 1 + 0 + 1) / 4,
        "dice_mean_lesion_images": (4 / 7 + 1) / 2, "iou_mean_lesion_images": (2 / 5 + 1) / 2,  # images 0 and 3
        "sensitivity": tp / (tp + fn), "precision": tp / (tp + fp), "specificity": tn / (tn + fp),
        "predicted_foreground_fraction": (tp + fp) / 64, "images": 5, "images_all_ignored": 1,
        "images_with_lesion": 2})


def test_binary_stats_empty_conventions():
    stats = BinaryStats()
    stats.update(torch.zeros(2, 3, 3, dtype=torch.long), torch.zeros(2, 3, 3, dtype=torch.long))
    summary = stats.summary()
    assert summary["dice_pooled"] == summary["iou_pooled"] == summary["dice_mean_per_image"] == 1.0
    assert math.isnan(summary["sensitivity"]) and math.isnan(summary["precision"])  # 0/0: undefined, not invented
    assert summary["specificity"] == 1.0 and summary["predicted_foreground_fraction"] == 0.0
    assert summary["images_with_lesion"] == 0 and math.isnan(summary["dice_mean_lesion_images"])  # none to average
    missed = BinaryStats()
    missed.update(torch.zeros(1, 3, 3, dtype=torch.long), torch.ones(1, 3, 3, dtype=torch.long))
    assert missed.summary()["dice_pooled"] == 0 and missed.summary()["sensitivity"] == 0
    assert missed.summary()["dice_mean_lesion_images"] == 0 and missed.summary()["images_with_lesion"] == 1
    nothing = BinaryStats().summary()
    assert nothing["images"] == 0 and math.isnan(nothing["dice_mean_per_image"])
    all_ignored = BinaryStats()  # no valid pixel: nothing scored, pooled or per image
    all_ignored.update(torch.ones(2, 3, 3, dtype=torch.long), torch.full((2, 3, 3), IGNORE_INDEX))
    assert all(math.isnan(all_ignored.summary()[k]) for k in ("dice_pooled", "iou_pooled", "dice_mean_per_image"))
    assert math.isnan(nothing["dice_pooled"])


def test_binary_stats_match_reference_and_confusion_matrix():
    pred, target = random_binary_set(seed=4)
    stats, cm = BinaryStats(), ConfusionMatrix(2)
    stats.update(pred, target)
    cm.update(pred, target)
    summary, expected = stats.summary(), reference_binary(pred, target)
    assert {k: summary[k] for k in expected} == pytest.approx(expected, abs=1e-12)
    assert summary["dice_pooled"] != pytest.approx(summary["dice_mean_per_image"], abs=1e-3)  # they differ here
    assert cm.iou()[1].item() == pytest.approx(summary["iou_pooled"], abs=1e-12)
    assert cm.dice()[1].item() == pytest.approx(summary["dice_pooled"], abs=1e-12)


def test_batch_size_and_order_change_no_metric():
    pred, target = random_binary_set(seed=1)
    gen = torch.Generator().manual_seed(3)
    orders = [None, torch.randperm(len(pred), generator=gen), torch.randperm(len(pred), generator=gen)]
    for make in (BinaryStats, lambda: ConfusionMatrix(2)):
        reference = summary_of(make(), pred, target, batch_size=len(pred))
        for batch_size in (1, 3, 4):
            for order in orders:
                assert summary_of(make(), pred, target, batch_size, order) == reference  # exactly equal
    # the naive mean of per-batch Dice differs on this set, so the equality above has teeth
    pooled = summary_of(BinaryStats(), pred, target, batch_size=len(pred))["dice_pooled"]
    batch_dice = [summary_of(BinaryStats(), pred[i:i + 4], target[i:i + 4], 4)["dice_pooled"] for i in (0, 4, 8)]
    assert abs(sum(batch_dice) / 3 - pooled) > 1e-3


def test_reduce_without_distributed_is_a_no_op_and_runs_once():
    pred, target = random_binary_set(num_images=3)
    for metrics in (BinaryStats(), ConfusionMatrix(2)):
        metrics.update(pred, target)
        before = metrics.summary()
        metrics.reduce()
        assert metrics.summary() == before
        with pytest.raises(RuntimeError, match="twice"):
            metrics.reduce()
        with pytest.raises(RuntimeError, match="after reduce"):
            metrics.update(pred, target)


def test_build_metrics_maps_logits_to_label_space():
    assert isinstance(build_metrics(1), BinaryStats)
    cm = build_metrics(21)
    assert isinstance(cm, ConfusionMatrix) and cm.num_classes == 21
    with pytest.raises(ValueError):
        build_metrics(0)


# ---------------------------------------------------------------------------------------------
# Lesions: connected components, found lesions, false-positive marks, FROC

def random_logits(pred: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Logits (B, 1, H, W) that give `pred` at 0.5, graded so that the thresholds differ."""
    gen = torch.Generator().manual_seed(seed)
    size = torch.rand(pred.shape, generator=gen) * 3
    return torch.where(pred == 1, 0.01 + size, -0.01 - size)[:, None]


def scipy_count(marked: np.ndarray, target: np.ndarray, min_iou: float) -> tuple:
    """The documented rule restated with scipy's 8-connected labelling and pixel masks."""
    eight = np.ones((3, 3))
    lesions, num_lesions = ndimage.label(target == 1, structure=eight)
    marks, num_marks = ndimage.label(marked & (target != IGNORE_INDEX), structure=eight)
    iou = np.zeros((num_lesions + 1, num_marks + 1))
    for i in range(1, num_lesions + 1):
        for j in range(1, num_marks + 1):
            lesion, mark = lesions == i, marks == j
            iou[i, j] = (lesion & mark).sum() / (lesion | mark).sum()
    hit = iou[1:, 1:] >= min_iou
    return num_lesions, int(hit.any(axis=1).sum()), num_marks, int((~hit.any(axis=0)).sum())


def test_label_components_equals_scipy_labels_on_random_masks():
    rng = np.random.default_rng(0)
    for shape, density in (((1, 1), 0.5), ((1, 40), 0.5), ((40, 1), 0.5), ((17, 23), 0.2),
                           ((64, 64), 0.45), ((64, 70), 0.6), ((33, 31), 0.8), ((256, 256), 0.5)):
        mask = rng.random(shape) < density
        ours, count = label_components(mask)
        reference, reference_count = ndimage.label(mask, structure=np.ones((3, 3)))
        assert count == reference_count and np.array_equal(ours, reference), (shape, density)
    assert label_components(np.zeros((5, 4), bool))[1] == 0
    snake = np.zeros((9, 9), bool)  # one component that turns back on itself
    snake[::2, 1:8], snake[1::4, 7], snake[3::4, 1] = True, True, True
    labels, count = label_components(snake)
    assert count == 1 and np.array_equal(labels, snake.astype(np.int64))


def test_count_lesions_on_hand_made_masks():
    target = np.zeros((20, 20), np.int64)
    target[2:6, 2:6], target[12:16, 12:16] = 1, 1  # two lesions of 16 pixels
    marked = np.zeros((20, 20), bool)
    marked[2:6, 2:5] = True  # IoU 12/16 with the first lesion; the second is missed
    assert count_lesions(marked, target) == (2, 1, 1, 0)
    normal = np.zeros((20, 20), np.int64)
    assert count_lesions(marked, normal) == (0, 0, 1, 1)  # a mark on a normal image: an FP
    bridge = np.zeros((20, 20), bool)
    bridge[2:16, 2:16] = True  # touches both lesions, IoU 16/196 each: finds neither, an FP
    assert count_lesions(bridge, target) == (2, 0, 1, 1)
    pair = np.zeros((20, 20), np.int64)
    pair[2:6, 2:6], pair[2:6, 8:12] = 1, 1  # two lesions two columns apart
    bridge[:] = False
    bridge[2:6, 2:12] = True  # IoU 16/40 with each
    assert count_lesions(bridge, pair) == (2, 2, 1, 0)  # one mark finds both lesions
    split = np.zeros((20, 20), bool)
    split[2:6, 2:4], split[2:6, 5:6] = True, True  # one lesion in two marks, IoU 8/16 and 4/16
    assert count_lesions(split, target) == (2, 1, 2, 0)  # found once, no false positive
    split[2:3, 5:6] = False  # the small part now has IoU 3/16 < 0.2: a false positive
    assert count_lesions(split, target) == (2, 1, 2, 1)
    assert count_lesions(split, target, min_iou=0.1) == (2, 1, 2, 0)  # the rule is a parameter
    inside, five = np.zeros((20, 20), bool), np.zeros((20, 20), np.int64)
    inside[12:14, 12:14], five[12:16, 12:17] = True, 1  # IoU 4/20 = 0.2 exactly: found
    assert count_lesions(inside, five) == (1, 1, 1, 0)
    diagonal = np.zeros((20, 20), bool)
    diagonal[6, 6] = diagonal[7, 7] = True  # 8-connected: one mark at the first lesion's corner
    assert count_lesions(diagonal, target) == (2, 0, 1, 1)
    ignored = target.copy()
    ignored[2:6, 2:6] = IGNORE_INDEX  # ignored pixels are no lesion, and no mark lies on them
    assert count_lesions(marked, ignored) == (1, 0, 0, 0)


def test_count_lesions_agree_with_scipy_labelling():
    rng = np.random.default_rng(1)
    for trial in range(40):
        size = (int(rng.integers(8, 30)), int(rng.integers(8, 30)))
        target = (rng.random(size) < rng.uniform(0.1, 0.6)).astype(np.int64)
        target[rng.random(size) < 0.05] = IGNORE_INDEX
        near_truth = np.where(rng.random(size) < 0.8, target == 1, rng.random(size) < 0.3)
        for min_iou in (0.2, 0.5):
            ours = count_lesions(near_truth, target, min_iou)
            assert ours == scipy_count(near_truth, target, min_iou), trial


def test_froc_of_a_perfect_prediction_is_sensitivity_1_at_0_false_positives():
    pred, target = random_binary_set(seed=2)
    target[target == IGNORE_INDEX] = 0
    stats = LesionStats()
    stats.update(torch.where(target == 1, 20.0, -20.0)[:, None], target)
    froc, summary = stats.froc(), stats.summary()
    assert froc["thresholds"] == list(FROC_THRESHOLDS) and 0.5 in froc["thresholds"]
    assert set(froc["sensitivity"]) == {1.0} and set(froc["false_positives_per_image"]) == {0.0}
    assert summary["lesion_sensitivity"] == summary["lesion_sensitivity_at_0.5_fp_per_image"] == 1
    assert summary["lesions"] == summary["lesions_found"] == summary["marks"] == 9
    assert summary["normal_images"] == 2  # images 3 and 8
    assert summary["false_positives_per_normal_image"] == 0


def test_a_score_just_above_a_froc_threshold_marks_at_float32_precision():
    """p > t is logit > logit(t): a float32 logit between logit(t) and the float32 that logit(0.05) rounds up to
    (sigmoid above 0.05) still marks its lesion at t = 0.05."""
    cut = math.log(0.05 / 0.95)
    score = np.float32(cut)
    assert float(score) > cut  # the float32 nearest logit(0.05) lies above it
    logits = torch.full((1, 1, 4, 4), -20.0)
    logits[0, 0, 1:3, 1:3] = float(score)
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 1:3, 1:3] = 1
    stats = LesionStats(thresholds=(0.05, 0.5))
    stats.update(logits, target)
    assert stats.counts()[0, 2:5].tolist() == [1, 1, 0]  # at 0.05: found, one mark, no false positive


def test_lesion_stats_counts_rates_and_froc_by_hand():
    target = torch.zeros(3, 10, 10, dtype=torch.long)
    target[0, 1:4, 1:4], target[0, 6:9, 6:9] = 1, 1  # image 0: two lesions; image 1: normal
    target[2] = IGNORE_INDEX  # image 2: nothing to score
    logits = torch.full((3, 1, 10, 10), -9.0)
    logits[0, 0, 1:4, 1:4] = 2.0  # probability 0.88: found at thresholds up to 0.85
    logits[0, 0, 6:9, 6:9] = -1.0  # probability 0.27: found at thresholds 0.01-0.25
    logits[1, 0, 4:6, 4:6] = 0.5  # probability 0.62: a false positive up to 0.6
    logits[2] = 9.0  # on ignored pixels: no mark
    stats = LesionStats()
    stats.update(logits[:2], target[:2])
    stats.update(logits[2:], target[2:])
    summary = stats.summary()
    counted = ("lesions", "lesions_found", "marks", "false_positive_marks", "normal_images")
    assert [summary[key] for key in counted] == [2, 1, 2, 1, 1]
    assert summary["lesion_sensitivity"] == 0.5
    assert summary["false_positives_per_image"] == 0.5  # over the 2 scored images, not the 255 one
    assert summary["false_positives_per_normal_image"] == 1.0
    froc = stats.froc()
    at = dict(zip(froc["thresholds"], zip(froc["sensitivity"], froc["false_positives_per_image"])))
    assert at[0.25] == (1.0, 0.5) and at[0.3] == (0.5, 0.5) and at[0.65] == (0.5, 0.0)
    assert at[0.9] == (0.0, 0.0)
    # the best sensitivity at <= x false positives per image, 0 where no threshold has so few
    assert summary["lesion_sensitivity_at_0.5_fp_per_image"] == 1
    curve = {"sensitivity": [1.0, 0.5], "false_positives_per_image": [3.0, 0.6]}
    assert sensitivity_at(curve, 0.5) == 0.0 and sensitivity_at(curve, 1) == 0.5
    assert stats.counts().tolist()[2] == [0, 0] + [0] * 3 * len(FROC_THRESHOLDS)
    nothing = LesionStats().summary()
    assert math.isnan(nothing["lesion_sensitivity"])
    assert math.isnan(nothing["false_positives_per_image"])
    assert math.isnan(nothing["lesion_sensitivity_at_1_fp_per_image"])


def test_lesion_stats_refuses_wrong_inputs_and_a_second_reduce():
    stats = LesionStats()
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        stats.update(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="0, 1 or 255"):
        stats.update(torch.zeros(1, 1, 4, 4), torch.full((1, 4, 4), 2))
    with pytest.raises(ValueError, match="hold 0.5"):
        LesionStats(thresholds=(0.1, 0.9))
    stats.update(torch.zeros(0, 1, 4, 4), torch.zeros(0, 4, 4, dtype=torch.long))  # an empty batch adds nothing
    assert stats.counts().shape[0] == 0
    stats.reduce()
    with pytest.raises(RuntimeError, match="twice"):
        stats.reduce()
    with pytest.raises(RuntimeError, match="after reduce"):
        stats.update(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))


def _evaluate_on_rank(rank, world_size, store_path, out_dir, pieces):
    torch.set_num_threads(1)  # forked child: keep clear of the parent's thread pool
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world_size)
    pred, target = random_binary_set(seed=1)
    logits = random_logits(pred)
    stats, cm, lesions = BinaryStats(), ConfusionMatrix(2), LesionStats()
    for index in pieces[rank]:  # unequal shares, one rank with none at all
        stats.update(pred[index:index + 1], target[index:index + 1])
        cm.update(pred[index:index + 1], target[index:index + 1])
        lesions.update(logits[index:index + 1], target[index:index + 1])
    stats.reduce()
    cm.reduce()
    lesions.reduce()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"binary": stats.summary(), "cm": cm.summary(), "counts": stats.counts().tolist(),
                   "lesions": lesions.summary(), "froc": lesions.froc(),
                   "lesion_counts": lesions.counts().tolist()}, f)
    dist.destroy_process_group()


def test_reduce_across_processes_equals_one_process(tmp_path):
    pieces = [[0, 1, 2, 3, 4, 5, 6, 7], [8, 9, 10], []]
    run_processes(_evaluate_on_rank, (3, str(tmp_path / "store"), str(tmp_path), pieces), 3)
    pred, target = random_binary_set(seed=1)
    single = BinaryStats()
    single.update(pred, target)
    single_cm = ConfusionMatrix(2)
    single_cm.update(pred, target)
    single_lesions = LesionStats()
    single_lesions.update(random_logits(pred), target)
    lesions = json.loads(json.dumps(single_lesions.summary()))  # NaN as JSON writes and reads it
    assert single_lesions.counts()[:, 1].sum() > 0 and single_lesions.counts()[:, 4::3].sum() > 0
    for rank in range(3):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["binary"] == single.summary() and result["cm"] == single_cm.summary()
        assert result["counts"] == single.counts().tolist()  # every image once, in rank order
        assert result["lesion_counts"] == single_lesions.counts().tolist()
        assert result["froc"] == single_lesions.froc()
        assert json.dumps(result["lesions"]) == json.dumps(lesions)
