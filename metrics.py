"""Metrics of Tables 2-4 (Dice and IoU on CBIS-DDSM, mIoU on VOC) and lesion counts (FROC), exact
over the whole set: integer counts per image, gathered across processes, then scores. An image with
no lesion and no prediction scores 1; a score whose denominator is 0 is NaN; target pixels of 255
count nowhere. Which Dice each number is: docs/metrics.md.

    m = build_metrics(1); m.update(predict_labels(model(x)), y); m.reduce(); print(m.summary())
"""
import math

import numpy as np
import torch
import torch.distributed as dist

IGNORE_INDEX = 255  # target label that counts nowhere: VOC's, the same as losses.IGNORE_INDEX


def predict_labels(logits: torch.Tensor, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Logits (B, C, H, W) -> labels (B, H, W): logit > 0 for C == 1, argmax for C > 1.
    dtype uint8 takes an eighth of int64's memory (huge scans)."""
    if logits.dim() != 4:
        raise ValueError(f"logits must have shape (B, C, H, W), got {tuple(logits.shape)}")
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).to(dtype)  # a logit of exactly 0 (probability 0.5) is background
    return logits.argmax(dim=1).to(dtype)


def _check_labels(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> None:
    if pred.dim() != 3 or pred.shape != target.shape:
        raise ValueError(f"pred and target must be label maps of one shape (B, H, W), got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    for name, labels in (("pred", pred), ("target", target)):
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer labels (int64), got dtype {labels.dtype}; "
                             f"use predict_labels(logits) for model outputs")
    valid = target != IGNORE_INDEX
    out_of_range = ((target < 0) | (target >= num_classes)
                    | (pred < 0) | (pred >= num_classes)) & valid
    # Checked where it costs no host sync (on a GPU the datasets checked every mask as they read it)
    if target.device.type == "cpu" and bool(out_of_range.any()):
        raise ValueError(f"labels outside 0..{num_classes - 1} (and {IGNORE_INDEX} = ignore in the "
                         f"target) for num_classes={num_classes}; binary segmentation has 2 label "
                         f"classes (background, lesion)")


def _for_collective(tensor: torch.Tensor) -> torch.Tensor:
    # NCCL only moves CUDA tensors; a rank that saw no batch still holds its CPU zeros
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        return tensor.to(torch.device("cuda", torch.cuda.current_device()))
    return tensor


def _all_gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Every rank's (N_rank, K) rows in rank order (ranks may hold different N)."""
    world = dist.get_world_size()
    rows = _for_collective(rows)
    count = torch.tensor([rows.shape[0]], device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded = rows.new_zeros((longest, rows.shape[1]))  # all_gather needs equal shapes on every rank
    padded[: rows.shape[0]] = rows
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(c.item())] for g, c in zip(gathered, counts)])


def _ratio(numerator: float, denominator: float, *, if_empty: float = math.nan) -> float:
    return numerator / denominator if denominator > 0 else if_empty


class ConfusionMatrix:
    """Exact int64 pixel counts over a set; rows = target, columns = prediction."""

    def __init__(self, num_classes: int):
        if num_classes < 2:
            raise ValueError(f"ConfusionMatrix counts label classes and needs num_classes >= 2, "
                             f"got {num_classes}; a 1-logit binary model has 2 (background, "
                             f"lesion)")
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.num_images = 0
        self._reduced = False

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Adds a batch of int64 label maps (B, H, W)."""
        if self._reduced:
            raise RuntimeError("ConfusionMatrix.update() after reduce(): start a new "
                               "ConfusionMatrix per evaluation")
        _check_labels(pred, target, self.num_classes)
        self.matrix = self.matrix.to(pred.device)
        valid = target != IGNORE_INDEX
        index = target[valid].long() * self.num_classes + pred[valid].long()  # (n_valid,) cells
        counts = torch.bincount(index, minlength=self.num_classes ** 2)
        self.matrix += counts.reshape(self.num_classes, self.num_classes)
        self.num_images += pred.shape[0]

    def reduce(self) -> None:
        """Sums the counts over all processes; call once, after the last update."""
        if self._reduced:
            raise RuntimeError("ConfusionMatrix.reduce() called twice: it would count every pixel "
                               "again")
        self._reduced = True
        if dist.is_available() and dist.is_initialized():
            flat = _for_collective(torch.cat([self.matrix.flatten(),
                                              self.matrix.new_tensor([self.num_images])]))
            dist.all_reduce(flat)
            self.matrix = flat[:-1].reshape(self.num_classes, self.num_classes)
            self.num_images = int(flat[-1].item())

    def _tp_fp_fn(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        counts = self.matrix.cpu().double()
        tp = counts.diagonal()
        return tp, counts.sum(0) - tp, counts.sum(1) - tp  # columns: predicted, rows: target

    def iou(self) -> torch.Tensor:
        """Per-class IoU; NaN for a class in neither targets nor predictions."""
        tp, fp, fn = self._tp_fp_fn()
        return tp / (tp + fp + fn)  # 0/0 -> NaN on purpose

    def dice(self) -> torch.Tensor:
        """Per-class Dice; NaN for a class in neither targets nor predictions."""
        tp, fp, fn = self._tp_fp_fn()
        return 2 * tp / (2 * tp + fp + fn)

    def mean_iou(self) -> float:
        """Mean IoU over the classes in the targets or the predictions."""
        iou = self.iou()
        return float(iou.nanmean()) if not iou.isnan().all() else math.nan

    def pixel_accuracy(self) -> float:
        counts = self.matrix.cpu()
        return _ratio(float(counts.diagonal().sum()), float(counts.sum()))

    def summary(self) -> dict:
        """mean_iou, mean_dice, pixel_accuracy, images and iou_<c> per class."""
        dice = self.dice()
        result = {"mean_iou": self.mean_iou(),
                  "mean_dice": float(dice.nanmean()) if not dice.isnan().all() else math.nan,
                  "pixel_accuracy": self.pixel_accuracy(), "images": float(self.num_images)}
        result.update({f"iou_{c}": float(v) for c, v in enumerate(self.iou())})
        return result


class BinaryStats:
    """Per-image TP/FP/FN/TN of the lesion (label 1); Dice/IoU pooled and as means over images."""

    def __init__(self):
        self.num_classes = 2
        self._batches: list[torch.Tensor] = []  # (B, 4) int64 per update: TP, FP, FN, TN per image
        self._reduced = False

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Adds a batch of 0/1 label maps (B, H, W)."""
        if self._reduced:
            raise RuntimeError("BinaryStats.update() after reduce(): start a new BinaryStats per "
                               "evaluation")
        _check_labels(pred, target, 2)
        valid = target != IGNORE_INDEX
        pred_fg, target_fg = (pred == 1) & valid, (target == 1) & valid
        dims = (1, 2)  # (B, H, W) -> (B,): one count per image
        tp = (pred_fg & target_fg).sum(dims)
        fp = (pred_fg & ~target_fg).sum(dims)
        fn = (~pred_fg & target_fg).sum(dims)
        tn = valid.sum(dims) - tp - fp - fn
        self._batches.append(torch.stack([tp, fp, fn, tn], dim=1))  # (B, 4)

    def counts(self) -> torch.Tensor:
        """(N, 4) int64: TP, FP, FN, TN per image, in update order (rank order after reduce)."""
        if not self._batches:
            return torch.zeros(0, 4, dtype=torch.int64)
        if len(self._batches) > 1:
            self._batches = [torch.cat(self._batches)]
        return self._batches[0]

    def reduce(self) -> None:
        """Gathers all processes' counts in rank order, once; each image on exactly one rank."""
        if self._reduced:
            raise RuntimeError("BinaryStats.reduce() called twice: it would count every image "
                               "again")
        self._reduced = True
        if dist.is_available() and dist.is_initialized():
            self._batches = [_all_gather_rows(self.counts())]

    def per_image(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image Dice and IoU: 1 if target and prediction are empty, NaN if all is 255."""
        tp, fp, fn, tn = self.counts().cpu().double().unbind(1)
        empty = (tp + fp + fn) == 0
        no_valid_pixel = (tp + fp + fn + tn) == 0
        dice = torch.where(empty, 1.0, 2 * tp / (2 * tp + fp + fn))  # empty images' 0/0 discarded
        iou = torch.where(empty, 1.0, tp / (tp + fp + fn))
        return (torch.where(no_valid_pixel, math.nan, dice),
                torch.where(no_valid_pixel, math.nan, iou))

    def summary(self) -> dict:
        """Dice/IoU pooled and as means, sensitivity, precision, specificity, counts."""
        counts = self.counts().cpu()
        tp, fp, fn, tn = counts.sum(0).tolist()  # pooled over the set (zeros for an empty set)
        dice, iou = self.per_image()
        scored = ~dice.isnan()
        with_lesion = scored & (counts[:, 0] + counts[:, 2] > 0)  # TP + FN > 0: a lesion in target
        # math.fsum is exactly rounded, so the means do not depend on the order of the images
        return {
            # no lesion pixel in target or prediction: 1, as for an image; no valid pixel: NaN
            "dice_pooled": _ratio(2 * tp, 2 * tp + fp + fn, if_empty=1.0 if tn else math.nan),
            "iou_pooled": _ratio(tp, tp + fp + fn, if_empty=1.0 if tn else math.nan),
            "dice_mean_per_image": _ratio(math.fsum(dice[scored].tolist()), int(scored.sum())),
            "iou_mean_per_image": _ratio(math.fsum(iou[scored].tolist()), int(scored.sum())),
            "dice_mean_lesion_images": _ratio(math.fsum(dice[with_lesion].tolist()),
                                              int(with_lesion.sum())),
            "iou_mean_lesion_images": _ratio(math.fsum(iou[with_lesion].tolist()),
                                             int(with_lesion.sum())),
            "sensitivity": _ratio(tp, tp + fn),
            "precision": _ratio(tp, tp + fp),
            "specificity": _ratio(tn, tn + fp),
            "predicted_foreground_fraction": _ratio(tp + fp, tp + fp + fn + tn),
            "images": float(len(counts)),
            "images_all_ignored": float(len(counts) - int(scored.sum())),
            "images_with_lesion": float(with_lesion.sum()),
        }


# ---------------------------------------------------- lesions: connected components, matching, FROC

MIN_IOU = 0.2  # a mark finds a lesion when their IoU reaches this
# lesion probabilities swept for the FROC; 0.5 gives predict_labels' marks
FROC_THRESHOLDS = (0.01, *(round(0.05 * k, 2) for k in range(1, 20)), 0.99)
FROC_RATES = (0.5, 1, 2)  # false positives per image at which the FROC's sensitivity is reported


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row runs of a bool mask: flat starts and (exclusive) ends, in the mask padded to W + 2."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), np.int8)  # no run crosses a row
    padded[:, 1:-1] = mask
    steps = np.diff(padded.ravel())
    return np.flatnonzero(steps == 1) + 1, np.flatnonzero(steps == -1) + 1


def _ranges(first: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(i, first[i] + k) for every i and k < count[i], concatenated: a ragged gather, no loop."""
    owner = np.repeat(np.arange(len(first)), count)
    return owner, np.repeat(first - (np.cumsum(count) - count), count) + np.arange(count.sum())


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(run starts, ends, labels, n): 8-connected components by union-find over row runs."""
    starts, ends = _runs(mask)
    up = mask.shape[1] + 2  # one row up in flat indices
    # run b touches the runs of the row above that meet [start_b - 1, end_b] (diagonals count);
    # a row's runs are sorted and disjoint, so these are the range [lo, hi)
    lo = np.searchsorted(ends, starts - up, "left")
    hi = np.searchsorted(starts, ends - up, "right")
    below, above = _ranges(lo, np.maximum(hi - lo, 0))
    parent = np.arange(len(starts))  # parent <= run: a component's root is its first run
    while above.size:
        root_above, root_below = parent[above], parent[below]
        apart = root_above != root_below  # edges inside one component are done for good
        if not apart.any():
            break
        above, below = above[apart], below[apart]
        root_above, root_below = root_above[apart], root_below[apart]
        higher, lower = np.maximum(root_above, root_below), np.minimum(root_above, root_below)
        np.minimum.at(parent, higher, lower)  # each root joins the smallest root it touches
        while True:  # pointer jumping until every run points at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    is_root = parent == np.arange(len(starts))
    # labels 1..n in raster order of each component's first pixel, as scipy.ndimage.label's
    return starts, ends, np.cumsum(is_root)[parent], int(is_root.sum())


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """(labels (H, W) int64, n): 8-connected components, 1..n in raster order (as scipy's)."""
    starts, ends, run_labels, count = _components(mask)
    flat = np.zeros(mask.shape[0] * (mask.shape[1] + 2), np.int64)
    flat[starts], flat[ends] = run_labels, -run_labels  # the cumsum holds a label along its run
    return np.cumsum(flat).reshape(mask.shape[0], -1)[:, 1:-1], count


def _match(lesions: tuple, marks: tuple, min_iou: float) -> tuple[int, int]:
    """(lesions found, false-positive marks) of two _components results of one image."""
    lesion_starts, lesion_ends, lesion_labels, num_lesions = lesions
    mark_starts, mark_ends, mark_labels, num_marks = marks
    if num_lesions == 0 or num_marks == 0:
        return 0, num_marks
    lo = np.searchsorted(lesion_ends, mark_starts, "right")  # the lesion runs a mark run overlaps
    hi = np.searchsorted(lesion_starts, mark_ends, "left")
    mark_run, lesion_run = _ranges(lo, np.maximum(hi - lo, 0))
    shared = (np.minimum(lesion_ends[lesion_run], mark_ends[mark_run])
              - np.maximum(lesion_starts[lesion_run], mark_starts[mark_run]))
    code = lesion_labels[lesion_run] * (num_marks + 1) + mark_labels[mark_run]
    pairs, index = np.unique(code, return_inverse=True)  # the (lesion, mark) pairs that meet
    intersection = np.bincount(index, weights=shared)
    lesion, mark = pairs // (num_marks + 1), pairs % (num_marks + 1)
    lesion_area = np.bincount(lesion_labels, weights=lesion_ends - lesion_starts)
    mark_area = np.bincount(mark_labels, weights=mark_ends - mark_starts)
    hit = intersection / (lesion_area[lesion] + mark_area[mark] - intersection) >= min_iou
    return len(np.unique(lesion[hit])), num_marks - len(np.unique(mark[hit]))


def count_lesions(marked: np.ndarray, target: np.ndarray,
                  min_iou: float = MIN_IOU) -> tuple[int, int, int, int]:
    """(lesions, found, marks, false-positive marks) of one image."""
    lesions, marks = _components(target == 1), _components(marked & (target != IGNORE_INDEX))
    found, false_positives = _match(lesions, marks, min_iou)
    return lesions[3], found, marks[3], false_positives


def _float32_at_or_below(value: float) -> np.float32:
    rounded = np.float32(value)
    return np.nextafter(rounded, np.float32(-np.inf)) if float(rounded) > value else rounded


class LesionStats:
    """Per-image lesion counts at each FROC threshold; a mark of IoU >= min_iou finds a lesion."""

    def __init__(self, min_iou: float = MIN_IOU, thresholds: tuple = FROC_THRESHOLDS):
        if 0.5 not in thresholds or not all(0 < t < 1 for t in thresholds):
            raise ValueError(f"thresholds must lie in (0, 1) and hold 0.5, got {thresholds}")
        self.min_iou, self.thresholds = min_iou, tuple(sorted(thresholds))
        # p > t <=> logit > logit(t); scores are float32, so each cut is the float32 at or below
        # logit(t): a cut rounded up would miss a score between the two
        self._cuts = [_float32_at_or_below(math.log(t / (1 - t))) for t in self.thresholds]
        self._batches: list[torch.Tensor] = []  # (B, 2 + 3T) int64 per update: see counts()
        self._reduced = False

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Adds a batch: lesion logits (B, 1, H, W), labels (B, H, W)."""
        if self._reduced:
            raise RuntimeError("LesionStats.update() after reduce(): start a new LesionStats")
        if logits.dim() != 4 or logits.shape[1] != 1 or logits[:, 0].shape != target.shape:
            raise ValueError(f"logits must be (B, 1, H, W) and target (B, H, W), got "
                             f"{tuple(logits.shape)} and {tuple(target.shape)}")
        scores, labels = logits[:, 0].float().cpu().numpy(), target.cpu().numpy()  # host sync
        if ((labels != 0) & (labels != 1) & (labels != IGNORE_INDEX)).any():
            raise ValueError(f"target labels must be 0, 1 or {IGNORE_INDEX} (ignore)")
        if not len(labels):
            return  # an empty batch adds no row (a reshape of nothing to (0, -1) fails)
        rows = []
        for score, label in zip(scores, labels):
            valid = label != IGNORE_INDEX
            lesions = _components(label == 1)
            row, top = [int(valid.any()), lesions[3]], score[valid].max(initial=-math.inf)
            for cut in self._cuts:
                if cut >= top:  # no pixel above this threshold: no mark
                    row += [0, 0, 0]
                    continue
                marks = _components((score > cut) & valid)
                found, false_positives = _match(lesions, marks, self.min_iou)
                row += [found, marks[3], false_positives]
            rows.append(row)
        self._batches.append(torch.tensor(rows, dtype=torch.int64).reshape(len(rows), -1))

    def counts(self) -> torch.Tensor:
        """(N, 2 + 3T) int64: scored (not all 255), lesions, then per threshold found, marks, FP."""
        if not self._batches:
            return torch.zeros(0, 2 + 3 * len(self.thresholds), dtype=torch.int64)
        if len(self._batches) > 1:
            self._batches = [torch.cat(self._batches)]
        return self._batches[0]

    def reduce(self) -> None:
        """Gathers every process's rows in rank order, as BinaryStats.reduce."""
        if self._reduced:
            raise RuntimeError("LesionStats.reduce() called twice: it would count images again")
        self._reduced = True
        if dist.is_available() and dist.is_initialized():
            self._batches = [_all_gather_rows(self.counts())]

    def _per_threshold(self) -> torch.Tensor:
        rows = self.counts().cpu()
        return rows[:, 2:].reshape(len(rows), len(self.thresholds), 3)  # (N, T, found/marks/FP)

    def froc(self) -> dict:
        """Sensitivity and false positives per image at each threshold, as lists."""
        found, _, false_positives = self._per_threshold().sum(0).double().unbind(1)  # (T,) each
        lesions, images = float(self.counts()[:, 1].sum()), float(self.counts()[:, 0].sum())
        return {"thresholds": list(self.thresholds),
                "sensitivity": [_ratio(f, lesions) for f in found.tolist()],
                "false_positives_per_image": [_ratio(f, images) for f in false_positives.tolist()]}

    def summary(self) -> dict:
        """Counts and rates at threshold 0.5 (predict_labels' marks), and the FROC's."""
        rows = self.counts().cpu()
        scored, lesions = rows[:, 0] > 0, rows[:, 1]
        at_half = self._per_threshold()[:, self.thresholds.index(0.5)]  # (N, 3)
        found, marks, false_positives = at_half.unbind(1)
        normal = scored & (lesions == 0)
        result = {
            "lesions": float(lesions.sum()), "lesions_found": float(found.sum()),
            "lesion_sensitivity": _ratio(float(found.sum()), float(lesions.sum())),
            "marks": float(marks.sum()), "false_positive_marks": float(false_positives.sum()),
            "false_positives_per_image": _ratio(float(false_positives.sum()), float(scored.sum())),
            "normal_images": float(normal.sum()),
            "false_positives_per_normal_image": _ratio(float(false_positives[normal].sum()),
                                                       float(normal.sum())),
            "lesion_min_iou": self.min_iou}
        froc = self.froc()
        for rate in FROC_RATES:
            result[f"lesion_sensitivity_at_{rate:g}_fp_per_image"] = sensitivity_at(froc, rate)
        return result


def sensitivity_at(froc: dict, rate: float) -> float:
    """The best FROC sensitivity at <= `rate` false positives per image (0 if none)."""
    points = zip(froc["sensitivity"], froc["false_positives_per_image"])
    if any(math.isnan(s) for s in froc["sensitivity"]):
        return math.nan  # no lesion in the set
    return max((s for s, f in points if f <= rate), default=0.0)


def all_background_scores(masks, num_logits: int) -> dict:
    """The summary of predicting background on these (B, H, W) masks: a trained model's floor."""
    metrics = build_metrics(num_logits)
    for batch in masks:
        metrics.update(torch.zeros_like(batch), batch)
    metrics.reduce()
    return metrics.summary()


def build_metrics(num_logits: int) -> "BinaryStats | ConfusionMatrix":
    """BinaryStats for 1 output channel, ConfusionMatrix(C) for C >= 2."""
    if num_logits < 1:
        raise ValueError(f"num_logits must be >= 1, got {num_logits}")
    return BinaryStats() if num_logits == 1 else ConfusionMatrix(num_logits)
