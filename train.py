"""Training (thesis §4.3, Table 1): one script for a CPU, one GPU, DataParallel or torchrun.

    python train.py                                            # the demo: synthetic mammograms, CPU
    python train.py --dataset cbis --data-root DATA/CBIS-DDSM  # Table 2 (A) on one GPU
    torchrun --standalone --nproc_per_node=4 train.py --dataset cbis --data-root DATA/CBIS-DDSM \\
        --batch-size 4                                         # the same batch of 16 on 4 GPUs
    python train.py --resume runs/cbis/last.pt                 # continue exactly where it stopped
    python train.py --resume runs/cbis/best.pt --eval-only     # a checkpoint's validation scores

Defaults are each dataset's recipe (recipes.py, Table 1). docs/runs.md describes the run folder,
resume, checkpoints and exit codes (2: a bad flag or data, 3: a non-finite loss, 130/143/129:
Ctrl-C, SIGTERM or a hang-up).
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
import warnings

# GNU OpenMP spins about 300000 times at each barrier; two runs sharing 2 cores then spin through
# each other's time slices and each is 6x+ slower. 10000 spins keep one run's speed, and two
# runs at once take 1.4x the time of both in a row (docs/speed.md). Read when torch loads.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import torch
import torch.distributed as dist
import torch.nn as nn

from data import DataError
from engine.checkpoints import (MODEL_ENTRIES, RESUME_ENTRIES, CheckpointError, read_checkpoint,
                                restore_training_state, tensor_bytes, training_checkpoint)
from engine.cli import ArgumentParser, Progress, Stopped, StopRequests, UsageError, run_command
from engine.devices import (AMP_DTYPES, autocast, check_device_flags, default_workers,
                            device_name, git_commit, init_distributed, resolve_device, to_device,
                            versions, wrap_for_devices)
from engine.measure import count_parameters, process_seconds
from engine.panels import write_dataset_panels
from engine.run_folder import RunFolder
from engine.setup import (build_loaders, build_network, check_same_images, images_of_run,
                          resolve_args)
from engine.windows import sliding_window
from losses import build_loss
from metrics import LesionStats, all_background_scores, build_metrics, predict_labels
from model import WeightsError
from readers.atomic import DiskFullError, write_json
from recipes import PRESETS, PiecewiseConstant

NON_FINITE_EXIT = 3


class NonFiniteLoss(Exception):
    """The loss became NaN or infinite: exit code 3, last.pt saved before the step that failed."""

    def __init__(self, message: str, step: int = 0, totals: dict | None = None):
        super().__init__(message)
        self.step, self.totals = step, totals or {}


def recipe_default(key: str) -> str:
    values = {}
    for name, recipe in PRESETS.items():
        values.setdefault(str(recipe[key]), []).append(name)
    return "default: " + ", ".join(f"{'/'.join(names)} {value}" for value, names in values.items())


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = ArgumentParser(prog="train.py", description=__doc__.split("\n\n")[0], add_help=add_help,
                       epilog=__doc__.split("\n\n", 1)[1])
    add = p.add_argument
    add("--dataset", choices=list(PRESETS),
        help="recipe and data (default: the --resume checkpoint's, else synthetic, the demo)")
    add("--data-root", help="the dataset's folder (docs/data.md says what each holds)")
    add("--fold", metavar="K/N", help="validate on fold K of N by patient (as crossval.py runs)")
    add("--cache-dir", help="folder of the preprocessed images (default: ~/.cache/unet-fusion)")
    add("--encoder", choices=["resnet34", "bit_r50x1"],
        help=f"Table 1 'Encoder'; {recipe_default('encoder')}")
    add("--decoder", choices=["fusion", "unet", "unetplusplus"],
        help="fusion: §4.2 (row A of Tables 2-4); unet, unetplusplus: SMP's (rows B, C)")
    add("--decoder-channels", help="decoder widths, deepest first, e.g. 128,64,32,16,16")
    add("--weights", help="encoder weights: imagenet, imagenet-timm, imagenet21k, none or a file; "
        + recipe_default("weights"))
    add("--in-channels", type=int, choices=[1, 3],
        help="1: grayscale; 3: gray replicated for ImageNet encoders")
    add("--num-classes", type=int, help="1: a lesion logit (binary masks); K > 1: class indices")
    add("--foreground-prior", metavar="P",
        help="start the binary head at foreground probability P in (0, 1), or none: SMP's zero "
        f"bias (RetinaNet's prior; {recipe_default('foreground_prior')})")
    add("--loss", help=f"'+'-joined losses of losses.py, Table 1; {recipe_default('loss')}")
    add("--epochs", type=int, help=f"Table 1 'Num epochs'; {recipe_default('epochs')}")
    add("--batch-size", type=int,
        help=f"images per step and process; {recipe_default('batch_size')}")
    add("--eval-batch-size", type=int, help="images per validation step (default: --batch-size)")
    add("--image-size", type=int,
        help=f"side of the input, a multiple of 32; {recipe_default('image_size')}")
    add("--patch-size", type=int, help="train on crops of this side, validate by sliding windows "
        "(default: the whole image, as the thesis)")
    add("--lesion-patches", type=float, help="share of patches centred on a lesion (default: 1/3)")
    add("--overlap", type=float, help="overlap of the validation windows, in [0, 1) (default: 0.5)")
    add("--lr", type=float,
        help=f"AdamW learning rate at epoch 0, scales --schedule; {recipe_default('lr')}")
    add("--schedule", help="piecewise-constant learning rate, EPOCH:LR,... or constant (Table 1)")
    add("--weight-decay", type=float, help="AdamW weight decay (default: 0.01, PyTorch's)")
    add("--clip-grad", type=float, help="largest gradient norm, 0 = off (default: 0)")
    add("--train-split", help="training split (voc: train or trainaug; default: train)")
    add("--augment", action=argparse.BooleanOptionalAction,
        help="augment the training images (ours; default: on)")
    add("--amp", choices=list(AMP_DTYPES), help="autocast precision (default: none, i.e. fp32)")
    add("--compile", action="store_true", help="torch.compile the network (faster on a GPU)")
    add("--data-parallel", action="store_true", help="nn.DataParallel over the visible GPUs")
    add("--sync-bn", action="store_true", help="SyncBatchNorm across torchrun processes")
    add("--workers", type=int, default=default_workers(),
        help=f"DataLoader workers per process (default: cores, at most 4: {default_workers()})")
    add("--seed", type=int, help="seed of initialisation, shuffle and augmentation (default: 0)")
    add("--out-dir", help="the run's folder (default: the --resume checkpoint's, else a free "
        "runs/<dataset>)")
    add("--overwrite", action="store_true", help="replace the run in --out-dir")
    add("--resume", help="last.pt to continue exactly (or any checkpoint, with --eval-only)")
    add("--eval-only", action="store_true", help="score the --resume checkpoint on val, then stop")
    add("--val-every", type=int, metavar="N",
        help="validate every N epochs and after the last (default: 1, or the resumed run's)")
    add("--save-every", type=float, default=5.0, metavar="MINUTES",
        help="minutes between writes of last.pt, also written at the end and when stopped "
        "(default: 5)")
    add("--limit", type=int, help="only the first N images of each split (smoke tests)")
    add("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    add("--print-freq", type=int, default=20, help="steps between log lines (default: 20)")
    add("--panels", type=int, default=4, help="validation images drawn at the end (default: 4)")
    add("--json", help="also write the final validation metrics to this JSON file")
    return p


def main(args, stop: StopRequests | None = None) -> dict:
    """Train (or, with --eval-only, score) as `args` say; returns the last validation summary."""
    stop = stop or StopRequests()
    changed = resolve_args(args)  # every unset flag from the recipe or the --resume checkpoint
    if args.dataset != "synthetic" and not args.data_root:  # said before weights are downloaded
        raise UsageError(f"--dataset {args.dataset} reads files: name their folder (--data-root)")
    device = resolve_device(args.device)
    check_device_flags(device, args.device, amp=args.amp, sync_bn=args.sync_bn,
                       data_parallel=args.data_parallel)
    rank, world, device = init_distributed(device)
    log = print if rank == 0 else (lambda *a, **k: None)
    needs = (*MODEL_ENTRIES, "args") if args.eval_only else RESUME_ENTRIES
    checkpoint = read_checkpoint(args.resume, needs=needs, flag="--resume") if args.resume else None
    model = build_network(args, checkpoint, rank, device)
    train_set, val_set, train_loader, val_loader = build_loaders(args, model.config, rank, world,
                                                                 device)
    num_classes, windows = model.config["num_classes"], dict(window=args.patch_size,
                                                             overlap=args.overlap)
    metric = "dice_mean_per_image" if num_classes == 1 else "mean_iou"  # picks best.pt
    train_net, eval_net = wrap_for_devices(model, world=world, device=device, amp=args.amp,
                                           sync_bn=args.sync_bn, data_parallel=args.data_parallel,
                                           compile_model=args.compile)
    if args.eval_only:
        summary = evaluate(eval_net, val_loader, device, args.amp, num_classes, len(val_set),
                           lesions=True, **windows)
        log(f"eval {args.resume}: " + " ".join(f"{k} {v:.4f}" for k, v in summary.items()))
        if args.json and rank == 0:
            write_json(args.json, summary)
        return summary

    criterion = build_loss(args.loss, num_classes, distributed=world > 1)  # Table 1 "Loss Function"
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                                  amsgrad=True, fused=True)  # Table 1; fused: 3-4x faster on a CPU
    schedule = PiecewiseConstant(args.milestones, args.lr_factors)  # Table 1 "Scheduler"
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    first_epoch, first_step, totals, best, records, scores = 0, 0, {}, None, [], None
    images = images_of_run(train_set, val_set)
    if checkpoint:
        check_same_images(checkpoint, images, args.resume)
        first_epoch, first_step, totals, best, records = restore(
            checkpoint, optimizer, scheduler, scaler, args, metric, changed, log)
        scores = checkpoint.get("metrics")
    steps_per_epoch = len(train_loader)

    def state(epoch: int, next_step: int = 0, partial: dict | None = None) -> dict:  # for last.pt
        return training_checkpoint(model, optimizer, scheduler, scaler, epoch=epoch,
                                   steps_per_epoch=steps_per_epoch, best_metric=best,
                                   metric_name=metric, metrics=scores, args=vars(args),
                                   log=records, next_step=next_step, partial_losses=partial,
                                   world_size=world, images=images)

    folder = open_run_folder(args, rank, world, device, checkpoint, records, model)
    log(f"{model.config['encoder']} + {model.config['decoder']}: "
        f"{count_parameters(model) / 1e6:.2f}M parameters on {device_name(device)} x {world} "
        f"process(es); effective batch {args.batch_size * world}, lr {args.lr:g}; {len(train_set)} "
        f"train / {len(val_set)} val images, {steps_per_epoch} steps per epoch, epochs "
        f"{first_epoch}..{args.epochs - 1}; writing {folder.path}")
    progress = Progress(steps=steps_per_epoch, epochs=args.epochs, print_freq=args.print_freq,
                        enabled=rank == 0, world=world, device=device)
    clock = {"start-up": process_seconds(), "training": 0.0, "validation": 0.0}
    stop.graceful, epoch = True, first_epoch  # from here a signal ends the run at the next step
    try:
        for epoch in range(first_epoch, args.epochs):
            started, lr = time.time(), optimizer.param_groups[0]["lr"]
            train_loader.sampler.set_epoch(epoch)
            train_loader.sampler.skip = first_step * args.batch_size  # a run resumed mid-epoch
            totals, steps = train_one_epoch(train_net, criterion, optimizer, scaler, train_loader,
                                            device, epoch, amp=args.amp, clip_grad=args.clip_grad,
                                            progress=progress, stop=stop, first_step=first_step,
                                            totals=totals)
            validated, last = time.time(), epoch == args.epochs - 1
            due = steps == steps_per_epoch and ((epoch + 1) % args.val_every == 0 or last)
            summary = evaluate(eval_net, val_loader, device, args.amp, num_classes, len(val_set),
                               lesions=last,  # lesion counts cost CPU time: the last epoch only
                               stop=stop if world == 1 else None,  # ranks score the same images
                               **windows) if due else None
            clock["training"] += validated - started
            clock["validation"] += time.time() - validated
            if steps < steps_per_epoch or (due and summary is None):  # a signal came
                save_now(folder, rank, state(epoch - 1, steps, totals))  # validation on resume
                raise Stopped(stop.signum,
                              stopped_line(stop, epoch, steps, steps_per_epoch, folder))
            if first_step < steps_per_epoch:
                scheduler.step()
            else:  # resumed after the epoch's last step, no optimizer step came first in this
                with warnings.catch_warnings():  # process: PyTorch's check of the order would warn
                    warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
                    scheduler.step()
            improved = summary is not None and (best is None or summary[metric] > best)
            scores, best = summary or scores, summary[metric] if improved else best
            records.append({"epoch": epoch, "lr": lr,
                            **{f"train_{k}": v / steps_per_epoch for k, v in totals.items()},
                            **{f"val_{k}": v for k, v in (summary or {}).items()},
                            "seconds": round(time.time() - started, 1)})
            first_step, totals = 0, {}
            if rank == 0:  # log.jsonl now; last.pt every --save-every minutes and at the end
                folder.end_epoch(records, lambda: state(epoch), improved=improved, final=last)
            scored = "not validated (--val-every)" if summary is None else (
                f"val {metric} {summary[metric]:.4f} (best {best:.4f}) "
                + " ".join(f"{k} {v:.4f}" for k, v in summary.items() if k != metric))
            log(f"epoch {epoch} {scored} | {time.time() - started:.0f}s"
                + " | best so far" * improved)
        folder.close()  # the last write ends before the run reports; a signal now lets it end
        stop.graceful = False
    except NonFiniteLoss as error:
        stop.graceful = False
        finite = all(t.isfinite().all() for t in model.state_dict().values()
                     if t.is_floating_point())
        if finite:  # the weights before the update, BatchNorm's statistics after that forward
            save_now(folder, rank, state(epoch - 1, error.step, error.totals))
        kept = "saved before that step" if finite else "kept as last written"
        raise NonFiniteLoss(f"{error}; last.pt {kept} ({folder.path / 'last.pt'}). Try --amp bf16 "
                            "or none, a lower --lr, or --clip-grad 1") from None
    finally:
        stop.graceful = False
        folder.writer.cancel()  # after an error or a second Ctrl-C: a write in flight is abandoned
    clock["checkpoints (waited)"] = folder.writer.seconds_waited
    return final_report(args, model, val_set, val_loader, scores, best, folder, device, clock,
                        is_main=rank == 0)


# ------------------------------------------------------------------------------ the run's folder
def open_run_folder(args, rank: int, world: int, device, checkpoint: dict | None, records: list,
                    model: nn.Module) -> RunFolder:
    """The run's folder; on rank 0 its lock, a log matching the weights, config.json, space."""
    folder = RunFolder.choose(args.out_dir, os.path.join("runs", args.dataset), resume=args.resume,
                              overwrite=args.overwrite, save_minutes=args.save_every)
    args.out_dir = str(folder.path)  # as run: config.json and the checkpoints say where it went
    if rank == 0:
        config = {"args": vars(args), "versions": versions(), "git_commit": git_commit(),
                  "world_size": world, "device": device_name(device),
                  "effective_batch_size": args.batch_size * world}
        folder.start(overwrite=args.overwrite, checkpoint=checkpoint, resume=args.resume,
                     records=records, config=config)
        # last.pt holds the weights and AdamW's 3 amsgrad buffers: two of them while one replaces
        # the other, and best.pt
        folder.check_space(9 * tensor_bytes(model.state_dict()))
    return folder


def restore(checkpoint: dict, optimizer, scheduler, scaler, args, metric: str, changed: list[str],
            log) -> tuple:
    """A resumed run's optimizer, schedule, scaler and RNG -> (first epoch, first step in it, its
    partial loss sums, best score, epoch records)."""
    first_epoch, first_step = checkpoint["epoch"] + 1, checkpoint.get("next_step", 0)
    if first_epoch >= args.epochs:
        raise UsageError(f"{args.resume} already finished epoch {first_epoch - 1}; pass --epochs > "
                         f"{first_epoch}")
    restore_training_state(checkpoint, optimizer, scheduler, scaler, lr=args.lr,
                           milestones=args.milestones, factors=args.lr_factors)
    where = [f"after epoch {checkpoint['epoch']}"] * (first_epoch > 0) + [
        f"{first_step} steps into epoch {first_epoch}"] * (first_step > 0)
    log(f"resumed {args.resume} ({', '.join(where) or 'before epoch 0'})"
        + "; changed: " * bool(changed) + ", ".join(changed))
    best = checkpoint["best_metric"]
    if checkpoint.get("metric_name") != metric:  # an older file chose best.pt by another score
        log(f"note: {args.resume} chose best.pt by {checkpoint.get('metric_name')}; from now on "
            f"by {metric}")
        best = None
    records = RunFolder.records_at_resume(checkpoint, args.resume)
    return first_epoch, first_step, dict(checkpoint.get("partial_losses") or {}), best, records


def save_now(folder: RunFolder, rank: int, checkpoint: dict) -> None:
    """last.pt of a run that stops (a signal, a non-finite loss), written before it ends."""
    if rank == 0:
        folder.save(checkpoint, final=True)
        folder.close()


def stopped_line(stop: StopRequests, epoch: int, steps: int, steps_per_epoch: int,
                 folder: RunFolder) -> str:
    name = "SIGINT (Ctrl-C)" if stop.signum == signal.SIGINT else signal.Signals(stop.signum).name
    last = folder.path / "last.pt"
    return (f"stopped by {name} at epoch {epoch}, step {steps} of {steps_per_epoch}; saved {last}: "
            f"continue with python train.py --resume {last}")


# --------------------------------------------------------------------------------- training loop
def train_one_epoch(model, criterion, optimizer, scaler, loader, device, epoch: int, *, amp: str,
                    clip_grad: float, progress: Progress, stop: StopRequests, first_step: int = 0,
                    totals: dict | None = None) -> tuple[dict, int]:
    """One pass over the training set from `first_step` -> (summed loss terms, steps done): fewer
    steps than the epoch's if a stop was requested."""
    model.train()
    world = dist.get_world_size() if dist.is_initialized() else 1
    totals, step, tick = dict(totals or {}), first_step, time.time()
    for images, masks in loader:
        data_time = time.time() - tick  # waiting for the loader: > 0, the workers cannot keep up
        images, masks = to_device(images, masks, device)
        with autocast(device, amp):
            logits = model(images)  # (B, K, H, W)
            loss, terms = criterion.forward_with_terms(logits, masks)  # Table 1's loss, float32
        # One host sync a step: every rank learns of a NaN or a stop on any rank; they stop together
        logged = torch.stack([loss.detach(), *(t.detach() for t in terms.values()),
                              torch.tensor(float(stop.signum is not None), device=loss.device)])
        if world > 1:
            dist.all_reduce(logged)
            logged[:-1] /= world
        *values, stopping = logged.tolist()
        values = dict(zip(["loss", *terms], values))
        if not math.isfinite(values["loss"]):
            raise NonFiniteLoss(f"non-finite loss ({values['loss']}) at epoch {epoch}, step "
                                f"{epoch * progress.steps + step + 1} ({step + 1} of "
                                f"{progress.steps} in the epoch); stopped before the update",
                                step, totals)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if clip_grad > 0:
            scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        scaler.step(optimizer)
        scaler.update()
        for name, value in values.items():
            totals[name] = totals.get(name, 0.0) + value
        progress.step(epoch, step, values, len(images), data_time, time.time() - tick,
                      optimizer.param_groups[0]["lr"])
        step, tick = step + 1, time.time()
        if stopping:  # after the update: the forward pass has moved BatchNorm's statistics
            stop.signum = stop.signum or signal.SIGTERM  # another rank's signal
            break
    return totals, step


@torch.no_grad()
def evaluate(model, loader, device, amp: str, num_logits: int, images: int, *,
             lesions: bool = False, window: int | None = None, overlap: float = 0.5,
             stop: StopRequests | None = None) -> dict | None:
    """Exact metrics over this rank's shard, reduced over all ranks (metrics.py): each of the set's
    `images` scored once, whatever the number of processes. None if a stop was requested."""
    if dist.is_initialized():  # BN statistics drift apart on each rank's last batch: keep rank 0's
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)
    model.eval()
    metrics = build_metrics(num_logits)
    lesion_stats = LesionStats() if lesions and num_logits == 1 else None  # lesions found, FPs
    for batch, masks in loader:
        if stop is not None and stop.signum is not None:
            return None
        batch, masks = to_device(batch, masks, device)
        with autocast(device, amp):  # whole images, or windows of a patch-trained model's patch
            logits = sliding_window(model, batch, window, overlap=overlap, batch_size=len(batch))
        metrics.update(predict_labels(logits.float()), masks)  # logits (B, K, H, W)
        if lesion_stats is not None:
            lesion_stats.update(logits.float(), masks)
    metrics.reduce()
    summary = metrics.summary()
    if lesion_stats is not None:
        lesion_stats.reduce()
        summary.update(lesion_stats.summary())
    assert summary["images"] == images, f"scored {summary['images']} of {images} images"
    return summary


# ---------------------------------------------------------------------------------------- the end
def final_report(args, model, val_set, val_loader, summary: dict, best: float, folder: RunFolder,
                 device, clock: dict, *, is_main: bool) -> dict:
    """The last epoch's scores beside the all-background floor, the run's time, panels, --json."""
    floor = all_background_scores((masks for _, masks in val_loader), model.config["num_classes"])
    if not is_main:
        return summary
    panels = write_dataset_panels(model, val_set, args.panels, folder.path / "panels", device,
                                  args.amp, window=args.patch_size, overlap=args.overlap)
    images = len(val_set)
    if model.config["num_classes"] == 1:
        scores = (f"Dice {summary['dice_mean_per_image']:.4f} as a mean over the {images} "
                  f"validation images ({summary['dice_pooled']:.4f} pooled over their pixels), "
                  f"best {best:.4f}; predicting all background scores "
                  f"{floor['dice_mean_per_image']:.4f} ({floor['dice_pooled']:.4f} pooled)")
        if "lesions" in summary:  # metrics.LesionStats, counted in the last epoch
            scores += (f"; lesions found {summary['lesions_found']:.0f} of "
                       f"{summary['lesions']:.0f}, false positives per image "
                       f"{summary['false_positives_per_image']:.2f} "
                       f"({summary['false_positives_per_normal_image']:.2f} on normal images)")
    else:
        scores = (f"mIoU {summary['mean_iou']:.4f} on the {images} validation images, best "
                  f"{best:.4f}; predicting all background scores {floor['mean_iou']:.4f}")
    seconds, written = process_seconds(), folder.writer.bytes_written
    in_steps = (clock["training"] + clock["validation"]) / seconds
    print(f"done in {seconds:.0f}s, {100 * in_steps:.0f}% of it in training and validation "
          f"(start-up {clock['start-up']:.1f}s, waiting for checkpoint writes "
          f"{clock['checkpoints (waited)']:.1f}s, {written / 2**20:.0f} MB written). After epoch "
          f"{args.epochs - 1}: {scores}\ncheckpoints: {best_pt_line(folder.path, best)}"
          f"{folder.path / 'last.pt'} (last)" + ("\npanels: " + " ".join(panels)) * bool(panels))
    if args.json:
        timing = dict(clock, total=seconds, checkpoint_bytes=written)
        write_json(args.json, {"final": summary, "best": best, "all_background": floor,
                               "time": timing})
    return summary


def best_pt_line(folder: Path, best: float) -> str:
    if (folder / "best.pt").exists():
        return f"{folder / 'best.pt'} (best), "
    return (f"no best.pt (no epoch since the resume beat the resumed checkpoint's best, "
            f"{best:.4f}), ")


def cli(argv: list[str] | None = None) -> int:
    """Parse, run main(), and turn the errors a user can cause into one line and an exit code."""
    args, stop = get_args_parser().parse_args(argv), StopRequests()
    errors = (UsageError, DataError, WeightsError, CheckpointError, DiskFullError, NonFiniteLoss)
    try:
        return run_command("train.py", lambda: main(args, stop), errors,
                           exit_codes={NonFiniteLoss: NON_FINITE_EXIT},
                           quiet=int(os.environ.get("RANK", 0)) != 0, stop=stop)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(cli())
