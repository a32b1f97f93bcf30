"""The training recipes of §4.3 and Table 1 as data, BiT-hyperrule style: one entry per dataset,
each value with where it comes from, and Table 1's piecewise-constant learning-rate schedule.
train.py takes every default from here, a flag overriding the entry of its name, and builds the
optimizer: AdamW with amsgrad (Table 1).

    PRESETS["cbis"]["lr"]  # 5e-4: Table 1 "Learning Rate"
"""
from __future__ import annotations

from pathlib import Path

CBIS = dict(  # Table 1, CBIS-DDSM column; PRESETS["cbis"]
    encoder="resnet34",  # Table 1 "Encoder"
    decoder="fusion",  # §4.2, Fig. 5-6: the proposed decoder, Table 2 (A)
    weights="imagenet-timm",  # §4.3 "pretrained encoders from Pytorch Image Models"; Table 3 (A)
    loss="jaccard+focal_tversky",  # Table 1 "Loss Function"
    image_size=256,  # Table 1 "Image Size"
    lr=5e-4,  # Table 1 "Learning Rate"
    schedule="0:5e-4,40:1e-4,70:5e-5,100:1e-5,120:1e-6",  # Table 1 "Scheduler"
    epochs=150,  # Table 1 "Num epochs"
    batch_size=16,  # not in the thesis (ours): 4 images on each of §4.3's 4 V100s
    in_channels=3,  # §4.3: ImageNet encoders from timm take RGB; grayscale is replicated
    decoder_channels=None,  # fusion.py's widths that match Table 2's 89.62M parameters
    # the official training CSV split by patient 80/20: 990/241 images, not Table 1's 690/168,
    # which no subset of the published CSVs reproduces (readers/cbis.py)
    train_split="train",
    augment=True,  # ours: readers/mammograms.py's flip, rotation, scale, shift, gamma
    num_classes=1,  # binary: one lesion logit (data.py's dataset.num_classes, checked)
    foreground_prior=None,  # the head's bias starts at 0: SMP's initialisation, the baselines'
)
PRESETS = {
    "cbis": CBIS,
    "voc": dict(
        encoder="bit_r50x1",  # Table 1 "Encoder": ResNet50_V2 Big Transfer
        decoder="fusion",  # Table 4 (A)
        weights="imagenet",  # §6.2: "only ImageNet pretrained encoder"
        loss="ce+focal_tversky",  # Table 1 "Loss Function"
        image_size=384,  # Table 1 "Image Size"
        lr=5e-5,  # Table 1 "Learning Rate"
        schedule="0:5e-5,80:1e-5",  # Table 1 "Scheduler"
        epochs=150,  # Table 1 "Num epochs"
        batch_size=8,  # not in the thesis (ours): 2 per V100 of §4.3 for the 202M-parameter model
        in_channels=3,  # RGB photographs
        decoder_channels=None,  # fusion.py's widths that match Table 4's 202.44M parameters
        train_split="train",  # Table 1 "Train images" 1464 = VOC 2012 train (not SBD's trainaug)
        augment=True,  # ours: readers/voc.py's transform_voc, scale 0.5-2x, flip and crop
        num_classes=21,  # background + 20 classes (§6.2)
        foreground_prior=None,  # SMP's initialisation
    ),
    # mini-MIAS, not in the thesis: CBIS-DDSM's recipe, both being scanned-film mammograms with
    # masses; it has only dozens of masses, so smaller batches give more steps per epoch.
    "mias": dict(CBIS, batch_size=8),
    # Your own mammograms (data.py's "folder"): CBIS-DDSM's recipe; --num-classes K for class masks
    "folder": dict(CBIS),
    "synthetic": dict(  # the demo, about a minute on 2 CPU cores; no thesis number
        encoder="resnet34", decoder="fusion",  # the thesis' architecture...
        decoder_channels=(128, 64, 32, 16, 16),  # ...with a narrow decoder: 25.6M, not 89.6M
        weights=None,  # no download: random initialisation
        loss="jaccard+focal_tversky", image_size=64, lr=2e-3, schedule="0:2e-3,3:6e-4,4:2e-4",
        epochs=5,
        batch_size=16,  # 5 x 400 images of 64 x 64, from scratch: under a minute on 2 idle cores
        in_channels=1,  # native grayscale: a mammogram has one channel
        # No augmentation: in 125 steps it slows learning more than it regularises (docs/speed.md).
        train_split="train", augment=False, num_classes=1,
        # The head starts at a 2% foreground probability (RetinaNet's prior), not 50%: the first
        # epochs learn masses instead of unlearning "everything is a mass" (docs/speed.md)
        foreground_prior=0.02,
    ),
}
SOURCE = {"cbis": "Table 1, CBIS-DDSM", "voc": "Table 1, Pascal VOC",
          "mias": "ours, no thesis number",
          "folder": "your own images/ and masks/, CBIS-DDSM's recipe",
          "synthetic": "the demo: offline, ResNet-34 + a narrow fusion decoder at 64 x 64, about a "
                       "minute on 2 CPU cores"}


# The other settings a run takes from its --resume checkpoint (or these defaults) unless a flag
# gives them again; the windowing's are nnU-Net's.
RUN_DEFAULTS = {"data_root": None, "seed": 0, "amp": "none", "weight_decay": 0.01, "clip_grad": 0.0,
                "limit": None, "eval_batch_size": None, "fold": None, "cache_dir": None,
                "patch_size": None, "lesion_patches": 1 / 3, "overlap": 0.5, "val_every": 1}


def apply_recipe(args, saved: dict) -> list[str]:
    """Fill each setting no flag gave from `saved` (the --resume run's), else the defaults; parse
    them. Returns the flags that differ from the checkpoint's; ValueError names a bad flag."""
    lr_flag = args.lr  # an explicit --lr rescales the schedule; else --schedule is taken as is
    for key, default in {**RUN_DEFAULTS, **PRESETS[args.dataset]}.items():
        if getattr(args, key, None) is None:
            setattr(args, key, saved[key] if key in saved else default)
    try:
        channels = args.decoder_channels
        args.decoder_channels = ([int(c) for c in channels.split(",")]
                                 if isinstance(channels, str) else channels)
    except ValueError:
        raise ValueError(f"--decoder-channels {channels!r}: write integers such as "
                         f"128,64,32,16,16") from None
    args.decoder_channels = list(args.decoder_channels) if args.decoder_channels else None
    if args.decoder_channels is not None and (len(args.decoder_channels) != 5
                                              or min(args.decoder_channels) < 1):
        raise ValueError(f"--decoder-channels {channels}: five positive widths, deepest level "
                         "first, e.g. 128,64,32,16,16")
    # checked before any weights are downloaded
    if args.data_root is not None and not Path(args.data_root).is_dir():
        raise ValueError(f"--data-root {args.data_root}: folder not found")
    for flag, value in (("--lr", lr_flag), ("--weight-decay", args.weight_decay)):
        if value is not None and value < 0:
            raise ValueError(f"{flag} {value}: must be >= 0")
    args.weights = None if str(args.weights).lower() == "none" else args.weights
    prior = args.foreground_prior
    try:
        args.foreground_prior = None if str(prior).lower() == "none" else float(prior)
    except ValueError:
        raise ValueError(f"--foreground-prior {prior}: a probability such as 0.02, "
                         "or none") from None
    if args.foreground_prior is not None and not 0 < args.foreground_prior < 1:
        raise ValueError(f"--foreground-prior {prior}: a probability in (0, 1), or none")
    if args.foreground_prior is not None and args.num_classes != 1:
        raise ValueError(f"--foreground-prior {prior}: for a one-logit (binary) head; with "
                         f"--num-classes {args.num_classes} leave it out or write none")
    if isinstance(args.fold, str):  # "2/5" -> [2, 5]: validate on fold 2 of 5
        text, parts = args.fold, args.fold.split("/")
        args.fold = ([int(p) for p in parts]
                     if len(parts) == 2 and all(p.isdigit() for p in parts) else None)
        if args.fold is None or not args.fold[0] < args.fold[1] or args.fold[1] < 2:
            raise ValueError(f"--fold {text}: write K/N, fold K (0..N-1) of N >= 2 folds, "
                             f"e.g. 0/5")
    args.eval_batch_size = args.eval_batch_size or args.batch_size
    args.schedule = f"0:{args.lr}" if args.schedule == "constant" else args.schedule
    args.milestones, args.lr_factors, args.lr = parse_schedule(args.schedule, lr_flag)
    # As run, every digit kept (repr): a resumed run rebuilds exactly this schedule from the string
    args.schedule = ",".join(f"{m}:{args.lr * f!r}"
                             for m, f in zip(args.milestones, args.lr_factors))
    return sorted(k for k in RUN_DEFAULTS.keys() | PRESETS[args.dataset].keys()
                  if k in saved and getattr(args, k) != saved[k])


class PiecewiseConstant:
    """LambdaLR's factor of an epoch: that of the last milestone <= epoch (Table 1's schedule).
    An object, not a lambda, so LambdaLR's state_dict stores its lists and resume restores them."""

    def __init__(self, milestones: list[int], factors: list[float]):
        self.milestones, self.factors = milestones, factors

    def __call__(self, epoch: int) -> float:
        return self.factors[sum(m <= epoch for m in self.milestones) - 1]


def parse_schedule(text: str, lr: float | None) -> tuple[list[int], list[float], float]:
    """'0:5e-4,40:1e-4' -> (milestones, factors of the first LR, base LR: `lr`, else the first)."""
    try:
        pairs = [item.split(":") for item in text.split(",")]
        milestones, lrs = [int(e) for e, _ in pairs], [float(v) for _, v in pairs]
    except ValueError:
        raise ValueError(f"--schedule {text!r}: write EPOCH:LR pairs such as 0:5e-4,40:1e-4, "
                         f"or constant") from None
    if milestones[0] != 0 or milestones != sorted(set(milestones)) or min(lrs) <= 0:
        raise ValueError(f"--schedule {text!r}: epochs must start at 0 and increase, learning "
                         f"rates be > 0")
    return milestones, [v / lrs[0] for v in lrs], lrs[0] if lr is None else lr
