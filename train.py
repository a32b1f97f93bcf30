"""Training script of the thesis (§4.3, Table 1): one file that trains the same way on a CPU, one GPU or many.

    python train.py                      # demo: synthetic mammograms on the CPU, no download, under 5 minutes
    python train.py --dataset cbis --data-root DATA/CBIS-DDSM                 # Table 2 (A), one GPU
    torchrun --standalone --nproc_per_node=4 train.py --dataset cbis --data-root DATA/CBIS-DDSM --batch-size 4
    python train.py --dataset cbis --data-root DATA/CBIS-DDSM --data-parallel    # DataParallel over all GPUs
    python train.py --resume runs/cbis/last.pt                   # continue exactly; the other flags come back too
    python train.py --resume runs/cbis/best.pt --eval-only       # validation metrics of a checkpoint

Each dataset has a recipe in recipes.py's PRESETS (Table 1's two columns, plus ours for mini-MIAS and the demo);
every entry can be overridden by its flag. Shaped like torchvision's references/segmentation: get_args_parser(), a
linear main(args), plain train_one_epoch() and evaluate(). Several processes come from torchrun's environment
variables only (RANK, WORLD_SIZE, LOCAL_RANK; add --nnodes/--rdzv-endpoint for several machines); NCCL on GPUs, gloo
on CPUs.

What a run leaves in --out-dir (written by rank 0 only): config.json before step 0, log.jsonl (one line per epoch),
last.pt after every epoch (and once before step 0, so a run killed at any moment leaves a loadable last.pt), best.pt
on the best validation Dice (pooled over the set; mIoU for VOC) and panels/*.png. Checkpoints hold only tensors and
primitives (torch.load(weights_only=True) opens them) and are written to a temporary file, then renamed.

Exactness. Validation shards the set rank::world without padding, all-reduces counts and asserts every image was
scored once, so metrics do not depend on the number of processes. Randomness has no hidden state: the shuffle is a
function of (seed, epoch) and each item's augmentation of (seed, epoch, index), so a resumed run and any number of
DataLoader workers (persistent or not) see the same stream: a run stopped after epoch k and resumed ends with
bit-identical weights on the CPU. Exit codes: 2 for a bad flag or data problem (one line on stderr), 3 for a
non-finite loss (last.pt keeps the last good epoch). On a CPU shared with other jobs, OMP_NUM_THREADS=1 can be
several times faster than PyTorch's one thread per core, whose threads then wait for each other.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from benchmark import resolve_device
from checkpoints import (RESUME_ENTRIES, CheckpointError, atomic_save, git_commit, model_from_checkpoint,
                         read_checkpoint, share_file, versions)
from data import DataError, build_dataset, error_line
from losses import build_loss
from metrics import build_metrics, predict_labels
from model import WeightsError, build_model, load_encoder_weights
from predict import autocast, write_panel
from recipes import PRESETS, SOURCE, PiecewiseConstant, parse_schedule

# Other flags a resumed run takes from its checkpoint unless given again (as it takes every key of its preset).
RUN_DEFAULTS = {"data_root": None, "out_dir": None, "seed": 0, "amp": "none", "weight_decay": 0.01, "clip_grad": 0.0,
                "limit": None, "eval_batch_size": None}
NON_FINITE_EXIT = 3


class UsageError(Exception):
    """A bad flag or flag combination: one line on stderr, exit code 2."""


class NonFiniteLoss(Exception):
    """The loss became NaN or infinite: one line naming the epoch and step, exit code 3."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of argparse's usage block
        print(f"train.py: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    def preset(key: str) -> str:
        return "default: " + ", ".join(f"{name} {PRESETS[name][key]}" for name in PRESETS)

    p = _Parser(description=__doc__.split("\n\n")[0], add_help=add_help,
                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    add = p.add_argument
    add("--dataset", choices=list(PRESETS), help="recipe and data: " + "; ".join(f"{k} ({v})" for k, v in
                                                                                     SOURCE.items()) +
        " (default: the --resume checkpoint's, else synthetic). With --resume, every flag not given is the "
        "checkpoint's")
    add("--data-root", help="dataset folder (cbis: the NBIA download and its CSVs; voc: holds VOCdevkit)")
    add("--encoder", choices=["resnet34", "bit_r50x1"], help=f"Table 1 'Encoder'; {preset('encoder')}")
    add("--decoder", choices=["fusion", "unet", "unetplusplus"], help="fusion = §4.2 (row A of Tables 2-4), unet / "
        f"unetplusplus = the SMP baselines (rows B, C); {preset('decoder')}")
    add("--decoder-channels", help="decoder widths, deepest first, e.g. 128,64,32,16,16; "
        f"{preset('decoder_channels')} (None: the widths that match Tables 2 and 4)")
    add("--weights", help="encoder weights: imagenet (downloaded once; model.WEIGHT_URLS lists the others, e.g. "
        f"imagenet-timm), none (random: Table 3 row B) or a .pth/.npz path; {preset('weights')}")
    add("--in-channels", type=int, choices=[1, 3], help=f"image channels; {preset('in_channels')}")
    add("--loss", help=f"'+'-joined losses of losses.py, Table 1 'Loss Function'; {preset('loss')}")
    add("--epochs", type=int, help=f"Table 1 'Num epochs'; {preset('epochs')}")
    add("--batch-size", type=int, help="images per step and process (per GPU under torchrun; split over the GPUs "
        f"with --data-parallel); not given in the thesis, so ours; {preset('batch_size')}")
    add("--eval-batch-size", type=int, help="images per validation step (default: --batch-size)")
    add("--image-size", type=int, help=f"side in pixels, a multiple of 32, Table 1; {preset('image_size')}")
    add("--lr", type=float, help="AdamW (amsgrad) learning rate at epoch 0, Table 1; it rescales the whole "
        f"--schedule; {preset('lr')}")
    add("--schedule", help="piecewise-constant LR over epochs as EPOCH:LR,... (Table 1 'Scheduler'), or constant; "
        f"{preset('schedule')}")
    add("--weight-decay", type=float, help="AdamW weight decay; not in the thesis, so PyTorch's default "
        "(default: 0.01)")
    add("--clip-grad", type=float, help="max gradient norm, 0 = off (default: 0)")
    add("--train-split", help=f"training split (voc: train or trainaug); {preset('train_split')}")
    add("--augment", action=argparse.BooleanOptionalAction, help="random augmentation of the training images "
        "(data.py: augment_mammogram for mammograms, transform_voc for VOC); not in the thesis, so ours; "
        f"{preset('augment')}")
    add("--amp", choices=["none", "bf16", "fp16"], help="autocast precision, a gradient scaler only "
        "for fp16 (default: none, as far as we know the thesis' V100s ran fp32; bf16 is fast and safe on A100/H100)")
    add("--compile", action="store_true", help="torch.compile the model")
    add("--data-parallel", action="store_true", help="nn.DataParallel over all visible GPUs of one process (the "
        "thesis trained on 4 V100s, §4.3, without saying how); torchrun (DDP) is faster")
    add("--sync-bn", action="store_true", help="SyncBatchNorm across torchrun processes (default: off)")
    add("--workers", type=int, default=2, help="DataLoader worker processes per training process (default: 2)")
    add("--seed", type=int, help="seed of the initialisation, shuffle and augmentation (default: 0)")
    add("--out-dir", help="where checkpoints and logs go (default: runs/<dataset>)")
    add("--resume", help="checkpoint to continue from exactly (or to evaluate, with --eval-only)")
    add("--eval-only", action="store_true", help="evaluate the --resume checkpoint on the val split, then stop")
    add("--limit", type=int, help="use only the first N items of each split (smoke tests)")
    add("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    add("--print-freq", type=int, default=20, help="steps between log lines (default: 20)")
    add("--panels", type=int, default=4, help="validation images drawn as prediction panels at the end (default: 4)")
    add("--json", help="also write the final validation metrics to this JSON file")
    return p


# ------------------------------------------------------------------------------------------------ small helpers
def seed_for(*numbers: int) -> int:
    """A 63-bit seed mixing several integers (numpy's SeedSequence), e.g. (seed, epoch, index)."""
    return int(np.random.SeedSequence(list(numbers)).generate_state(2, np.uint64)[0] >> np.uint64(1))


class EpochSampler(DistributedSampler):
    """DistributedSampler yielding (epoch, index): workers cannot see set_epoch (persistent ones keep an old copy
    of the dataset), so the epoch travels with the index."""

    def __iter__(self):
        return ((self.epoch, index) for index in super().__iter__())


class SeededItems(Dataset):
    """Item (epoch, index) of `dataset`, drawn with torch's RNG seeded from (seed, epoch, index): augmentations are
    a pure function of those, whatever the workers, processes or resumes. The caller's RNG state is left as it was."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_for(self.seed, epoch, index))
            return self.dataset[index]


def to_device(images: torch.Tensor, masks: torch.Tensor, device: torch.device):
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    return (images.to(device, non_blocking=True, memory_format=memory_format), masks.to(device, non_blocking=True))


class AutocastReplica(nn.Module):
    """Runs `module` under --amp's autocast. nn.DataParallel runs each replica in a thread of its own, and autocast's
    dtype is per thread: without this, --amp bf16 replicas would run CUDA's default autocast dtype, fp16, unscaled."""

    def __init__(self, module: nn.Module, amp: str):
        super().__init__()
        self.module, self.amp = module, amp

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with autocast(images.device, self.amp):
            return self.module(images)


# --------------------------------------------------------------------------------------------- training loop
def train_one_epoch(model, criterion, optimizer, scaler, loader, device, epoch: int, args) -> dict:
    """One pass over the training set; prints a line every --print-freq steps; returns the mean loss and terms."""
    model.train()
    is_main, tty = not dist.is_initialized() or dist.get_rank() == 0, sys.stdout.isatty()
    world = dist.get_world_size() if dist.is_initialized() else 1
    steps, totals, window, start = len(loader), {}, [0.0, 0.0, 0], time.time()  # window: data s, step s, steps
    tick = time.time()
    for i, (images, masks) in enumerate(loader):
        data_time = time.time() - tick  # waiting for the loader: > 0 means the workers cannot keep up
        images, masks = to_device(images, masks, device)
        with autocast(device, args.amp):
            loss, terms = criterion.forward_with_terms(model(images), masks)  # the loss computes in float32
        logged = torch.stack([loss.detach(), *(t.detach() for t in terms.values())])
        if world > 1:  # every rank must learn of a NaN on any rank, or the others hang in the next all-reduce
            dist.all_reduce(logged)
            logged /= world
        if not math.isfinite(logged[0].item()):
            raise NonFiniteLoss(f"non-finite loss ({logged[0].item()}) at epoch {epoch}, step "
                                f"{epoch * steps + i + 1} ({i + 1} of {steps} in the epoch); stopped before the update")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if args.clip_grad > 0:
            scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
            nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        for name, value in zip(["loss", *terms], logged.tolist()):
            totals[name] = totals.get(name, 0.0) + value
        window[0], window[1], window[2] = window[0] + data_time, window[1] + time.time() - tick, window[2] + 1
        tick = time.time()
        done = epoch * steps + i + 1
        if is_main and ((i + 1) % args.print_freq == 0 or i + 1 == steps or tty):
            step_time = (time.time() - start) / (i + 1)
            eta = datetime.timedelta(seconds=round(step_time * (args.epochs * steps - done)))
            parts = " ".join(f"{k} {v:.4f}" for k, v in zip(terms, logged.tolist()[1:]))
            line = (f"epoch {epoch} step {done} ({i + 1}/{steps}) loss {logged[0].item():.4f} ({parts}) "
                    f"lr {optimizer.param_groups[0]['lr']:.2e} img/s {window[2] * len(images) * world / window[1]:.1f} "
                    f"data {1000 * window[0] / window[2]:.0f}ms eta {eta}")
            if device.type == "cuda":
                line += f" mem {torch.cuda.max_memory_allocated(device) / 2 ** 30:.1f}GiB"
            if (i + 1) % args.print_freq == 0 or i + 1 == steps:
                print(("\r\x1b[2K" if tty else "") + line, flush=True)
                window = [0.0, 0.0, 0]
            else:  # a terminal: redraw one live line between the fixed-format lines
                print("\r\x1b[2K" + line[:200], end="", flush=True)
    return {name: value / steps for name, value in totals.items()}


@torch.no_grad()
def evaluate(model, loader, device, amp: str, num_logits: int):
    """Exact metrics over this rank's share of the set, then reduced over all ranks (metrics.py)."""
    model.eval()
    metrics = build_metrics(num_logits)
    for images, masks in loader:
        images, masks = to_device(images, masks, device)
        with autocast(device, amp):
            logits = model(images)
        metrics.update(predict_labels(logits.float()), masks)
    metrics.reduce()
    return metrics


def all_background_scores(loader, num_logits: int) -> dict:
    """The metrics of a model that predicts background everywhere: the floor a trained model must clear."""
    metrics = build_metrics(num_logits)
    for _, masks in loader:
        metrics.update(torch.zeros_like(masks), masks)
    metrics.reduce()
    return metrics.summary()


@torch.no_grad()
def write_panels(model, dataset, count: int, folder: Path, device, amp: str) -> list[Path]:
    """image | ground truth | prediction PNGs (predict.write_panel) of the first `count` validation images."""
    model.eval()
    mean, std = (torch.tensor(model.config[k])[:, None, None] for k in ("mean", "std"))
    paths = []
    for index in range(min(count, len(dataset))):
        image, mask = dataset[index]
        with autocast(device, amp):
            prediction = predict_labels(model(image[None].to(device)).float())[0].cpu().numpy()
        pixels = (image * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()  # (H, W, C) in [0, 1]: un-normalised
        paths.append(folder / f"{dataset.ids[index]}.png")
        write_panel(paths[-1], pixels[..., 0] if pixels.shape[2] == 1 else pixels, mask.numpy(),
                    [(model.config["decoder"], prediction)], model.config["num_classes"])
    return paths


# ---------------------------------------------------------------------------------------------------------- main
def resolve_args(args) -> list[str]:
    """Fill unset flags (from the --resume checkpoint's run if it is of the same dataset, else from the preset) and
    check every combination we can before touching data. Returns the flags given that differ from the checkpoint's."""
    saved = read_checkpoint(args.resume, needs=RESUME_ENTRIES, flag="--resume", mmap=True)["args"] if args.resume \
        else {}
    args.dataset = args.dataset or saved.get("dataset", "synthetic")
    saved = saved if saved.get("dataset") == args.dataset else {}
    lr_flag = args.lr  # an explicit --lr rescales the schedule; without it an explicit --schedule is taken as is
    for key, default in {**RUN_DEFAULTS, **PRESETS[args.dataset]}.items():
        if getattr(args, key, None) is None:
            setattr(args, key, saved[key] if key in saved else default)
    try:
        channels = args.decoder_channels
        args.decoder_channels = [int(c) for c in channels.split(",")] if isinstance(channels, str) else channels
    except ValueError:
        raise UsageError(f"--decoder-channels {channels!r}: write integers such as 128,64,32,16,16") from None
    args.decoder_channels = list(args.decoder_channels) if args.decoder_channels else None
    args.weights = None if str(args.weights).lower() == "none" else args.weights
    args.eval_batch_size = args.eval_batch_size or args.batch_size
    args.out_dir = args.out_dir or os.path.join("runs", args.dataset)
    args.schedule = f"0:{args.lr}" if args.schedule == "constant" else args.schedule
    try:
        args.milestones, args.lr_factors, args.lr = parse_schedule(args.schedule, lr_flag)
    except ValueError as error:
        raise UsageError(str(error)) from None
    args.schedule = ",".join(f"{m}:{args.lr * f:g}" for m, f in zip(args.milestones, args.lr_factors))  # as run
    problems = [
        (args.eval_only and not args.resume, "--eval-only needs --resume CHECKPOINT (the weights to evaluate)"),
        (args.data_parallel and "RANK" in os.environ, "--data-parallel is for one process; under torchrun each "
                                                      "process already drives one GPU (DDP): drop one of the two"),
        (args.image_size % 32 != 0, f"--image-size {args.image_size} must be a multiple of 32 (the encoder's "
                                    f"output stride), e.g. {max(32, round(args.image_size / 32) * 32)}"),
        (min(args.batch_size, args.eval_batch_size, args.epochs, args.print_freq, args.limit or 1) < 1,
         "--batch-size, --eval-batch-size, --epochs, --print-freq and --limit must be >= 1"),
        (args.workers < 0, "--workers must be >= 0")]
    for failed, message in problems:
        if failed:
            raise UsageError(message)
    try:
        build_loss(args.loss, args.num_classes)
    except ValueError as error:
        raise UsageError(f"--loss: {error}") from None
    return [f"--{k.replace('_', '-')} {getattr(args, k)} (checkpoint: {saved[k]})" for k in RUN_DEFAULTS.keys() |
            PRESETS[args.dataset].keys() if k in saved and getattr(args, k) != saved[k]]


def setup_device(args) -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's environment variables; initialises the process group."""
    torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank, world, local_rank = (int(os.environ.get(k, 0)) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)  # an index, for set_device and DDP
    problems = [(args.amp == "fp16" and device.type != "cuda", "--amp fp16 needs a CUDA GPU; on the CPU use bf16 or "
                                                               "none"),
                (args.sync_bn and device.type != "cuda", "--sync-bn needs CUDA GPUs"),
                (args.data_parallel and device.type != "cuda", "--data-parallel needs CUDA GPUs; on the CPU use "
                                                               "torchrun --nproc_per_node=N"),
                ((torchrun or args.data_parallel) and args.device.startswith("cuda:"),
                 f"--device {args.device} names one GPU, but torchrun gives each process the GPU of its LOCAL_RANK "
                 "and --data-parallel uses all visible GPUs: use --device cuda (choose GPUs with "
                 "CUDA_VISIBLE_DEVICES)")]
    for failed, message in problems:
        if failed:
            raise UsageError(message)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # every batch has one shape: time cuDNN's algorithms once, keep the best
    if torchrun:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (rank, world, device) if torchrun else (0, 1, device)


def main(args) -> dict:
    """Train (or, with --eval-only, evaluate) as `args` say; returns the last validation summary."""
    changed = resolve_args(args)
    rank, world, device = setup_device(args)
    is_main, out_dir = rank == 0, Path(args.out_dir)
    log = print if is_main else (lambda *a, **k: None)
    torch.manual_seed(args.seed)  # the initialisation; the data streams have their own seeds
    checkpoint = read_checkpoint(args.resume, needs=RESUME_ENTRIES, flag="--resume") if args.resume else None
    if checkpoint:  # the checkpoint says which network it holds: no architecture flag needed
        model = model_from_checkpoint(checkpoint, args.resume)
    else:
        options = {"decoder_channels": args.decoder_channels} if args.decoder_channels else {}
        model = build_model(args.encoder, args.decoder, args.num_classes, args.in_channels, None, **options)
    config, metric_name = model.config, "dice_pooled" if model.config["num_classes"] == 1 else "mean_iou"

    # Data, normalised as the model's encoder expects (model.config), checked before any download.
    common = dict(in_channels=config["in_channels"], mean=config["mean"], std=config["std"], seed=args.seed,
                  limit=args.limit, verbose=is_main)
    val_set = build_dataset(args.dataset, args.data_root, "val", args.image_size, **common)
    train_set = None if args.eval_only else build_dataset(args.dataset, args.data_root, args.train_split,
                                                          args.image_size, augment=args.augment, **common)
    for split, dataset in (("val", val_set), (args.train_split, train_set)):
        if dataset is not None and len(dataset) == 0:
            raise DataError(f"{args.dataset} {split}: no images found under {args.data_root}; check --data-root")
    if val_set.num_classes != config["num_classes"]:
        raise UsageError(f"{args.dataset} has {val_set.num_classes} classes, the checkpoint {config['num_classes']}")
    if args.weights and not checkpoint:
        load_encoder_weights(model.encoder, config["encoder"], args.weights, mean=config["mean"],
                             std=config["std"])
    model.to(device, memory_format=torch.channels_last if device.type == "cuda" else torch.contiguous_format)
    loader_options = dict(num_workers=args.workers, pin_memory=device.type == "cuda",
                          persistent_workers=args.workers > 0)
    val_loader = DataLoader(Subset(val_set, range(rank, len(val_set), world)), batch_size=args.eval_batch_size,
                            **loader_options)  # rank::world, no padding: every image is scored exactly once

    criterion = build_loss(args.loss, config["num_classes"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                                  amsgrad=True)  # Table 1 "Optimizer": AdamW with amsgrad
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, PiecewiseConstant(args.milestones, args.lr_factors))
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    start_epoch, best = 0, None
    if checkpoint:
        start_epoch, best = checkpoint["epoch"] + 1, checkpoint["best_metric"]
        if not args.eval_only:
            optimizer.load_state_dict(checkpoint["optimizer"])
            # The schedule is the run's (the checkpoint's unless --lr or --schedule was given again).
            scheduler.load_state_dict(dict(checkpoint["scheduler"], base_lrs=[args.lr], lr_lambdas=[
                {"milestones": args.milestones, "factors": args.lr_factors}]))
            optimizer.param_groups[0]["lr"] = args.lr * scheduler.lr_lambdas[0](start_epoch)
            if checkpoint["scaler"]:  # empty unless saved with fp16
                scaler.load_state_dict(checkpoint["scaler"])
            torch.set_rng_state(checkpoint["rng"]["torch"])
        changes = f"; changed: {', '.join(changed)}" if changed and not args.eval_only else ""
        log(f"resumed {args.resume} (epoch {checkpoint['epoch']}){changes}")

    net = nn.SyncBatchNorm.convert_sync_batchnorm(model) if args.sync_bn and world > 1 else model
    net = torch.compile(net) if args.compile else net
    eval_net = net  # each rank scores its own shard: no DDP wrapper, whose forward would wait for the others
    if world > 1:
        # SMP's Unet++ keeps an scSE block on its last level, which has no skip for it to attend: its parameters
        # get no gradient, and DDP must be told to expect that.
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                                  find_unused_parameters=config["decoder"] == "unetplusplus")
    elif args.data_parallel:
        net = eval_net = nn.DataParallel(AutocastReplica(net, args.amp))

    def validate() -> dict:
        if world > 1:  # BN statistics drift apart on each rank's last batch: score (and save) rank 0's
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)
        summary = evaluate(eval_net, val_loader, device, args.amp, config["num_classes"]).summary()
        assert summary["images"] == len(val_set), f"scored {summary['images']} of {len(val_set)} images"
        return summary

    if args.eval_only:
        summary = validate()
        log(f"eval {args.resume}: " + " ".join(f"{k} {v:.4f}" for k, v in summary.items()))
        if is_main and args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2))
        return summary

    train_loader = DataLoader(SeededItems(train_set, args.seed), batch_size=args.batch_size, drop_last=True,
                              sampler=EpochSampler(train_set, world, rank, shuffle=True, seed=args.seed),
                              **loader_options)
    if len(train_loader) == 0:
        raise UsageError(f"{args.dataset} {args.train_split} has {len(train_set)} images, fewer than one batch of "
                         f"--batch-size {args.batch_size} per process; lower --batch-size")
    if start_epoch >= args.epochs:
        raise UsageError(f"{args.resume} already finished epoch {start_epoch - 1}; pass --epochs > {start_epoch}")
    run = {"args": vars(args), "versions": versions(), "git_commit": git_commit(), "world_size": world,
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "parameters": sum(p.numel() for p in model.parameters()), "effective_batch_size": args.batch_size * world}
    log(f"{config['encoder']} + {config['decoder']}: {run['parameters'] / 1e6:.2f}M parameters on {run['device']} "
        f"x {world} process(es); effective batch {args.batch_size * world}, lr {args.lr:g}; {len(train_set)} train /"
        f" {len(val_set)} val images, {len(train_loader)} steps per epoch, epochs {start_epoch}..{args.epochs - 1}")

    def save(epoch: int, summary: dict | None) -> None:
        atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                     "scheduler": scheduler.state_dict(), "epoch": epoch, "step": (epoch + 1) * len(train_loader),
                     "best_metric": best, "metric_name": metric_name, "metrics": summary, "model_config": config,
                     "args": vars(args), "versions": run["versions"], "rng": {"torch": torch.get_rng_state()}},
                    out_dir / "last.pt")

    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(run, indent=2))
        if checkpoint is None:
            (out_dir / "log.jsonl").unlink(missing_ok=True)  # a fresh run starts a fresh log
            save(-1, None)  # the starting point, so a run killed during epoch 0 leaves a loadable last.pt
    started = time.time()
    for epoch in range(start_epoch, args.epochs):
        train_loader.sampler.set_epoch(epoch)
        epoch_start, lr = time.time(), optimizer.param_groups[0]["lr"]
        try:
            losses = train_one_epoch(net, criterion, optimizer, scaler, train_loader, device, epoch, args)
        except NonFiniteLoss as error:
            kept = f"epoch {epoch - 1}" if epoch > 0 else "the starting weights"
            raise NonFiniteLoss(f"{error}; last good checkpoint: {out_dir / 'last.pt'} ({kept}). Try --amp bf16 or "
                                "none, a lower --lr, or --clip-grad 1") from None
        scheduler.step()
        summary = validate()
        improved = best is None or summary[metric_name] > best
        best = summary[metric_name] if improved else best
        if is_main:
            save(epoch, summary)
            if improved:
                share_file(out_dir / "last.pt", out_dir / "best.pt")
            record = {"epoch": epoch, "lr": lr, **{f"train_{k}": v for k, v in losses.items()},
                      **{f"val_{k}": v for k, v in summary.items()}, "seconds": round(time.time() - epoch_start, 1)}
            with open(out_dir / "log.jsonl", "a") as file:
                file.write(json.dumps(record) + "\n")
        log(f"epoch {epoch} val {metric_name} {summary[metric_name]:.4f} (best {best:.4f}) " +
            " ".join(f"{k} {v:.4f}" for k, v in summary.items() if k != metric_name) +
            f" | {time.time() - epoch_start:.0f}s" + (" | saved best.pt" if improved else ""))

    floor = all_background_scores(val_loader, config["num_classes"])
    panels = write_panels(model, val_set, args.panels, out_dir / "panels", device, args.amp) if is_main else []
    if metric_name == "dice_pooled":
        scores = (f"Dice {summary['dice_pooled']:.4f} pooled over the {len(val_set)} validation images "
                  f"({summary['dice_mean_per_image']:.4f} as a mean per image), best {best:.4f}; predicting all "
                  f"background scores {floor['dice_pooled']:.4f} ({floor['dice_mean_per_image']:.4f} per image)")
    else:
        scores = (f"mIoU {summary['mean_iou']:.4f} on the {len(val_set)} validation images, best {best:.4f}; "
                  f"predicting all background scores {floor['mean_iou']:.4f}")
    log(f"done in {time.time() - started:.0f}s. After epoch {args.epochs - 1}: {scores}\ncheckpoints: "
        f"{out_dir / 'best.pt'} (best), {out_dir / 'last.pt'} (last)\npanels: " + " ".join(map(str, panels)))
    if is_main and args.json:
        Path(args.json).write_text(json.dumps({"final": summary, "best": best, "all_background": floor}, indent=2))
    return summary


def cli(argv: list[str] | None = None) -> int:
    """Parse, run main(), and turn the errors a user can cause into one line on stderr and an exit code."""
    args = get_args_parser().parse_args(argv)
    try:
        main(args)
        return 0
    except (UsageError, DataError, WeightsError, CheckpointError) as error:
        code, message = 2, error_line(error)
    except NonFiniteLoss as error:
        code, message = NON_FINITE_EXIT, error_line(error)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"train.py: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(cli())
