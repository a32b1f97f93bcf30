"""The losses of Table 1: Jaccard, Dice, (Focal) Tversky, cross-entropy, and their weighted sums.
Region losses count soft TP/FP/FN as SMP does; a binary model has one lesion logit (CE is then BCE).
docs/metrics.md gives the formulas and how Focal Tversky maps onto SMP's and the paper's code.

    criterion = build_loss("jaccard+focal_tversky", num_classes=1)  # VOC: "ce+focal_tversky", 21
    loss = criterion(logits, masks)  # (B, K, H, W) logits, (B, H, W) int64 masks; 255 ignored
"""
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

IGNORE_INDEX = 255  # pixels that count nowhere (VOC's object borders; never in a binarised mask)


def _prepare(logits: torch.Tensor, target: torch.Tensor,
             num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Checks shapes and labels; returns logits in >= float32 and the target as int64."""
    if logits.dim() != 4 or logits.shape[1] != num_classes:
        raise ValueError(f"logits must have shape (B, {num_classes}, H, W) for "
                         f"num_classes={num_classes}, got {tuple(logits.shape)}")
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"target must have shape (B, H, W) = "
                         f"{tuple(logits.shape[:1] + logits.shape[2:])}, got {tuple(target.shape)}")
    if target.is_floating_point() or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class labels (int64), got dtype "
                         f"{target.dtype}")
    target = target.long()
    num_labels = 2 if num_classes == 1 else num_classes
    out_of_range = (target != IGNORE_INDEX) & ((target < 0) | (target >= num_labels))
    # Checked where it costs no host sync; on a GPU the datasets checked every mask as they read it
    if target.device.type == "cpu" and bool(out_of_range.any()):
        found = torch.unique(target[out_of_range])[:8].tolist()
        raise ValueError(f"target holds labels {found} outside 0..{num_labels - 1} (and "
                         f"{IGNORE_INDEX} = ignore) for num_classes={num_classes}; binarise masks "
                         f"to 0/1 or remap labels before the loss")
    # fp16/bf16 -> float32; float32 and float64 stay as they are
    return logits.to(torch.promote_types(logits.dtype, torch.float32)), target


def _probabilities_and_one_hot(logits: torch.Tensor,
                               target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft predictions and one-hot targets, both (B, C, H*W) and both zero on ignored pixels."""
    batch, channels = logits.shape[:2]
    valid = (target != IGNORE_INDEX).reshape(batch, 1, -1)  # (B, 1, HW)
    labels = target.masked_fill(target == IGNORE_INDEX, 0).reshape(batch, -1)  # (B, HW)
    if channels == 1:  # binary: the channel is the lesion; background is not scored (as SMP)
        probs = torch.sigmoid(logits).reshape(batch, 1, -1)  # (B, 1, HW)
        one_hot = labels.unsqueeze(1)  # (B, 1, HW)
    else:
        probs = torch.softmax(logits, dim=1).reshape(batch, channels, -1)  # (B, C, HW)
        one_hot = F.one_hot(labels, channels).permute(0, 2, 1)  # (B, HW, C) -> (B, C, HW)
    # where() rather than a product: an ignored pixel adds nothing and gets a zero gradient here
    # (a product's 0 * inf would be NaN); an infinite logit there still makes softmax's own
    # backward NaN, as torch's cross_entropy(ignore_index=...) does
    probs = torch.where(valid, probs, torch.zeros((), dtype=probs.dtype, device=probs.device))
    return probs, (one_hot * valid).to(probs.dtype)


# Sums counts over processes; the backward all-reduces the gradient: the N ranks' copies of the
# loss give N * dL/d(total), DDP's mean cancels the N, leaving the gradient of one process on the
# whole batch. torch.distributed.nn's all_reduce is deprecated; its replacement lacks a backward.
class _SumOverProcesses(torch.autograd.Function):
    @staticmethod
    def forward(ctx, counts: torch.Tensor) -> torch.Tensor:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("a loss built with distributed=True needs "
                               "torch.distributed.init_process_group() first; in one process use "
                               "distributed=False")
        counts = counts.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(counts)
        return counts

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


class _RegionLoss(nn.Module):
    """The overlap losses' body: TP/FP/FN per class (or image and class), then class_losses()."""

    def __init__(self, num_classes: int, *, aggregation: str = "batch", smooth: float = 0.0,
                 eps: float = 1e-7, distributed: bool = False):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (1 = binary with one logit), got "
                             f"{num_classes}")
        if aggregation not in ("batch", "image"):
            raise ValueError(f"aggregation must be 'batch' or 'image', got {aggregation!r}")
        self.num_classes, self.aggregation, self.smooth, self.eps = (
            num_classes, aggregation, smooth, eps)
        self.distributed = distributed  # sum the counts over all processes (docs/metrics.md)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = _prepare(logits, target, self.num_classes)
        probs, one_hot = _probabilities_and_one_hot(logits, target)  # (B, C, HW) each
        dims = (0, 2) if self.aggregation == "batch" else (2,)  # -> (C,) or (B, C)
        tp, predicted, actual = (probs * one_hot).sum(dims), probs.sum(dims), one_hot.sum(dims)
        if self.distributed and self.aggregation == "batch":  # the counts of the whole global batch
            tp, predicted, actual = _SumOverProcesses.apply(
                torch.stack([tp, predicted, actual]))  # (3, C) -> 3 x (C,)
        losses = self.class_losses(tp, predicted - tp, actual - tp)  # tp, fp, fn
        # absent classes: loss 0, counted in the mean (SMP); where() keeps their gradient exactly 0
        losses = torch.where(actual > 0, losses, torch.zeros_like(losses))
        if self.distributed and self.aggregation == "image":  # mean over all processes' pairs
            total, pairs = _SumOverProcesses.apply(
                torch.stack([losses.sum(), losses.new_tensor(losses.numel())]))
            return total / pairs
        return losses.mean()

    def extra_repr(self) -> str:
        text = (f"num_classes={self.num_classes}, aggregation={self.aggregation!r}, "
                f"smooth={self.smooth}, eps={self.eps}")
        return text + (", distributed=True" if self.distributed else "")


class JaccardLoss(_RegionLoss):
    """Soft Jaccard (IoU) loss: 1 - (TP + smooth) / (TP + FP + FN + smooth)."""

    def class_losses(self, tp, fp, fn):
        return 1 - (tp + self.smooth) / (tp + fp + fn + self.smooth).clamp_min(self.eps)


class DiceLoss(_RegionLoss):
    """Soft Dice loss: 1 - (2TP + smooth) / (2TP + FP + FN + smooth)."""

    def class_losses(self, tp, fp, fn):
        return 1 - (2 * tp + self.smooth) / (2 * tp + fp + fn + self.smooth).clamp_min(self.eps)


class TverskyLoss(_RegionLoss):
    """1 - (TP + smooth) / (TP + alpha*FN + beta*FP + smooth); alpha weights FALSE NEGATIVES."""

    def __init__(self, num_classes: int, *, alpha: float = 0.7, beta: float = 0.3,
                 aggregation: str = "batch", smooth: float = 0.0, eps: float = 1e-7,
                 distributed: bool = False):
        super().__init__(num_classes, aggregation=aggregation, smooth=smooth, eps=eps,
                         distributed=distributed)
        self.alpha, self.beta = alpha, beta

    def tversky_index(self, tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
        denominator = tp + self.alpha * fn + self.beta * fp + self.smooth
        return (tp + self.smooth) / denominator.clamp_min(self.eps)

    def class_losses(self, tp, fp, fn):
        return 1 - self.tversky_index(tp, fp, fn)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha} (FN), beta={self.beta} (FP)"


class FocalTverskyLoss(TverskyLoss):
    """mean_c (1 - TI_c) ** (1/gamma), the paper's alpha=0.7 (FN), beta=0.3 (FP), gamma=4/3.
    SMP's equivalent (one class): TverskyLoss(mode, alpha=0.3, beta=0.7, gamma=0.75)."""

    def __init__(self, num_classes: int, *, alpha: float = 0.7, beta: float = 0.3,
                 gamma: float = 4 / 3, aggregation: str = "batch", smooth: float = 0.0,
                 eps: float = 1e-7, distributed: bool = False):
        super().__init__(num_classes, alpha=alpha, beta=beta, aggregation=aggregation,
                         smooth=smooth, eps=eps, distributed=distributed)
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0 (the exponent is 1/gamma), got {gamma}")
        self.gamma = gamma

    def class_losses(self, tp, fp, fn):
        # Per class, then the mean: the exponent re-weights classes by how well each is segmented.
        # The clamp: x ** 0.75 has an infinite slope at 0.
        return (1 - self.tversky_index(tp, fp, fn)).clamp_min(self.eps) ** (1 / self.gamma)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gamma={self.gamma:.4g} (exponent {1 / self.gamma:.4g})"


class CrossEntropyLoss(nn.Module):
    """Pixel cross-entropy over valid pixels: BCE-with-logits for 1 channel, softmax CE for more."""

    def __init__(self, num_classes: int, *, distributed: bool = False):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (1 = binary with one logit), got "
                             f"{num_classes}")
        self.num_classes, self.distributed = num_classes, distributed

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = _prepare(logits, target, self.num_classes)
        valid = target != IGNORE_INDEX  # (B, H, W)
        if self.num_classes == 1:
            labels = (target == 1).to(logits.dtype)
            per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], labels,
                                                           reduction="none")  # (B, H, W)
            total = torch.where(valid, per_pixel, torch.zeros_like(per_pixel)).sum()
        else:
            total = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")
        num_valid = valid.sum().to(total.dtype)
        if self.distributed:  # global sum / global valid-pixel count
            total, num_valid = _SumOverProcesses.apply(torch.stack([total, num_valid]))
        # sum / max(count, 1), not reduction="mean": 0/0 = NaN when every pixel is ignored
        return total / num_valid.clamp_min(1)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}"
                + (", distributed=True" if self.distributed else ""))


LOSSES = {
    "jaccard": JaccardLoss,
    "dice": DiceLoss,
    "tversky": TverskyLoss,
    "focal_tversky": FocalTverskyLoss,
    "ce": CrossEntropyLoss,  # BCE-with-logits when num_classes == 1
    "bce": CrossEntropyLoss,  # accepted for binary only
}


class CombinedLoss(nn.Module):
    """Weighted sum of named losses; `.terms` lists (weight, name, module) for logging."""

    def __init__(self, terms: list[tuple[float, str, nn.Module]]):
        super().__init__()
        self.weights = {name: weight for weight, name, _ in terms}
        self.parts = nn.ModuleDict({name: module for _, name, module in terms})

    @property
    def terms(self) -> list[tuple[float, str, nn.Module]]:
        return [(self.weights[name], name, module) for name, module in self.parts.items()]

    def forward_with_terms(self, logits: torch.Tensor,
                           target: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Returns (weighted total, {name: unweighted term value}); the total carries the graph."""
        values = {name: module(logits, target) for name, module in self.parts.items()}
        total = sum(self.weights[name] * value for name, value in values.items())
        return total, values

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.forward_with_terms(logits, target)[0]

    def extra_repr(self) -> str:
        return " + ".join(f"{self.weights[name]:g}*{name}" for name in self.parts)


def build_loss(spec: str, num_classes: int, *, distributed: bool = False) -> CombinedLoss:
    """Parses "jaccard+focal_tversky", "0.5*dice+bce", ... into a CombinedLoss (paper defaults).
    distributed=True: every term sums its counts over all processes (world size > 1)."""
    known = ", ".join(LOSSES)
    terms = []
    for raw_term in spec.split("+"):
        term = raw_term.strip().lower()
        weight_text, star, name = term.rpartition("*")
        name = name.strip()
        try:
            weight = float(weight_text) if star else 1.0
        except ValueError:
            raise ValueError(f"loss spec {spec!r}: weight {weight_text.strip()!r} is not a "
                             f"number (write e.g. '0.5*dice+bce')") from None
        if name not in LOSSES:
            raise ValueError(f"loss spec {spec!r}: unknown loss {name!r}; known losses: {known} "
                             f"(join with '+', weight with '*', e.g. 'jaccard+focal_tversky')")
        if name == "bce" and num_classes != 1:
            raise ValueError(f"loss spec {spec!r}: 'bce' is the binary cross-entropy "
                             f"(num_classes=1); with num_classes={num_classes} use 'ce'")
        if not weight > 0:
            raise ValueError(f"loss spec {spec!r}: weight of {name!r} must be > 0, got "
                             f"{weight:g}")
        twice = [other for _, other, _ in terms if LOSSES[other] is LOSSES[name]]  # ce is bce
        if twice:
            raise ValueError(f"loss spec {spec!r}: {name!r} repeats {twice[0]!r}, the same loss; "
                             f"give it one weight instead")
        terms.append((weight, name, LOSSES[name](num_classes, distributed=distributed)))
    return CombinedLoss(terms)
