"""Training script of the thesis (§4.3, Table 1): one file that trains the same way on a CPU, one GPU or many.

    python train.py                      # demo: synthetic mammograms on the CPU, no download, about a minute
    python train.py --dataset cbis --data-root DATA/CBIS-DDSM                 # Table 2 (A), one GPU
    python train.py --dataset cbis --data-root DATA/CBIS-DDSM --image-size 1024 --patch-size 256
    torchrun --standalone --nproc_per_node=4 train.py --dataset cbis --data-root DATA/CBIS-DDSM --batch-size 4
    python train.py --dataset cbis --data-root DATA/CBIS-DDSM --data-parallel    # DataParallel over all GPUs
    python train.py --resume runs/cbis/last.pt                   # continue exactly; the other flags come back too
    python train.py --resume runs/cbis/best.pt --eval-only       # validation metrics of a checkpoint

Each dataset has a recipe in recipes.py (Table 1's columns, ours for the others); a flag overrides its entry. Shaped
like torchvision's references: get_args_parser(), a linear main(args), plain train_one_epoch() and evaluate(). Several
processes come from torchrun's environment variables only; NCCL on GPUs, gloo on CPUs. The run's folder is described
in runs.py; the README's "Exactness" says why a resumed run ends bit-identical and why no metric depends on the number
of processes. Exit codes: 2 for a bad flag or data problem (one line on stderr), 3 for a non-finite loss.
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Subset

from engine.checkpoints import (RESUME_ENTRIES, CheckpointError, model_from_checkpoint, read_checkpoint,
                                restore_training_state, training_checkpoint)
from data import DataError, build_dataset, prepare_datasets
from losses import WithLoss, build_loss
from metrics import all_background_scores, build_metrics, predict_labels
from model import WeightsError, build_model, load_encoder_weights
from engine.panels import write_dataset_panels
from recipes import PRESETS, SOURCE, PiecewiseConstant, apply_recipe
from engine.run_folder import RunFolder
from readers.sampling import EpochSampler, SeededItems
from engine.devices import (AMP_DTYPES, AutocastReplica, autocast, default_workers, device_name, git_commit,
                            init_distributed, resolve_device, to_device, versions)
from engine.cli import ArgumentParser, Progress, UsageError, check_writable_file, run_command
from readers.atomic import DiskFullError, write_json
from engine.measure import count_parameters
from engine.windows import sliding_window

FIXED_ON_RESUME = ("encoder", "decoder", "decoder_channels", "in_channels", "num_classes", "weights")  # its network
NON_FINITE_EXIT = 3


class NonFiniteLoss(Exception):
    """The loss became NaN or infinite: one line naming the epoch and step, exit code 3 (last.pt is the last good)."""


def preset(key: str) -> str:
    """The defaults of a flag, one per recipe, for its --help."""
    return "default: " + ", ".join(f"{name} {PRESETS[name][key]}" for name in PRESETS)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = ArgumentParser(prog="train.py", description=__doc__.split("\n\n")[0], add_help=add_help,
                       epilog=__doc__.split("\n\n", 1)[1])
    add = p.add_argument
    add("--dataset", choices=list(PRESETS), help="recipe and data: " + "; ".join(f"{k} ({v})" for k, v in
                                                                                     SOURCE.items()) +
        " (default: the --resume checkpoint's, else synthetic). With --resume, every setting of the recipe and the "
        "run not given is the checkpoint's (recipes.py); how it runs (--device, --workers, --compile...) is not")
    add("--data-root", help="dataset folder (cbis: the NBIA download and its CSVs; mias: Info.txt and images; folder: "
        "images/ and masks/; voc: holds VOCdevkit)")
    add("--fold", metavar="K/N", help="cross-validation: validate on fold K of N, by patient (crossval.py)")
    add("--cache-dir", help="folder of the preprocessed mammograms (default: data.cache_folder's)")
    add("--encoder", choices=["resnet34", "bit_r50x1"], help=f"Table 1 'Encoder'; {preset('encoder')}")
    add("--decoder", choices=["fusion", "unet", "unetplusplus"], help="fusion = §4.2 (row A of Tables 2-4), unet / "
        f"unetplusplus = the SMP baselines (rows B, C); {preset('decoder')}")
    add("--decoder-channels", help="decoder widths, deepest first, e.g. 128,64,32,16,16; "
        f"{preset('decoder_channels')} (None: the widths that match Tables 2 and 4)")
    add("--weights", help="encoder weights: imagenet (downloaded once; model.WEIGHT_URLS lists the others, e.g. "
        f"imagenet-timm), none (random: Table 3 row B) or a .pth/.npz path; {preset('weights')}")
    add("--in-channels", type=int, choices=[1, 3], help=f"image channels; {preset('in_channels')}")
    add("--num-classes", type=int, help="model outputs: 1 = a lesion logit (binary masks), K > 1 = classes (a folder "
        f"of class-index masks); {preset('num_classes')}")
    add("--loss", help=f"'+'-joined losses of losses.py, Table 1 'Loss Function'; {preset('loss')}")
    add("--epochs", type=int, help=f"Table 1 'Num epochs'; {preset('epochs')}")
    add("--batch-size", type=int, help="images per step and process (per GPU under torchrun; split over the GPUs "
        f"with --data-parallel); not given in the thesis, so ours; {preset('batch_size')}")
    add("--eval-batch-size", type=int, help="images per validation step (default: --batch-size)")
    add("--image-size", type=int, help=f"side in pixels, a multiple of 32, Table 1; {preset('image_size')}")
    add("--patch-size", type=int, help="train on crops of this side (a multiple of 32), "
        "validate by sliding windows (default: the whole image, as the thesis)")
    add("--lesion-patches", type=float, help="share of patches centred on a lesion (default: 1/3)")
    add("--overlap", type=float, help="overlap of the validation windows, in [0, 1) (default: 0.5)")
    add("--lr", type=float, help="AdamW (amsgrad) learning rate at epoch 0, Table 1; it rescales the whole "
        f"--schedule; {preset('lr')}")
    add("--schedule", help="piecewise-constant LR over epochs as EPOCH:LR,... (Table 1 'Scheduler'), or constant; "
        f"{preset('schedule')}")
    add("--weight-decay", type=float, help="AdamW weight decay; not in the thesis, so PyTorch's default "
        "(default: 0.01)")
    add("--clip-grad", type=float, help="max gradient norm, 0 = off (default: 0)")
    add("--train-split", help=f"training split (voc: train or trainaug); {preset('train_split')}")
    add("--augment", action=argparse.BooleanOptionalAction, help="random augmentation of the training images "
        "(mammograms.augment_mammogram, data.transform_voc for VOC); not in the thesis, so ours; "
        f"{preset('augment')}")
    add("--amp", choices=list(AMP_DTYPES), help="autocast precision, a gradient scaler only "
        "for fp16 (default: none, as far as we know the thesis' V100s ran fp32; bf16 is fast and safe on A100/H100)")
    add("--compile", action="store_true", help="the fast path on a GPU: the training step (model and loss) under "
        "torch.compile, and fused AdamW (README, \"Speed\": what each measured)")
    add("--data-parallel", action="store_true", help="nn.DataParallel over all visible GPUs of one process (the "
        "thesis trained on 4 V100s, §4.3, without saying how); torchrun (DDP) is faster")
    add("--sync-bn", action="store_true", help="SyncBatchNorm across torchrun processes (default: off)")
    add("--workers", type=int, default=default_workers(), help="DataLoader worker processes per training process "
        f"(default: the machine's cores, at most 4: {default_workers()} here)")
    add("--seed", type=int, help="seed of the initialisation, shuffle and augmentation (default: 0)")
    add("--out-dir", help="the run's folder (runs.py). Default: the --resume checkpoint's folder, else the first free "
        "runs/<dataset>, runs/<dataset>-2, ...; a given folder that holds a run is refused, unless --overwrite")
    add("--overwrite", action="store_true", help="replace the run in --out-dir (its log, checkpoints and panels)")
    add("--resume", help="checkpoint to continue from exactly (or to evaluate, with --eval-only)")
    add("--eval-only", action="store_true", help="evaluate the --resume checkpoint on the val split, then stop")
    add("--limit", type=int, help="use only the first N items of each split (smoke tests)")
    add("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    add("--print-freq", type=int, default=20, help="steps between log lines (default: 20)")
    add("--panels", type=int, default=4, help="validation images drawn as prediction panels at the end (default: 4)")
    add("--json", help="also write the final validation metrics to this JSON file (checked before training)")
    return p


def main(args) -> dict:
    """Train (or, with --eval-only, evaluate) as `args` say; returns the last validation summary."""
    changed = resolve_args(args)
    rank, world, device = setup_device(args)
    log = print if rank == 0 else (lambda *a, **k: None)
    checkpoint = read_checkpoint(args.resume, needs=RESUME_ENTRIES, flag="--resume") if args.resume else None
    model = build_network(args, checkpoint, rank, device)
    train_set, val_set, train_loader, val_loader = build_loaders(args, model.config, rank, world, device)
    criterion = build_loss(args.loss, model.config["num_classes"], distributed=world > 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, amsgrad=True,
                                  fused=args.compile and device.type == "cuda")  # Table 1: AdamW with amsgrad
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, PiecewiseConstant(args.milestones, args.lr_factors))
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    step, eval_net = wrap_for_devices(model, criterion, args, world, device)
    metric_name = "dice_mean_per_image" if model.config["num_classes"] == 1 else "mean_iou"  # README, "Metrics"
    windows = dict(window=args.patch_size, overlap=args.overlap)  # patches: validate by windows
    if args.eval_only:  # the --resume checkpoint's validation metrics
        summary = evaluate(eval_net, val_loader, device, args.amp, model.config["num_classes"],
                           len(val_set), **windows)
        log(f"eval {args.resume}: " + " ".join(f"{k} {v:.4f}" for k, v in summary.items()))
        if args.json and rank == 0:
            write_json(args.json, summary)
        return summary

    start_epoch, best, records = 0, None, []
    if checkpoint:
        start_epoch, best, records = restore(checkpoint, optimizer, scheduler, scaler, args, metric_name, changed, log)
    folder = open_run_folder(args, rank, world, device, checkpoint, records)
    state = functools.partial(training_checkpoint, model, optimizer, scheduler, scaler, metric_name=metric_name,
                              steps_per_epoch=len(train_loader), args=vars(args))  # checkpoints.py: the format
    if rank == 0 and checkpoint is None:  # the starting point: a run killed during epoch 0 leaves a loadable last.pt
        folder.save(state(epoch=-1, best_metric=None, metrics=None, log=[]), best=False)
    log(f"{model.config['encoder']} + {model.config['decoder']}: {count_parameters(model) / 1e6:.2f}M parameters on "
        f"{device_name(device)} x {world} process(es); effective batch {args.batch_size * world}, lr {args.lr:g}; "
        f"{len(train_set)} train / {len(val_set)} val images, {len(train_loader)} steps per epoch, "
        f"epochs {start_epoch}..{args.epochs - 1}; writing {folder.path}")
    progress = Progress(steps=len(train_loader), epochs=args.epochs, print_freq=args.print_freq, enabled=rank == 0,
                        world=world, device=device)
    started = time.time()
    for epoch in range(start_epoch, args.epochs):
        train_loader.sampler.set_epoch(epoch)
        epoch_start, lr = time.time(), optimizer.param_groups[0]["lr"]
        try:
            losses = train_one_epoch(step, optimizer, scaler, train_loader, device, epoch, amp=args.amp,
                                     clip_grad=args.clip_grad, progress=progress)
        except NonFiniteLoss as error:
            kept = f"epoch {epoch - 1}" if epoch > 0 else "the starting weights"
            raise NonFiniteLoss(f"{error}; last good checkpoint: {folder.path / 'last.pt'} ({kept}). Try --amp bf16 "
                                "or none, a lower --lr, or --clip-grad 1") from None
        scheduler.step()
        summary = evaluate(eval_net, val_loader, device, args.amp, model.config["num_classes"],
                           len(val_set), **windows)
        improved = best is None or summary[metric_name] > best
        best = summary[metric_name] if improved else best
        records.append({"epoch": epoch, "lr": lr, **{f"train_{k}": v for k, v in losses.items()},
                        **{f"val_{k}": v for k, v in summary.items()}, "seconds": round(time.time() - epoch_start, 1)})
        if rank == 0:
            folder.save(state(epoch=epoch, best_metric=best, metrics=summary, log=records), best=improved)
        log(f"epoch {epoch} val {metric_name} {summary[metric_name]:.4f} (best {best:.4f}) " +
            " ".join(f"{k} {v:.4f}" for k, v in summary.items() if k != metric_name) +
            f" | {time.time() - epoch_start:.0f}s" + (" | saved best.pt" if improved else ""))
    return final_report(args, model, val_set, val_loader, summary, best, folder, device, time.time() - started,
                        is_main=rank == 0)


# ------------------------------------------------------------------------------------------------------ setup
def resolve_args(args) -> list[str]:
    """Fill unset flags (from the --resume checkpoint's run, else from the preset) and check every combination we can
    before touching data. Returns the flags given that differ from the checkpoint's."""
    saved = read_checkpoint(args.resume, needs=RESUME_ENTRIES, flag="--resume", mmap=True)["args"] if args.resume \
        else {}
    if saved and args.dataset not in (None, saved.get("dataset")) and not args.eval_only:
        raise UsageError(f"--resume {args.resume} continues a {saved.get('dataset')} run; --dataset {args.dataset} "
                         "would make it another run: drop --dataset, or evaluate it there with --eval-only")
    args.dataset = args.dataset or saved.get("dataset", "synthetic")
    saved = saved if saved.get("dataset") == args.dataset else {}
    try:
        differing = apply_recipe(args, saved)
    except ValueError as error:
        raise UsageError(str(error)) from None
    changed = [f"--{k.replace('_', '-')} {getattr(args, k)} (checkpoint: {saved[k]})" for k in differing]
    fixed = [line for key, line in zip(differing, changed) if key in FIXED_ON_RESUME]
    if fixed:  # the network comes from the checkpoint: such a flag would be listed, then ignored
        raise UsageError(f"{'; '.join(fixed)}: a resumed run keeps its checkpoint's network; drop the flag, or start "
                         "a new run")
    problems = [
        (args.eval_only and not args.resume, "--eval-only needs --resume CHECKPOINT (the weights to evaluate)"),
        (args.data_parallel and "RANK" in os.environ, "--data-parallel is for one process; under torchrun each "
                                                      "process already drives one GPU (DDP): drop one of the two"),
        (args.image_size < 32 or args.image_size % 32 != 0, f"--image-size {args.image_size} must be a positive "
         f"multiple of 32 (the encoder's output stride), e.g. {max(32, round(args.image_size / 32) * 32)}"),
        (args.patch_size is not None and (args.patch_size % 32 or
                                          not 32 <= args.patch_size <= args.image_size),
         f"--patch-size {args.patch_size}: a multiple of 32, at most --image-size "
         f"{args.image_size}"),
        (args.dataset == "voc" and (args.patch_size or args.image_size) < args.image_size,
         "--patch-size is for mammograms; VOC trains on whole images"),
        (not 0 <= args.lesion_patches <= 1,
         f"--lesion-patches {args.lesion_patches}: a share, in [0, 1]"),
        (not 0 <= args.overlap < 1, f"--overlap {args.overlap}: a share in [0, 1)"),
        (min(args.batch_size, args.eval_batch_size, args.epochs, args.print_freq, args.limit or 1) < 1,
         "--batch-size, --eval-batch-size, --epochs, --print-freq and --limit must be >= 1"),
        (args.workers < 0, "--workers must be >= 0"),
        (args.overwrite and (args.resume or not args.out_dir), "--overwrite replaces the run in a given --out-dir; "
                                                               "it does not go with --resume")]
    for failed, message in problems:
        if failed:
            raise UsageError(message)
    try:
        build_loss(args.loss, args.num_classes)
    except ValueError as error:
        raise UsageError(f"--loss: {error}") from None
    if args.json:
        check_writable_file(args.json, "--json")
    return changed


def setup_device(args) -> tuple[int, int, torch.device]:
    """(rank, world size, device), the process group initialised (utils.init_distributed), after the checks of the
    flags that need the device."""
    torchrun, device = "RANK" in os.environ, resolve_device(args.device)
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
    return init_distributed(device)


def build_network(args, checkpoint: dict | None, rank: int, device: torch.device) -> nn.Module:
    """The checkpoint's network (no architecture flag needed), else a new one from the flags with --weights loaded
    (under torchrun rank 0 downloads them while the others wait, then all read the cached file)."""
    torch.manual_seed(args.seed)  # the initialisation; the data streams have their own seeds
    if checkpoint:
        model = model_from_checkpoint(checkpoint, args.resume)
    else:
        options = {"decoder_channels": args.decoder_channels} if args.decoder_channels else {}
        model = build_model(args.encoder, args.decoder, args.num_classes, args.in_channels, None, **options)
        if args.weights:
            load_weights(model, args.weights, rank)
    return model.to(device, memory_format=torch.channels_last if device.type == "cuda" else torch.contiguous_format)


def load_weights(model: nn.Module, weights: str, rank: int) -> None:
    """--weights into the encoder. Under torchrun, rank 0 downloads the file into torch.hub's cache while the others
    wait, then they read it; a failure on rank 0 stops every rank with its message."""
    def load():
        load_encoder_weights(model.encoder, model.config["encoder"], weights, mean=model.config["mean"],
                             std=model.config["std"])

    failure = [None]
    if rank == 0:
        try:
            load()
        except WeightsError as error:
            failure = [str(error)]
    if dist.is_initialized():
        dist.broadcast_object_list(failure, src=0)
    if failure[0]:
        raise WeightsError(failure[0])
    if rank != 0:
        load()


def dataset_options(args) -> dict:
    """The options build_dataset takes from the flags: --fold, --cache-dir, and a folder's --num-classes."""
    options = {"fold": args.fold[0], "folds": args.fold[1]} if args.fold else {}
    if args.cache_dir and args.dataset != "synthetic":
        options["cache_dir"] = args.cache_dir
    return dict(options, num_classes=args.num_classes) if args.dataset == "folder" else options


def build_loaders(args, config: dict, rank: int, world: int, device: torch.device):
    """(train set, val set, train loader, val loader), normalised as the model's encoder expects (its config). The
    validation set is sharded rank::world without padding, so every image is scored exactly once."""
    common = dict(in_channels=config["in_channels"], mean=config["mean"], std=config["std"], seed=args.seed,
                  limit=args.limit, verbose=rank == 0, **dataset_options(args))
    val_set = build_dataset(args.dataset, args.data_root, "val", args.image_size, **common)
    patches = dict(patch_size=args.patch_size, lesion_patches=args.lesion_patches)  # training crops
    train_set = None if args.eval_only else build_dataset(args.dataset, args.data_root, args.train_split,
                                                          args.image_size, augment=args.augment,
                                                          **patches, **common)
    prepare_datasets([val_set, train_set], args.workers, rank, world)  # an image that cannot be used: left out, named
    for split, dataset in (("val", val_set), (args.train_split, train_set)):
        if dataset is not None and len(dataset) == 0:
            raise DataError(f"{args.dataset} {split}: no usable images under {args.data_root}; check --data-root")
    if val_set.num_classes != config["num_classes"]:
        raise UsageError(f"{args.dataset} has {val_set.num_classes} classes, the checkpoint {config['num_classes']}")
    options = dict(num_workers=args.workers, pin_memory=device.type == "cuda", persistent_workers=args.workers > 0)
    val_loader = DataLoader(Subset(val_set, range(rank, len(val_set), world)), batch_size=args.eval_batch_size,
                            **options)
    if train_set is None:
        return None, val_set, None, val_loader
    train_loader = DataLoader(SeededItems(train_set, args.seed), batch_size=args.batch_size, drop_last=True,
                              sampler=EpochSampler(train_set, world, rank, shuffle=True, seed=args.seed), **options)
    if len(train_loader) == 0:
        raise UsageError(f"{args.dataset} {args.train_split} has {len(train_set)} images, fewer than one batch of "
                         f"--batch-size {args.batch_size} per process; lower --batch-size")
    return train_set, val_set, train_loader, val_loader


def wrap_for_devices(model: nn.Module, criterion: nn.Module, args, world: int,
                     device: torch.device) -> tuple[nn.Module, nn.Module]:
    """(training step: (images, masks) -> (loss, terms), network to validate) with SyncBN, DDP or DataParallel and
    torch.compile as the flags ask. Each rank validates its own shard without DDP's wrapper, whose forward would wait
    for the others; --compile compiles after DDP wraps, so gradients travel while the backward pass runs."""
    net = nn.SyncBatchNorm.convert_sync_batchnorm(model) if args.sync_bn and world > 1 else model
    step, eval_net = WithLoss(net, criterion), net
    if world > 1:
        # SMP's Unet++ keeps an scSE block on its last level, which has no skip for it to attend: its parameters
        # get no gradient, and DDP must be told to expect that.
        step = nn.parallel.DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None,
                                                   find_unused_parameters=model.config["decoder"] == "unetplusplus")
    elif args.data_parallel:  # the replicas compute the logits, the loss sees the whole gathered batch
        eval_net = nn.DataParallel(AutocastReplica(net, args.amp))
        step = WithLoss(eval_net, criterion)
    if args.compile:
        step, eval_net = torch.compile(step), torch.compile(eval_net)
    return step, eval_net


def open_run_folder(args, rank: int, world: int, device, checkpoint: dict | None, records: list) -> RunFolder:
    """The run's folder (runs.py), and on rank 0 its lock, a log that matches the weights, and config.json."""
    folder = RunFolder.choose(args.out_dir, os.path.join("runs", args.dataset), resume=args.resume,
                              overwrite=args.overwrite)
    args.out_dir = str(folder.path)  # as run: config.json and the checkpoints say where it went
    if rank == 0:
        config = {"args": vars(args), "versions": versions(), "git_commit": git_commit(), "world_size": world,
                  "device": device_name(device), "effective_batch_size": args.batch_size * world}
        folder.start(overwrite=args.overwrite, checkpoint=checkpoint, resume=args.resume, records=records,
                     config=config)
    return folder


def restore(checkpoint: dict, optimizer, scheduler, scaler, args, metric_name: str, changed: list[str], log) -> tuple:
    """Optimizer, schedule, scaler and RNG of a resumed run -> (first epoch to run, best metric, epoch records)."""
    start_epoch = checkpoint["epoch"] + 1
    if start_epoch >= args.epochs:
        raise UsageError(f"{args.resume} already finished epoch {start_epoch - 1}; pass --epochs > {start_epoch}")
    restore_training_state(checkpoint, optimizer, scheduler, scaler, lr=args.lr, milestones=args.milestones,
                           factors=args.lr_factors)
    log(f"resumed {args.resume} (epoch {checkpoint['epoch']})" + ("; changed: " * bool(changed)) + ", ".join(changed))
    best = checkpoint["best_metric"]
    if checkpoint.get("metric_name") != metric_name:  # an older file chose best.pt by another score
        log(f"note: {args.resume} chose best.pt by {checkpoint.get('metric_name')}; from now on it is {metric_name}, "
            "and the next epoch's checkpoint is the first best.pt by it")
        best = None
    return start_epoch, best, RunFolder.records_at_resume(checkpoint, args.resume)


# --------------------------------------------------------------------------------------------- training loop
def train_one_epoch(step, optimizer, scaler, loader, device, epoch: int, *, amp: str, clip_grad: float,
                    progress: Progress) -> dict:
    """One pass over the training set with `step` ((images, masks) -> (loss, terms)); returns the mean loss and the
    mean of each of its terms."""
    step.train()
    world = dist.get_world_size() if dist.is_initialized() else 1
    totals, tick = {}, time.time()
    for i, (images, masks) in enumerate(loader):
        data_time = time.time() - tick  # waiting for the loader: > 0 means the workers cannot keep up
        images, masks = to_device(images, masks, device)
        with autocast(device, amp):
            loss, terms = step(images, masks)  # the loss computes in float32
        logged = torch.stack([loss.detach(), *(t.detach() for t in terms.values())])
        if world > 1:  # every rank must learn of a NaN on any rank, or the others hang in the next all-reduce
            dist.all_reduce(logged)
            logged /= world
        values = dict(zip(["loss", *terms], logged.tolist()))
        if not math.isfinite(values["loss"]):
            raise NonFiniteLoss(f"non-finite loss ({values['loss']}) at epoch {epoch}, step "
                                f"{epoch * len(loader) + i + 1} ({i + 1} of {len(loader)} in the epoch); stopped "
                                "before the update")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if clip_grad > 0:
            scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
            nn.utils.clip_grad_norm_(step.parameters(), clip_grad)
        scaler.step(optimizer)
        scaler.update()
        for name, value in values.items():
            totals[name] = totals.get(name, 0.0) + value
        progress.step(epoch, i, values, len(images), data_time, time.time() - tick, optimizer.param_groups[0]["lr"])
        tick = time.time()
    return {name: value / len(loader) for name, value in totals.items()}


@torch.no_grad()
def evaluate(model, loader, device, amp: str, num_logits: int, images: int,
             window: int | None = None, overlap: float = 0.5) -> dict:
    """Exact metrics over this rank's share of the set, reduced over all ranks (metrics.py): every image of the
    set (`images` of them) scored exactly once, whatever the number of processes. window: by
    sliding windows of that side."""
    if dist.is_initialized():  # BN statistics drift apart on each rank's last batch: score (and save) rank 0's
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)
    model.eval()
    metrics = build_metrics(num_logits)
    for batch, masks in loader:
        batch, masks = to_device(batch, masks, device)
        with autocast(device, amp):
            logits = model(batch) if window is None else \
                sliding_window(model, batch, window, overlap=overlap, batch_size=len(batch))
        metrics.update(predict_labels(logits.float()), masks)
    metrics.reduce()
    summary = metrics.summary()
    assert summary["images"] == images, f"scored {summary['images']} of {images} images"
    return summary


# ---------------------------------------------------------------------------------------------------- the end
def final_report(args, model, val_set, val_loader, summary: dict, best: float, folder: RunFolder, device,
                 seconds: float, *, is_main: bool) -> dict:
    """The last epoch's scores beside the all-background floor, the panels, and --json."""
    floor = all_background_scores((masks for _, masks in val_loader), model.config["num_classes"])
    if not is_main:
        return summary
    panels = write_dataset_panels(model, val_set, args.panels, folder.path / "panels", device,
                                  args.amp, window=args.patch_size, overlap=args.overlap)
    if model.config["num_classes"] == 1:
        scores = (f"Dice {summary['dice_mean_per_image']:.4f} as a mean over the {len(val_set)} validation images "
                  f"({summary['dice_pooled']:.4f} pooled over their pixels), best {best:.4f}; predicting all "
                  f"background scores {floor['dice_mean_per_image']:.4f} ({floor['dice_pooled']:.4f} pooled)")
    else:
        scores = (f"mIoU {summary['mean_iou']:.4f} on the {len(val_set)} validation images, best {best:.4f}; "
                  f"predicting all background scores {floor['mean_iou']:.4f}")
    print(f"done in {seconds:.0f}s. After epoch {args.epochs - 1}: {scores}\ncheckpoints: {folder.path / 'best.pt'} "
          f"(best), {folder.path / 'last.pt'} (last)\npanels: " + " ".join(panels))
    if args.json:
        write_json(args.json, {"final": summary, "best": best, "all_background": floor})
    return summary


def cli(argv: list[str] | None = None) -> int:
    """Parse, run main(), and turn the errors a user can cause into one line on stderr and an exit code."""
    args = get_args_parser().parse_args(argv)
    try:
        return run_command("train.py", lambda: main(args), (UsageError, DataError, WeightsError,
                                                                   CheckpointError, DiskFullError, NonFiniteLoss),
                           exit_codes={NonFiniteLoss: NON_FINITE_EXIT}, quiet=int(os.environ.get("RANK", 0)) != 0)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(cli())
