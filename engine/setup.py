"""The parts of a training run built from train.py's flags: its settings (Table 1's recipe, or the
--resume checkpoint's run), its network with --weights loaded, and its data loaders.

    args = train.get_args_parser().parse_args([...]); resolve_args(args)   # every default filled
"""
from __future__ import annotations

import hashlib
import math

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Subset

from data import DataError, build_dataset, prepare_datasets
from losses import build_loss
from model import WeightsError, build_model, load_encoder_weights
from readers.items import CACHE_VERSION, MammogramDataset
from readers.sampling import EpochSampler, SeededItems
from recipes import apply_recipe

from .checkpoints import RESUME_ENTRIES, model_from_checkpoint, read_checkpoint
from .cli import UsageError, check_writable_file, ignore_stop_signals, refuse_file_in_the_way
from .devices import launched_processes

FIXED_ON_RESUME = (  # the network: a resumed run keeps its checkpoint's
    "encoder", "decoder", "decoder_channels", "in_channels", "num_classes", "weights",
    "foreground_prior")


def resolve_args(args) -> list[str]:
    """Fill unset flags from the --resume checkpoint's run, else the recipe, and check every
    combination before any data is read. Returns the given flags that differ from the checkpoint."""
    needs = ("args",) if args.eval_only else RESUME_ENTRIES
    resumed = read_checkpoint(args.resume, needs=needs, flag="--resume", mmap=True) \
        if args.resume else {}
    saved = resumed.get("args", {})
    if saved and args.dataset not in (None, saved.get("dataset")) and not args.eval_only:
        raise UsageError(f"--resume {args.resume} continues a {saved.get('dataset')} run; "
                         f"--dataset {args.dataset} would make it another run: drop --dataset, or "
                         "score it there with --eval-only")
    if args.dataset is None and not saved and args.data_root:  # the default, synthetic, reads none
        raise UsageError(f"--data-root {args.data_root} without --dataset: say what it holds, "
                         "--dataset folder (your images/ and masks/), cbis, mias or voc")
    args.dataset = args.dataset or saved.get("dataset", "synthetic")
    saved = saved if saved.get("dataset") == args.dataset else {}
    try:
        differing = apply_recipe(args, saved)
    except ValueError as error:
        raise UsageError(str(error)) from None
    changed = [f"--{k.replace('_', '-')} {getattr(args, k)} (checkpoint: {saved[k]})"
               for k in differing]
    fixed = [line for key, line in zip(differing, changed) if key in FIXED_ON_RESUME]
    within = 0 if args.eval_only else resumed.get("next_step", 0)
    if within and "batch_size" in differing:  # its position in the epoch is counted in batches
        raise UsageError(f"--batch-size {args.batch_size}: {args.resume} stopped {within} steps "
                         f"into epoch {resumed['epoch'] + 1} at --batch-size "
                         f"{saved['batch_size']}; resume it with that, or resume a checkpoint "
                         "saved at an epoch's end")
    world = launched_processes()
    saved_world = resumed.get("world_size", world)  # unknown in a file from before it was saved
    if within and saved_world != world:  # ...of each process: each one's share of the epoch moves
        again = (f"torchrun --nproc_per_node {saved_world}" if saved_world > 1
                 else "one process, without torchrun")
        raise UsageError(f"{args.resume} stopped {within} steps into epoch {resumed['epoch'] + 1} "
                         f"with {saved_world} process(es), this run has {world}: resume it with "
                         f"{again}, or resume a checkpoint saved at an epoch's end")
    if fixed:  # the network comes from the checkpoint: such a flag would be listed, then ignored
        raise UsageError(f"{'; '.join(fixed)}: a resumed run keeps its checkpoint's network; drop "
                         "the flag, or start a new run")
    size, patch = args.image_size, args.patch_size
    problems = [
        (args.eval_only and not args.resume,
         "--eval-only needs --resume CHECKPOINT (the weights to score)"),
        (size < 32 or size % 32 != 0, f"--image-size {size} must be a positive multiple of 32 (the "
         f"encoder's output stride), e.g. {max(32, round(size / 32) * 32)}"),
        (patch is not None and (patch % 32 or not 32 <= patch <= size),
         f"--patch-size {patch}: a multiple of 32, at most --image-size {size}"),
        (args.dataset == "voc" and (patch or size) < size,
         "--patch-size is for mammograms; VOC trains on whole images"),
        (not 0 <= args.lesion_patches <= 1,
         f"--lesion-patches {args.lesion_patches}: a share, in [0, 1]"),
        (not 0 <= args.overlap < 1, f"--overlap {args.overlap}: a share in [0, 1)"),
        (min(args.batch_size, args.eval_batch_size, args.epochs, args.print_freq) < 1,
         "--batch-size, --eval-batch-size, --epochs and --print-freq must be >= 1"),
        (args.limit is not None and args.limit < 1,
         f"--limit {args.limit}: must be >= 1 (or left out)"),
        (args.workers < 0 or args.panels < 0, "--workers and --panels must be >= 0"),
        (not args.save_every > 0, f"--save-every {args.save_every}: minutes, > 0"),
        (args.val_every < 1, f"--val-every {args.val_every}: must be >= 1"),
        (not args.eval_only and args.batch_size == 1 and (patch or size) == 32,
         f"--batch-size 1 at {patch or size}x{patch or size}: the encoder's last feature map is "
         "1x1, where BatchNorm cannot train on one value; use --batch-size 2 or larger images"),
        (args.overwrite and (args.resume or not args.out_dir),
         "--overwrite replaces the run in a given --out-dir; it does not go with --resume")]
    for failed, message in problems:
        if failed:
            raise UsageError(message)
    if args.out_dir:
        refuse_file_in_the_way(args.out_dir, "--out-dir")
    try:
        build_loss(args.loss, args.num_classes)
    except ValueError as error:
        raise UsageError(f"--loss: {error}") from None
    if args.json:
        check_writable_file(args.json, "--json")
    return changed


def build_network(args, checkpoint: dict | None, rank: int, device: torch.device) -> nn.Module:
    """The checkpoint's network (no architecture flag needed), else a new one with --weights."""
    torch.manual_seed(args.seed)  # the initialisation; the data streams have their own seeds
    if checkpoint:
        model = model_from_checkpoint(checkpoint, args.resume)
    else:
        options = {"decoder_channels": args.decoder_channels} if args.decoder_channels else {}
        model = build_model(args.encoder, args.decoder, args.num_classes, args.in_channels, None,
                            **options)
        if args.weights:
            load_weights(model, args.weights, rank)
        if args.foreground_prior is not None:  # sigmoid(bias) = prior at every pixel (RetinaNet)
            prior = args.foreground_prior
            nn.init.constant_(model.head.bias, math.log(prior / (1 - prior)))
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    return model.to(device, memory_format=memory_format)


def load_weights(model: nn.Module, weights: str, rank: int) -> None:
    """--weights into the encoder; under torchrun rank 0 downloads while the others wait."""
    def load():
        load_encoder_weights(model.encoder, model.config["encoder"], weights,
                             mean=model.config["mean"], std=model.config["std"])

    failure = [None]
    if rank == 0:
        try:
            load()
        except WeightsError as error:
            failure = [str(error)]
    if dist.is_initialized():  # a failure on rank 0 stops every rank with its message
        dist.broadcast_object_list(failure, src=0)
    if failure[0]:
        raise WeightsError(failure[0])
    if rank != 0:
        load()  # from torch.hub's cache, which rank 0 filled


def dataset_options(args) -> dict:
    """What build_dataset takes from the flags: --fold, --cache-dir, a folder's --num-classes."""
    options = {"fold": args.fold[0], "folds": args.fold[1]} if args.fold else {}
    if args.cache_dir and args.dataset != "synthetic":
        options["cache_dir"] = args.cache_dir
    return dict(options, num_classes=args.num_classes) if args.dataset == "folder" else options


def build_loaders(args, config: dict, rank: int, world: int, device: torch.device):
    """(train set, val set, train loader, val loader), normalised as the model's encoder expects."""
    common = dict(in_channels=config["in_channels"], mean=config["mean"], std=config["std"],
                  seed=args.seed, limit=args.limit, verbose=rank == 0, **dataset_options(args))
    val_set = build_dataset(args.dataset, args.data_root, "val", args.image_size, **common)
    patches = dict(patch_size=args.patch_size, lesion_patches=args.lesion_patches)  # training crops
    train_set = None if args.eval_only else build_dataset(
        args.dataset, args.data_root, args.train_split, args.image_size, augment=args.augment,
        **patches, **common)
    listed = [0 if d is None else len(d) for d in (val_set, train_set)]
    prepare_datasets([val_set, train_set], args.workers, rank, world)  # unusable images left out
    for split, dataset, count in (("val", val_set, listed[0]),
                                  (args.train_split, train_set, listed[1])):
        if dataset is not None and len(dataset) == 0:
            raise DataError(f"{args.dataset} {split}: all {count} images were left out as unusable "
                            "(the line above says why)" if count else f"{args.dataset} {split}: no "
                            f"images found under {args.data_root}; check --data-root")
    if val_set.num_classes != config["num_classes"]:
        raise UsageError(f"{args.dataset} has {val_set.num_classes} classes, the checkpoint "
                         f"{config['num_classes']}")
    options = dict(num_workers=args.workers, pin_memory=device.type == "cuda",
                   persistent_workers=args.workers > 0,  # workers started once, not every epoch
                   worker_init_fn=ignore_stop_signals)  # a stop is the main process's to make
    shard = Subset(val_set, range(rank, len(val_set), world))  # every image scored once, no padding
    val_loader = DataLoader(shard, batch_size=args.eval_batch_size, **options)
    if train_set is None:
        return None, val_set, None, val_loader
    sampler = EpochSampler(train_set, world, rank, shuffle=True, seed=args.seed)
    train_loader = DataLoader(SeededItems(train_set, args.seed), batch_size=args.batch_size,
                              drop_last=True, sampler=sampler, **options)
    if len(train_loader) == 0:
        raise UsageError(f"{args.dataset} {args.train_split} has {len(train_set)} images, fewer "
                         f"than one batch of --batch-size {args.batch_size} per process; lower "
                         "--batch-size")
    return train_set, val_set, train_loader, val_loader


def images_of_run(train_set, val_set) -> dict:
    """Each set's image count and a digest of its ids in order (names, not paths: a data root moved
    keeps them), and for mammograms the version of how a file becomes the network's input. last.pt
    keeps it, so that a resumed run checks it trains and scores the same images."""
    digest = lambda ids: hashlib.sha1("\n".join(map(str, ids)).encode()).hexdigest()
    images = {part: {"images": len(dataset), "ids_sha1": digest(dataset.ids)}
              for part, dataset in (("train", train_set), ("val", val_set))}
    if isinstance(val_set, MammogramDataset):
        images["reading"] = CACHE_VERSION
    return images


def check_same_images(checkpoint: dict, now: dict, resume: str) -> None:
    """A resumed run continues on its images; another set (files added, mended or removed, a split
    drawn otherwise, files read otherwise) would make its log and best.pt mix two experiments."""
    then = checkpoint.get("images")  # None in a file from before it was saved: not checked
    if then is None or then == now:
        return
    if all(then.get(part) == now.get(part) for part in ("train", "val")):  # the reading differs
        raise UsageError(f"--resume {resume}: its images were read and prepared by version "
                         f"{then.get('reading')} of the mammogram reading, this one is version "
                         f"{now.get('reading')}, so the run would go on seeing other pixels; start "
                         "a new run, or resume it with the project's version it started with")
    counts = lambda images: f"{images['train']['images']}/{images['val']['images']}"
    others = " other ones (or in another order)" if counts(then) == counts(now) else ""
    raise UsageError(f"--resume {resume}: the run trained/validated on {counts(then)} images, this "
                     f"call finds{others} {counts(now)}: the files under --data-root or their "
                     "split changed since it started, or some cannot be read here (a line above "
                     "says so); resume with the data as it was, or start a new run")
