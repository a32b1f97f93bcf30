"""Segmentation losses of the thesis (Table 1): Jaccard, Dice, (Focal) Tversky, cross-entropy, and their sums.

The thesis trains CBIS-DDSM with Jaccard + Focal Tversky and Pascal VOC with CE + Focal Tversky (section 4.3,
Table 1); `build_loss("jaccard+focal_tversky", num_classes=1)` and `build_loss("ce+focal_tversky", 21)` give them.

Shapes (DESIGN.md). Binary, num_classes=1: logits (B, 1, H, W), target (B, H, W) int64 in {0, 1}; the channel is
the lesion logit and CE is BCE-with-logits on it. Multiclass: logits (B, C, H, W), target in 0..C-1, softmax.
In both, pixels labelled IGNORE_INDEX (255) count nowhere: not in any sum, not in any mean, and they get no gradient.

Region losses (Jaccard, Dice, Tversky, Focal Tversky) follow segmentation_models_pytorch (SMP), which built the
thesis baselines. Per class c, with p the predicted probabilities and t the one-hot target over valid pixels:
    TP_c = sum p*t    FP_c = sum p*(1-t)    FN_c = sum (1-p)*t
    Jaccard = (TP + smooth) / (TP + FP + FN + smooth)          Dice = (2TP + smooth) / (2TP + FP + FN + smooth)
each denominator clamped to >= eps; loss = 1 - score. aggregation="batch" (default, as SMP) sums the counts over
the whole batch, giving one score per class; aggregation="image" gives one score per (image, class). A class (or
(image, class) pair) with no target pixel gets loss 0 but still counts in the final mean over all of them: SMP's
exact rule, so absent classes neither push nor pull but do dilute the mean. So a binary batch without lesion
gives region loss 0 with zero gradient (only CE then pushes towards background), and an all-255 batch gives every
loss, CE included, 0 with zero gradient (CE divides its sum by max(valid pixels, 1)). smooth=0, eps=1e-7 are SMP's.

Focal Tversky (Abraham & Khan, ISBI 2019, arXiv 1810.07842):
    TI_c = (TP + smooth) / (TP + alpha*FN + beta*FP + smooth),   loss = mean_c (1 - TI_c) ** (1 / gamma)
with the paper's alpha=0.7 on FALSE NEGATIVES, beta=0.3 on false positives, gamma=4/3 (so the exponent is 0.75).
Mapping onto other code, so nobody ports it wrong:
  - SMP TverskyLoss(alpha, beta, gamma): its alpha weights FALSE POSITIVES and its gamma IS the exponent, applied
    once to the class mean: (mean_c (1 - TI_c)) ** gamma. The paper's loss is SMP's alpha=0.3, beta=0.7, gamma=0.75.
    Passing alpha=0.7, beta=0.3 there swaps the FN/FP emphasis; passing gamma=4/3 there is a different loss.
  - Official code (nabsabraham/focal-tversky-unet): alpha=0.7 on FN, 1-alpha on FP, smooth=1, one score for the
    whole flattened batch, exponent 0.75 written directly: our binary batch mode with smooth=1.
We raise each class's (1 - TI_c) to the power and then average, as the paper's sum over classes does (mean instead
of sum, so the scale does not grow with C): the focal exponent is there to re-weight classes by how well each one
is segmented, which an exponent applied after the mean cannot do. For one class (the CBIS lesion, batch mode) the
two orders are the same number. (1 - TI) is clamped to >= eps before the power because x ** 0.75 has an infinite
slope at 0; a perfect class therefore scores eps ** 0.75 (~6e-6 at eps=1e-7) instead of 0, with zero gradient.

Several processes (torchrun + DDP, `distributed=True`): each process sees only its shard of the batch, so by
default its counts and loss differ from those of the whole batch that one GPU or nn.DataParallel scores. With
distributed=True every loss first sums a few numbers per class over the default process group: TP, predicted and
target mass; CE's sum and valid-pixel count; in image mode the summed losses and the number of image-class pairs.
The all-reduce keeps gradients (`_SumOverProcesses`), so value and DDP-averaged gradient are one process's on the
whole batch, for any world size. Only counts travel, never pixels. Default off: nothing is exchanged.

Every loss casts fp16/bf16 logits to float32 first (float64 stays float64, for gradcheck), so it is computed in
float32 under autocast. Usage: `criterion = build_loss("jaccard+focal_tversky", 1); loss = criterion(logits, y)`;
`criterion.forward_with_terms(logits, y)` also returns each term's value for logging.
"""
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

IGNORE_INDEX = 255  # label of pixels that count nowhere (VOC object borders; never in a binarised CBIS mask)


def _prepare(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Checks shapes and labels; returns logits in >= float32 and the target as int64."""
    if logits.dim() != 4 or logits.shape[1] != num_classes:
        raise ValueError(f"logits must have shape (B, {num_classes}, H, W) for num_classes={num_classes}, "
                         f"got {tuple(logits.shape)}")
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"target must have shape (B, H, W) = {tuple(logits.shape[:1] + logits.shape[2:])}, "
                         f"got {tuple(target.shape)}")
    if target.is_floating_point() or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class labels (int64), got dtype {target.dtype}")
    target = target.long()
    num_labels = 2 if num_classes == 1 else num_classes
    out_of_range = (target != IGNORE_INDEX) & ((target < 0) | (target >= num_labels))
    if bool(out_of_range.any()):  # one host sync; a wrong label would otherwise be trained on silently
        found = torch.unique(target[out_of_range])[:8].tolist()
        raise ValueError(f"target holds labels {found} outside 0..{num_labels - 1} (and {IGNORE_INDEX} = ignore) for "
                         f"num_classes={num_classes}; binarise masks to 0/1 or remap labels before the loss")
    # fp16/bf16 -> float32; float32 and float64 stay as they are
    return logits.to(torch.promote_types(logits.dtype, torch.float32)), target


def _probabilities_and_one_hot(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft predictions and one-hot targets, both (B, C, H*W) and both zero on ignored pixels."""
    batch, channels = logits.shape[:2]
    valid = (target != IGNORE_INDEX).reshape(batch, 1, -1)  # (B, 1, HW)
    labels = target.masked_fill(target == IGNORE_INDEX, 0).reshape(batch, -1)  # (B, HW)
    if channels == 1:  # binary: the one channel is the lesion; background is not scored (as SMP's binary mode)
        probs = torch.sigmoid(logits).reshape(batch, 1, -1)  # (B, 1, HW)
        one_hot = labels.unsqueeze(1)  # (B, 1, HW)
    else:
        probs = torch.softmax(logits, dim=1).reshape(batch, channels, -1)  # (B, C, HW)
        one_hot = F.one_hot(labels, channels).permute(0, 2, 1)  # (B, HW, C) -> (B, C, HW)
    # where() rather than a product, so no gradient (not even 0 * inf) reaches ignored pixels
    probs = torch.where(valid, probs, torch.zeros((), dtype=probs.dtype, device=probs.device))
    return probs, (one_hot * valid).to(probs.dtype)


class _SumOverProcesses(torch.autograd.Function):
    """all_reduce(SUM) of counts over the default process group; its backward all-reduces the incoming gradient.

    Why the gradient is right: every process ends with the same loss L = f(sum_r counts_r), and DDP applies the
    gradient of (1/N) sum_r L_r. Rank r's counts reach all N copies of L, so d(sum_r L_r)/d counts_r is the sum over
    processes of dL/d(total), which is what the backward all-reduce computes: N * dL/d(total). DDP's 1/N cancels
    that N, leaving dL/d(total) * d counts_r / d weights summed over ranks: the one-process gradient on the whole
    batch. torch.distributed.nn.functional.all_reduce has the same backward, but torch 2.14 deprecates it with a
    FutureWarning, and the replacement it names has a backward only in recent torch (none before, silently).
    """

    @staticmethod
    def forward(ctx, counts: torch.Tensor) -> torch.Tensor:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("a loss built with distributed=True needs torch.distributed.init_process_group() "
                               "first; in one process use distributed=False")
        counts = counts.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(counts)
        return counts

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


class _RegionLoss(nn.Module):
    """Shared body of the overlap losses: counts TP/FP/FN per class (or per image and class), scores, averages.

    Subclasses define `class_losses(tp, fp, fn)`, the loss of each class (or image and class) from its counts.
    """

    def __init__(self, num_classes: int, *, aggregation: str = "batch", smooth: float = 0.0, eps: float = 1e-7,
                 distributed: bool = False):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (1 = binary with one logit), got {num_classes}")
        if aggregation not in ("batch", "image"):
            raise ValueError(f"aggregation must be 'batch' or 'image', got {aggregation!r}")
        self.num_classes, self.aggregation, self.smooth, self.eps = num_classes, aggregation, smooth, eps
        self.distributed = distributed  # sum the counts over all processes (module docstring)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = _prepare(logits, target, self.num_classes)
        probs, one_hot = _probabilities_and_one_hot(logits, target)  # (B, C, HW) each
        dims = (0, 2) if self.aggregation == "batch" else (2,)  # -> (C,) or (B, C)
        tp, predicted, actual = (probs * one_hot).sum(dims), probs.sum(dims), one_hot.sum(dims)
        if self.distributed and self.aggregation == "batch":  # the counts of the whole global batch
            tp, predicted, actual = _SumOverProcesses.apply(torch.stack([tp, predicted, actual]))  # (3, C) -> 3 x (C,)
        losses = self.class_losses(tp, predicted - tp, actual - tp)  # fp = predicted - tp, fn = actual - tp
        # absent classes: loss 0, counted in the mean (SMP); where() keeps their gradient exactly 0
        losses = torch.where(actual > 0, losses, torch.zeros_like(losses))
        if self.distributed and self.aggregation == "image":  # mean over the (image, class) pairs of all processes
            total, pairs = _SumOverProcesses.apply(torch.stack([losses.sum(), losses.new_tensor(losses.numel())]))
            return total / pairs
        return losses.mean()

    def extra_repr(self) -> str:
        text = f"num_classes={self.num_classes}, aggregation={self.aggregation!r}, smooth={self.smooth}, eps={self.eps}"
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
    """Tversky loss 1 - TI, TI = (TP + smooth) / (TP + alpha*FN + beta*FP + smooth); alpha weights FALSE NEGATIVES."""

    def __init__(self, num_classes: int, *, alpha: float = 0.7, beta: float = 0.3, aggregation: str = "batch",
                 smooth: float = 0.0, eps: float = 1e-7, distributed: bool = False):
        super().__init__(num_classes, aggregation=aggregation, smooth=smooth, eps=eps, distributed=distributed)
        self.alpha, self.beta = alpha, beta

    def tversky_index(self, tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
        denominator = tp + self.alpha * fn + self.beta * fp + self.smooth
        return (tp + self.smooth) / denominator.clamp_min(self.eps)

    def class_losses(self, tp, fp, fn):
        return 1 - self.tversky_index(tp, fp, fn)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha} (FN), beta={self.beta} (FP)"


class FocalTverskyLoss(TverskyLoss):
    """Focal Tversky loss mean_c (1 - TI_c) ** (1/gamma), paper defaults alpha=0.7 (FN), beta=0.3 (FP), gamma=4/3.

    SMP equivalent (binary, or one class): TverskyLoss(mode, alpha=0.3, beta=0.7, gamma=0.75); see the module
    docstring for why the exponent is applied per class before the mean.
    """

    def __init__(self, num_classes: int, *, alpha: float = 0.7, beta: float = 0.3, gamma: float = 4 / 3,
                 aggregation: str = "batch", smooth: float = 0.0, eps: float = 1e-7, distributed: bool = False):
        super().__init__(num_classes, alpha=alpha, beta=beta, aggregation=aggregation, smooth=smooth, eps=eps,
                         distributed=distributed)
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0 (the exponent is 1/gamma), got {gamma}")
        self.gamma = gamma

    def class_losses(self, tp, fp, fn):
        return (1 - self.tversky_index(tp, fp, fn)).clamp_min(self.eps) ** (1 / self.gamma)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gamma={self.gamma:.4g} (exponent {1 / self.gamma:.4g})"


class CrossEntropyLoss(nn.Module):
    """Pixel cross-entropy averaged over valid pixels: BCE-with-logits for 1 channel, softmax CE for C channels."""

    def __init__(self, num_classes: int, *, distributed: bool = False):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (1 = binary with one logit), got {num_classes}")
        self.num_classes, self.distributed = num_classes, distributed

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = _prepare(logits, target, self.num_classes)
        valid = target != IGNORE_INDEX  # (B, H, W)
        if self.num_classes == 1:
            labels = (target == 1).to(logits.dtype)
            per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], labels, reduction="none")  # (B, H, W)
            total = torch.where(valid, per_pixel, torch.zeros_like(per_pixel)).sum()
        else:
            total = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")
        num_valid = valid.sum().to(total.dtype)
        if self.distributed:  # global sum / global valid-pixel count
            total, num_valid = _SumOverProcesses.apply(torch.stack([total, num_valid]))
        # sum / max(count, 1) instead of reduction="mean", which is 0/0 = NaN when every pixel is ignored
        return total / num_valid.clamp_min(1)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}" + (", distributed=True" if self.distributed else "")


LOSSES = {
    "jaccard": JaccardLoss,
    "dice": DiceLoss,
    "tversky": TverskyLoss,
    "focal_tversky": FocalTverskyLoss,
    "ce": CrossEntropyLoss,  # BCE-with-logits when num_classes == 1
    "bce": CrossEntropyLoss,  # accepted for binary only
}


class CombinedLoss(nn.Module):
    """Weighted sum of named losses; `.terms` lists (weight, name, module) so training can log each term."""

    def __init__(self, terms: list[tuple[float, str, nn.Module]]):
        super().__init__()
        self.weights = {name: weight for weight, name, _ in terms}
        self.parts = nn.ModuleDict({name: module for _, name, module in terms})

    @property
    def terms(self) -> list[tuple[float, str, nn.Module]]:
        return [(self.weights[name], name, module) for name, module in self.parts.items()]

    def forward_with_terms(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Returns (weighted total, {name: unweighted term value}); the total carries the graph."""
        values = {name: module(logits, target) for name, module in self.parts.items()}
        total = sum(self.weights[name] * value for name, value in values.items())
        return total, values

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.forward_with_terms(logits, target)[0]

    def extra_repr(self) -> str:
        return " + ".join(f"{self.weights[name]:g}*{name}" for name in self.parts)


class WithLoss(nn.Module):
    """A model and its criterion as one module, (images, target) -> (loss, {term: value}): what train.py runs, so that
    DistributedDataParallel and torch.compile see the whole training forward, and the loss's passes over the full-
    resolution logits can fuse with the model's last layers."""

    def __init__(self, model: nn.Module, criterion: CombinedLoss):
        super().__init__()
        self.model, self.criterion = model, criterion

    def forward(self, images: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return self.criterion.forward_with_terms(self.model(images), target)


def build_loss(spec: str, num_classes: int, *, distributed: bool = False) -> CombinedLoss:
    """Parses "jaccard+focal_tversky", "ce+focal_tversky", "0.5*dice+bce", ... into a CombinedLoss (paper defaults).

    distributed=True makes every term sum its counts over all processes (module docstring); pass world_size > 1.
    """
    known = ", ".join(LOSSES)
    terms = []
    for raw_term in spec.split("+"):
        term = raw_term.strip().lower()
        weight_text, star, name = term.rpartition("*")
        name = name.strip()
        try:
            weight = float(weight_text) if star else 1.0
        except ValueError:
            raise ValueError(f"loss spec {spec!r}: weight {weight_text.strip()!r} is not a number "
                             f"(write e.g. '0.5*dice+bce')") from None
        if name not in LOSSES:
            raise ValueError(f"loss spec {spec!r}: unknown loss {name!r}; known losses: {known} "
                             f"(join with '+', weight with '*', e.g. 'jaccard+focal_tversky')")
        if name == "bce" and num_classes != 1:
            raise ValueError(f"loss spec {spec!r}: 'bce' is the binary cross-entropy (num_classes=1); "
                             f"with num_classes={num_classes} use 'ce'")
        if not weight > 0:
            raise ValueError(f"loss spec {spec!r}: weight of {name!r} must be > 0, got {weight:g}")
        if any(name == other for _, other, _ in terms):
            raise ValueError(f"loss spec {spec!r}: {name!r} appears twice; give it one weight instead")
        terms.append((weight, name, LOSSES[name](num_classes, distributed=distributed)))
    return CombinedLoss(terms)
