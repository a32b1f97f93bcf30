"""Metrics of the thesis' Tables 2-4: IoU and Dice on CBIS-DDSM (binary), mIoU on Pascal VOC 2012 (multiclass).

Metrics. Every number is exact and accumulated over the whole set, never a mean of batch means: integer counts are
summed per batch (one torch.bincount), summed across processes by `reduce()`, and only then turned into scores, so
batch size, image order and world size change no metric.

Label space. A binary model has ONE logit (lesion) but the labels have TWO classes, background 0 and lesion 1;
`predict_labels(logits)` turns either kind of output into labels (B, H, W): sigmoid > 0.5 (i.e. logit > 0) for
one channel, argmax over channels otherwise. Pixels whose target is IGNORE_INDEX (255) count nowhere.

- `ConfusionMatrix(num_classes)` (label classes: 2 for binary, 21 for VOC): rows are the target, columns the
  prediction. iou_c = TP/(TP+FP+FN), dice_c = 2TP/(2TP+FP+FN), NaN for a class that is in neither the targets
  nor the predictions; `mean_iou()` averages the classes present in the targets OR the predictions (a class
  predicted but never present scores 0 and counts; a class absent from both has no defined IoU and is left out).
  With all VOC val classes present this is the standard cumulative VOC mIoU.
- `BinaryStats()` (binary segmentation, the CBIS numbers): per-image TP/FP/FN/TN of the lesion class. Reports
  Dice and IoU pooled over the set (from the summed counts) and as the mean of per-image scores, plus pooled
  sensitivity TP/(TP+FN), precision TP/(TP+FP) and specificity TN/(TN+FP). Empty-mask convention: an image with
  no lesion in the target and none predicted scores Dice = IoU = 1 (nothing to find, nothing found); the pooled
  Dice/IoU follow the same rule when the whole set is empty, so pooled == mean for a one-image set. Sensitivity,
  precision and specificity are NaN when their denominator is 0 (undefined, not invented). An image whose pixels
  are all 255 has nothing to score: it is counted in `images` but left out of the per-image means. Where a set
  also holds lesion-free images (mini-MIAS' normals), the mean over the images WITH a lesion is reported beside the
  mean over all: an empty prediction on a normal image scores 1, so the mean over all rewards finding nothing, and
  Table 2's CBIS-DDSM set holds mass images only (§3 warns against scoring blank masks).
- `build_metrics(num_logits)`: BinaryStats for a 1-logit model, ConfusionMatrix(C) for a C-logit model. Both have
  update(pred, target), reduce(), summary() -> dict of floats (for logs and JSON).

Usage: `m = build_metrics(1); m.update(predict_labels(model(x)), y); m.reduce(); print(m.summary())`.

Imports only torch, like losses.py: either file can be copied alone.
"""
import math

import torch
import torch.distributed as dist

IGNORE_INDEX = 255  # target label that counts nowhere: Pascal VOC's, the same as losses.IGNORE_INDEX


def predict_labels(logits: torch.Tensor, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Logits (B, C, H, W) -> labels (B, H, W) of `dtype`: logit > 0 (sigmoid > 0.5) for C == 1, argmax for C > 1.
    torch.uint8 takes an eighth of int64's memory (prediction on huge scans uses it; class indices up to 255)."""
    if logits.dim() != 4:
        raise ValueError(f"logits must have shape (B, C, H, W), got {tuple(logits.shape)}")
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).to(dtype)  # a logit of exactly 0 (probability 0.5) is background
    return logits.argmax(dim=1).to(dtype)


def _check_labels(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> None:
    if pred.dim() != 3 or pred.shape != target.shape:
        raise ValueError(f"pred and target must be label maps of one shape (B, H, W), got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    for name, labels in (("pred", pred), ("target", target)):
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer labels (int64), got dtype {labels.dtype}; "
                             f"use predict_labels(logits) for model outputs")
    valid = target != IGNORE_INDEX
    out_of_range = ((target < 0) | (target >= num_classes) | (pred < 0) | (pred >= num_classes)) & valid
    if bool(out_of_range.any()):  # one host sync per batch; a wrong label would otherwise land in a wrong cell
        raise ValueError(f"labels outside 0..{num_classes - 1} (and {IGNORE_INDEX} = ignore in the target) for "
                         f"num_classes={num_classes}; binary segmentation has 2 label classes (background, lesion)")


def _for_collective(tensor: torch.Tensor) -> torch.Tensor:
    """NCCL only moves CUDA tensors; a rank that saw no batch still holds its CPU zeros."""
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        return tensor.to(torch.device("cuda", torch.cuda.current_device()))
    return tensor


def _all_gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Concatenates every rank's (N_rank, K) tensor in rank order (ranks may hold different N)."""
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
    """Exact (num_classes x num_classes) int64 pixel counts over a set; rows = target, columns = prediction."""

    def __init__(self, num_classes: int):
        if num_classes < 2:
            raise ValueError(f"ConfusionMatrix counts label classes and needs num_classes >= 2, got {num_classes}; "
                             f"a 1-logit binary model has 2 (background, lesion)")
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.num_images = 0
        self._reduced = False

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Adds a batch of int64 label maps (B, H, W); target pixels equal to 255 are skipped."""
        if self._reduced:
            raise RuntimeError("ConfusionMatrix.update() after reduce(): start a new ConfusionMatrix per evaluation")
        _check_labels(pred, target, self.num_classes)
        self.matrix = self.matrix.to(pred.device)
        valid = target != IGNORE_INDEX
        index = target[valid].long() * self.num_classes + pred[valid].long()  # (n_valid,) cell of each pixel
        counts = torch.bincount(index, minlength=self.num_classes ** 2)
        self.matrix += counts.reshape(self.num_classes, self.num_classes)
        self.num_images += pred.shape[0]

    def reduce(self) -> None:
        """Sums counts over all processes when torch.distributed is initialised; call once, after the last update."""
        if self._reduced:
            raise RuntimeError("ConfusionMatrix.reduce() called twice: it would count every pixel again")
        self._reduced = True
        if dist.is_available() and dist.is_initialized():
            flat = _for_collective(torch.cat([self.matrix.flatten(), self.matrix.new_tensor([self.num_images])]))
            dist.all_reduce(flat)
            self.matrix = flat[:-1].reshape(self.num_classes, self.num_classes)
            self.num_images = int(flat[-1].item())

    def _tp_fp_fn(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        counts = self.matrix.cpu().double()
        tp = counts.diagonal()
        return tp, counts.sum(0) - tp, counts.sum(1) - tp  # column sums = predicted, row sums = target

    def iou(self) -> torch.Tensor:
        """Per-class IoU (float64, CPU); NaN for a class absent from both targets and predictions."""
        tp, fp, fn = self._tp_fp_fn()
        return tp / (tp + fp + fn)  # 0/0 -> NaN on purpose

    def dice(self) -> torch.Tensor:
        """Per-class Dice (float64, CPU); NaN for a class absent from both targets and predictions."""
        tp, fp, fn = self._tp_fp_fn()
        return 2 * tp / (2 * tp + fp + fn)

    def mean_iou(self) -> float:
        """Mean IoU over classes present in the targets or the predictions (NaN if nothing was counted)."""
        iou = self.iou()
        return float(iou.nanmean()) if not iou.isnan().all() else math.nan

    def pixel_accuracy(self) -> float:
        """Fraction of valid pixels whose predicted label is right (NaN if nothing was counted)."""
        counts = self.matrix.cpu()
        return _ratio(float(counts.diagonal().sum()), float(counts.sum()))

    def summary(self) -> dict:
        """mean_iou, mean_dice (same classes), pixel_accuracy, images and iou_<c> per class, as plain floats."""
        dice = self.dice()
        result = {"mean_iou": self.mean_iou(),
                  "mean_dice": float(dice.nanmean()) if not dice.isnan().all() else math.nan,
                  "pixel_accuracy": self.pixel_accuracy(), "images": float(self.num_images)}
        result.update({f"iou_{c}": float(v) for c, v in enumerate(self.iou())})
        return result


class BinaryStats:
    """Per-image TP/FP/FN/TN of the lesion class (label 1); pooled and per-image-mean Dice/IoU, sens/prec/spec."""

    def __init__(self):
        self.num_classes = 2
        self._batches: list[torch.Tensor] = []  # (B, 4) int64 per update: TP, FP, FN, TN of each image
        self._reduced = False

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Adds a batch of 0/1 label maps (B, H, W); target pixels equal to 255 are skipped."""
        if self._reduced:
            raise RuntimeError("BinaryStats.update() after reduce(): start a new BinaryStats per evaluation")
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
        """Per-image counts (N, 4) int64, columns TP, FP, FN, TN, in update order (rank order after reduce)."""
        if not self._batches:
            return torch.zeros(0, 4, dtype=torch.int64)
        if len(self._batches) > 1:
            self._batches = [torch.cat(self._batches)]
        return self._batches[0]

    def reduce(self) -> None:
        """Gathers every process's per-image counts (all_gather, rank order); call once, after the last update.

        Each rank's (N_rank, 4) tensor is padded to the longest and gathered, so the result holds every image
        once provided the caller evaluated each image on exactly one rank (no DistributedSampler padding).
        The tensors travel on the device of the predictions: use a backend that supports it (NCCL for CUDA).
        """
        if self._reduced:
            raise RuntimeError("BinaryStats.reduce() called twice: it would count every image again")
        self._reduced = True
        if dist.is_available() and dist.is_initialized():
            self._batches = [_all_gather_rows(self.counts())]

    def per_image(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image Dice and IoU (float64, CPU), 1 for empty target + empty prediction, NaN if all pixels are 255."""
        tp, fp, fn, tn = self.counts().cpu().double().unbind(1)
        empty = (tp + fp + fn) == 0
        no_valid_pixel = (tp + fp + fn + tn) == 0
        dice = torch.where(empty, 1.0, 2 * tp / (2 * tp + fp + fn))  # the 0/0 of empty images is discarded
        iou = torch.where(empty, 1.0, tp / (tp + fp + fn))
        return torch.where(no_valid_pixel, math.nan, dice), torch.where(no_valid_pixel, math.nan, iou)

    def summary(self) -> dict:
        """Pooled and per-image-mean Dice/IoU, sensitivity, precision, specificity and counts, as plain floats."""
        counts = self.counts().cpu()
        tp, fp, fn, tn = counts.sum(0).tolist()  # pooled over the set (zeros for an empty set)
        dice, iou = self.per_image()
        scored = ~dice.isnan()
        with_lesion = scored & (counts[:, 0] + counts[:, 2] > 0)  # TP + FN > 0: the target holds lesion pixels
        # math.fsum is exactly rounded, so the means do not depend on the order of the images
        return {
            "dice_pooled": _ratio(2 * tp, 2 * tp + fp + fn, if_empty=1.0),
            "iou_pooled": _ratio(tp, tp + fp + fn, if_empty=1.0),
            "dice_mean_per_image": _ratio(math.fsum(dice[scored].tolist()), int(scored.sum())),
            "iou_mean_per_image": _ratio(math.fsum(iou[scored].tolist()), int(scored.sum())),
            "dice_mean_lesion_images": _ratio(math.fsum(dice[with_lesion].tolist()), int(with_lesion.sum())),
            "iou_mean_lesion_images": _ratio(math.fsum(iou[with_lesion].tolist()), int(with_lesion.sum())),
            "sensitivity": _ratio(tp, tp + fn),
            "precision": _ratio(tp, tp + fp),
            "specificity": _ratio(tn, tn + fp),
            "predicted_foreground_fraction": _ratio(tp + fp, tp + fp + fn + tn),
            "images": float(len(counts)),
            "images_all_ignored": float(len(counts) - int(scored.sum())),
            "images_with_lesion": float(with_lesion.sum()),
        }


def all_background_scores(masks, num_logits: int) -> dict:
    """The summary of a model that predicts background everywhere on these (B, H, W) masks: the floor a trained
    model must clear. Reduced over processes like any metric."""
    metrics = build_metrics(num_logits)
    for batch in masks:
        metrics.update(torch.zeros_like(batch), batch)
    metrics.reduce()
    return metrics.summary()


def build_metrics(num_logits: int) -> "BinaryStats | ConfusionMatrix":
    """Metrics for a model with `num_logits` output channels: BinaryStats for 1, ConfusionMatrix(C) for C >= 2."""
    if num_logits < 1:
        raise ValueError(f"num_logits must be >= 1, got {num_logits}")
    return BinaryStats() if num_logits == 1 else ConfusionMatrix(num_logits)
