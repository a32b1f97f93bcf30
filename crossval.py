"""Cross-validation by patient of the thesis' Table 2 decoders on real mammograms (§5): Tables 2-3
with error bars, and the lesions each decoder finds.

    python crossval.py --dataset mias --data-root ../shared/data/mini-mias   # 3 decoders x 5 folds
    python crossval.py --dataset folder --data-root DATA/mine --jobs 3 -- --epochs 50 --weights none
    python crossval.py --dataset cbis --data-root DATA/CBIS-DDSM --jobs 4 -- --device cuda
    python crossval.py --dataset mias --data-root DATA/mias -- --image-size 512 --patch-size 128

Each decoder on each fold k is one train.py run in <out-dir>/<decoder>/fold<k>/, scored by its last
epoch's validation; the flags after `--` go to every run; run the command again until every run is
done (docs/real-mammograms.md). It writes <out-dir>/summary.json and summary.png. Ctrl-C, SIGTERM
or a hang-up stops the runs (each saves its last.pt) and still writes the summary of what was done.
Exit codes: 0 every run done; 1 some runs failed (their log is named; the others summarised); 2 bad
flags; 130, 143 or 129 stopped by Ctrl-C, SIGTERM or SIGHUP (run the command again to resume).
"""
from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from engine.charts import draw_crossval
from engine.cli import (STOP_SIGNALS, ArgumentParser, Stopped, StopRequests, UsageError,
                        refuse_file_in_the_way, run_command)
from engine.devices import available_cores
from engine.run_folder import RunFolder
from readers.atomic import write_json
from recipes import PRESETS

DECODERS = ("fusion", "unet", "unetplusplus")  # Table 2: (A) proposed, (B) SMP Unet, (C) SMP Unet++
# The table's columns (header -> final.json key) for binary masks and class-index ones (after --:
# --num-classes K); the paired comparison and the figure use COMPARED: Table 2's statistic, or mIoU.
SCORES = {"binary": {"IoU, lesion images (%)": "iou_mean_lesion_images",
                     "Dice, lesion images (%)": "dice_mean_lesion_images",
                     "Dice, all images (%)": "dice_mean_per_image", "IoU pooled (%)": "iou_pooled",
                     "Dice pooled (%)": "dice_pooled", "lesions found (%)": "lesion_sensitivity",
                     "FP / image": "false_positives_per_image",
                     "FP / normal image": "false_positives_per_normal_image"},
          "classes": {"mIoU (%)": "mean_iou", "mean Dice (%)": "mean_dice"}}
COMPARED = {"binary": "dice_mean_lesion_images", "classes": "mean_iou"}
COUNTS = {"false_positives_per_image", "false_positives_per_normal_image"}  # not percentages


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="crossval.py", description=__doc__.split("\n\n")[0],
                            epilog=__doc__.split("\n\n", 1)[1])
    add = parser.add_argument
    add("--dataset", required=True,
        choices=[name for name in PRESETS if name in ("cbis", "mias", "folder")],
        help="a mammography dataset (data.py)")
    add("--data-root", required=True, help="its folder, as for train.py")
    add("--folds", type=int, default=5, help="folds, by patient (default: 5)")
    add("--decoders", nargs="+", default=list(DECODERS), choices=DECODERS,
        help="decoders compared (default: all three of Table 2)")
    add("--out-dir", help="where the runs and the summary go (default: runs/cv-<dataset>)")
    add("--jobs", type=int, default=1, help="train.py runs at once (default: 1)")
    add("train_args", nargs="*", metavar="-- TRAIN.PY FLAGS", help="flags for every run, after --")
    return parser


# ---------------------------------------------------------------------------------------- the runs
def run_folder(out_dir: Path, decoder: str, fold: int) -> Path:
    return out_dir / decoder / f"fold{fold}"


def train_command(args, decoder: str, fold: int, folder: Path) -> list[str]:
    """The train.py command of one run: fresh, or resumed from its last.pt after an interruption."""
    # The data root resolved, for new and resumed runs alike: resumed elsewhere, a run finds it.
    command = [sys.executable, str(Path(__file__).parent / "train.py"), "--json",
               str(folder / "final.json"), "--data-root", str(Path(args.data_root).resolve())]
    if (folder / "last.pt").is_file():
        return command + ["--resume", str(folder / "last.pt"), *args.train_args]
    # killed before its first checkpoint
    overwrite = ["--overwrite"] if RunFolder(folder).holds_run() else []
    return command + ["--dataset", args.dataset, "--decoder", decoder, "--fold",
                      f"{fold}/{args.folds}", "--out-dir", str(folder), *overwrite,
                      *args.train_args]


RUNTIME_FLAGS = {"--device", "--workers", "--print-freq", "--compile", "--cache-dir", "--panels",
                 "--save-every", "--val-every"}  # not the result's


def recipe_flags(train_args: list[str]) -> list[list[str]]:
    """The flags after -- that shape the results, each with its values, in a fixed order: how a
    run runs (the device, its workers, ...) and the flags' order may change between calls."""
    groups: list[list[str]] = []
    for token in train_args:
        if token.startswith("--") or not groups:
            groups.append(token.split("=", 1))
        else:
            groups[-1].append(token)
    return sorted(group for group in groups if group[0] not in RUNTIME_FLAGS)


def check_settings(args, out_dir: Path) -> None:
    """<out-dir>/crossval.json keeps the runs' settings; once a run has started there, a call with
    others is refused: its table would mix folds of different splits or recipes."""
    settings = dict(dataset=args.dataset, data_root=str(Path(args.data_root).resolve()),
                    folds=args.folds, train_args=recipe_flags(args.train_args))
    path = out_dir / "crossval.json"
    # fixed once a run has started: a call whose runs all failed at once (a typo) fixes nothing
    started = sorted(folder for folder in out_dir.glob("*/fold*") if RunFolder(folder).holds_run())
    if started and not path.is_file():  # runs of unknown settings: moved in, or crossval.json lost
        raise UsageError(f"--out-dir {out_dir} holds runs ({started[0]}) but no "
                         f"crossval.json to say with which settings they ran: choose another "
                         f"--out-dir, or move the runs away")
    if not started:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(path, settings)
        return
    earlier = json.loads(path.read_text())
    changed = [f"{key} {earlier.get(key)!r}, not {value!r}" for key, value in settings.items()
               if earlier.get(key) != value]
    if changed:
        raise UsageError(f"--out-dir {out_dir} holds a cross-validation with other settings "
                         f"({'; '.join(changed)}): run it with those, or choose another --out-dir")


def planned_epochs(folder: Path) -> int | None:
    """The epochs a run was started for (its config.json), None before it started."""
    try:
        return int(json.loads((folder / "config.json").read_text())["args"]["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def score_from_log(folder: Path) -> bool:
    """A run killed after its last epoch, before its final.json: write it from the log's last
    record (that epoch's validation) and return True; False while training is unfinished."""
    epochs = planned_epochs(folder)
    log = RunFolder(folder).read_log()
    if epochs is None or not log or log[-1].get("epoch") != epochs - 1:
        return False
    final = {key[len("val_"):]: value for key, value in log[-1].items() if key.startswith("val_")}
    write_json(folder / "final.json", {"final": final, "from": "log.jsonl"})
    return True


def run_all(args, out_dir: Path, stop: StopRequests) -> list[str]:
    """Every run not finished yet, --jobs at a time, each logging to its train.log -> failures.
    After a stop request no run starts, the running ones stop and save; it returns when they end."""
    # fold by fold, every decoder on a fold before the next: a call cut short leaves folds to pair
    pending = [(decoder, fold) for fold in range(args.folds) for decoder in args.decoders
               if not (run_folder(out_dir, decoder, fold) / "final.json").is_file()
               and not score_from_log(run_folder(out_dir, decoder, fold))]
    print(f"{args.dataset}: {len(args.decoders)} decoders x {args.folds} folds, {len(pending)} "
          f"runs to do, {args.jobs} at a time, in {out_dir}")
    # the runs at once share the cores
    threads = max(1, available_cores() // max(1, min(args.jobs, len(pending))))
    environment = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(threads)))
    running, failures, told = {}, [], set()
    while pending or running:
        if stop.signum is not None:
            pending.clear()
            for key, (process, _, _) in running.items():
                # The runs share the terminal's process group and may have the signal already:
                # SIGTERM, which train.py takes once (a second SIGINT would stop it unsaved).
                if key not in told:
                    process.send_signal(signal.SIGTERM)
                    told.add(key)
        while pending and len(running) < args.jobs and stop.signum is None:
            decoder, fold = pending.pop(0)
            folder = run_folder(out_dir, decoder, fold)
            folder.mkdir(parents=True, exist_ok=True)
            log = open(folder / "train.log", "a")
            command = train_command(args, decoder, fold, folder)
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                       env=environment)
            running[(decoder, fold)] = (process, log, time.time())
            print(f"  started {decoder} fold {fold}: {' '.join(command[1:])}", flush=True)
        for key, (process, log, started) in list(running.items()):
            if process.poll() is None:
                continue
            log.close()
            del running[key]
            folder = run_folder(out_dir, *key)
            if process.returncode == 0:
                print(f"  done {key[0]} fold {key[1]} in {time.time() - started:.0f}s", flush=True)
            elif stop.signum is not None and (-process.returncode in STOP_SIGNALS  # killed
                                              or process.returncode - 128 in STOP_SIGNALS):
                print(f"  stopped {key[0]} fold {key[1]} ({folder / 'train.log'})", flush=True)
            else:
                failures.append(f"{key[0]} fold {key[1]} (exit {process.returncode}; see "
                                f"{folder / 'train.log'})")
                print(f"  FAILED {failures[-1]}", file=sys.stderr, flush=True)
        time.sleep(0.5)
    return failures


# ------------------------------------------------------------------------------------- the summary
def mean_and_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1) of the finite values; NaN where too few."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return (statistics.fmean(finite) if finite else math.nan,
            statistics.stdev(finite) if len(finite) > 1 else math.nan)


def run_resolution(args, out_dir: Path) -> dict:
    """image_size, patch_size, lesion_patches and overlap as the first run started recorded them."""
    keys = ("image_size", "patch_size", "lesion_patches", "overlap")
    for decoder in args.decoders:
        for fold in range(args.folds):
            try:
                config = run_folder(out_dir, decoder, fold) / "config.json"
                run = json.loads(config.read_text())["args"]
                return {key: run.get(key) for key in keys}
            except (OSError, ValueError, KeyError, TypeError):  # not started
                continue
    return dict.fromkeys(keys)


def resolution_text(summary: dict) -> str:
    """The table's caption of how the runs saw the images."""
    size, patch = summary.get("image_size"), summary.get("patch_size")
    if not size:
        return "image size not recorded"
    if not patch or patch >= size:
        return f"whole images at {size}x{size}"
    centred, overlap = summary.get("lesion_patches"), summary.get("overlap")
    return (f"images at {size}x{size}, trained on {patch}x{patch} patches"
            + (f" ({centred:.2g} lesion-centred)" if centred is not None else "")
            + ", validated by windows" + (f" (overlap {overlap:g})" if overlap is not None else ""))


def run_progress(folder: Path, log: list[dict], compared: str) -> dict:
    """How far a run got: finished (its final.json), epochs logged of those planned, and, while
    unfinished, its last validation of the compared score."""
    finished = (folder / "final.json").is_file()
    scored = [record for record in log if record.get(f"val_{compared}") is not None]
    last = (None if finished or not scored else
            dict(epoch=scored[-1]["epoch"], score=scored[-1][f"val_{compared}"]))
    return dict(finished=finished, epochs_done=log[-1]["epoch"] + 1 if log else 0,
                epochs=planned_epochs(folder), last_validated=last)


def summarise(args, out_dir: Path) -> tuple[dict, dict]:
    """(summary.json's content, learning curves per decoder and fold) from every run's files."""
    finals, curves = {}, {}
    for decoder in args.decoders:
        finals[decoder], curves[decoder] = [], []
        for fold in range(args.folds):
            folder = run_folder(out_dir, decoder, fold)
            path = folder / "final.json"
            final = json.loads(path.read_text())["final"] if path.is_file() else {}
            for lesion, every in (("dice_mean_lesion_images", "dice_mean_per_image"),
                                  ("iou_mean_lesion_images", "iou_mean_per_image")):
                if every in final and lesion not in final:  # an older version's run: noted
                    final[lesion], final["older_run"] = final[every], True
            # an older run had no lesion counts (a null sensitivity: a fold without lesions)
            final["lesions_uncounted"] = bool(final) and "false_positives_per_image" not in final
            finals[decoder].append(final)
            curves[decoder].append(RunFolder(folder).read_log())
    classes = any("mean_iou" in final for runs in finals.values() for final in runs) or any(
        "val_mean_iou" in record for logs in curves.values() for log in logs for record in log)
    kind = "classes" if classes else "binary"
    keys, compared = SCORES[kind].values(), COMPARED[kind]
    kept = (*keys, "images", "images_with_lesion", "older_run", "lesions_uncounted")
    runs = {decoder: [{"fold": fold, **run_progress(run_folder(out_dir, decoder, fold),
                                                    curves[decoder][fold], compared),
                       **{key: final.get(key) for key in kept}}
                      for fold, final in enumerate(folds)] for decoder, folds in finals.items()}
    table = {decoder: {key: dict(zip(("mean", "std"), mean_and_std([r[key] for r in rows])))
                       for key in keys}
             for decoder, rows in runs.items()}
    # a fold is compared where both runs scored it, by the same statistic (an older run's is
    # over all images); a NaN written by hand or an older version counts as unscored
    scored_alike = lambda a, b: (all(isinstance(r[compared], (int, float))
                                     and math.isfinite(r[compared]) for r in (a, b))
                                 and bool(a.get("older_run")) == bool(b.get("older_run")))
    paired = {}
    for other in (d for d in args.decoders if d != "fusion" and "fusion" in args.decoders):
        differences = [a[compared] - b[compared] if scored_alike(a, b) else None
                       for a, b in zip(runs["fusion"], runs[other])]
        scored = [d for d in differences if d is not None]
        paired[f"fusion vs {other}"] = dict(differences=differences, mean=mean_and_std(scored)[0],
                                            fusion_wins=sum(d > 0 for d in scored),
                                            other_wins=sum(d < 0 for d in scored),
                                            ties=sum(d == 0 for d in scored))
    summary = dict(dataset=args.dataset, data_root=args.data_root, folds=args.folds,
                   train_args=args.train_args, scores=kind, compared=compared, runs=runs,
                   table=table, paired=paired, **run_resolution(args, out_dir))
    return summary, curves


def print_summary(summary: dict) -> None:
    """Table 2's format, mean ± std over folds, then the paired comparison."""
    def cell(score: dict, scale: float) -> str:
        mean, std = scale * score["mean"], scale * score["std"]
        if math.isnan(mean):
            return "n/a"
        return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"  # NaN: one fold

    columns, compared = SCORES[summary["scores"]], summary["compared"]
    header = ["Architecture", *columns, "folds"]
    body = [[decoder, *(cell(scores[key], 1 if key in COUNTS else 100) for key in columns.values()),
             str(sum(r[compared] is not None for r in summary["runs"][decoder]))]
            for decoder, scores in summary["table"].items()]
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    print()
    for line in [header] + body:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(line, widths))))
    scored = ("lesion images: means over the images with a lesion (the thesis' statistic: "
              "Table 2's images all hold a mass); all images: over every image (a lesion-free one "
              "predicted empty scores 1); pooled: over all pixels of the fold; a lesion is found "
              "by a mark with IoU >= 0.2, a mark that finds none is a false positive (FP)"
              if summary["scores"] == "binary" else
              "mIoU and mean Dice over the classes of each fold's confusion matrix")
    print(f"{summary['dataset']}, {summary['folds']}-fold cross-validation by patient, "
          f"{resolution_text(summary)}: mean ± standard deviation over folds of each fold's "
          f"last-epoch validation; {scored}.")
    older = sum(bool(run.get("older_run")) for runs in summary["runs"].values() for run in runs)
    if older:
        print(f"{older} run(s) predate the means over images with a lesion: their IoU and DICE are "
              "over all images, and their folds are not paired with newer runs'")
    uncounted = sum(bool(run.get("lesions_uncounted")) for runs in summary["runs"].values()
                    for run in runs)
    if summary["scores"] == "binary" and uncounted:
        print(f"{uncounted} run(s) predate the lesion counts: their lesion columns are left out")
    what = "Dice (images with a lesion)" if summary["scores"] == "binary" else "mIoU"
    unfinished = [f"{decoder} fold {run['fold']} ({run['epochs_done']} of {run['epochs'] or '?'} "
                  "epochs" + (f"; {what} {100 * run['last_validated']['score']:.2f} at epoch "
                              f"{run['last_validated']['epoch']}" if run["last_validated"] else "")
                  + ")" for decoder, runs in summary["runs"].items() for run in runs
                  if not run["finished"]]
    if unfinished:
        print(f"not finished, so not in the table: {', '.join(unfinished)}")
    for name, pair in summary["paired"].items():
        differences = ", ".join("n/a" if d is None else f"{100 * d:+.1f}"
                                for d in pair["differences"])
        counted = len([d for d in pair["differences"] if d is not None])
        mean = "n/a" if math.isnan(pair["mean"]) else f"{100 * pair['mean']:+.2f}"
        other = name.split(" vs ")[1]
        print(f"{name}: {what} difference per fold {differences} points (mean {mean}); fusion "
              f"wins {pair['fusion_wins']}, {other} {pair['other_wins']}, ties {pair['ties']}, of "
              f"{counted} folds")


def main(args, stop: StopRequests | None = None) -> int:
    if args.folds < 2 or args.jobs < 1:
        raise UsageError(f"--folds {args.folds} and --jobs {args.jobs}: need at least 2 folds and "
                         "1 job")
    forbidden = {"--dataset", "--data-root", "--decoder", "--fold", "--out-dir", "--resume",
                 "--json", "--overwrite"}
    clashes = sorted(forbidden & {flag.split("=")[0] for flag in args.train_args})
    if clashes:
        raise UsageError(f"{', '.join(clashes)} after --: crossval.py sets these for each run "
                         "itself")
    if not Path(args.data_root).is_dir():
        raise UsageError(f"--data-root {args.data_root}: folder not found")
    out_dir = Path(args.out_dir or f"runs/cv-{args.dataset}")
    refuse_file_in_the_way(out_dir, "--out-dir")
    args.decoders = list(dict.fromkeys(args.decoders))  # a decoder named twice is trained once
    check_settings(args, out_dir)
    stop = stop or StopRequests()
    stop.graceful = True  # a signal is a request: the runs stop and save, the summary is written
    try:
        failures = run_all(args, out_dir, stop)
        summary, curves = summarise(args, out_dir)
        write_json(out_dir / "summary.json", summary)  # kept, whatever printing it meets
        print_summary(summary)
        draw_crossval(out_dir / "summary.png", summary["runs"], curves,
                      metric=summary["compared"], title=f"{args.dataset}: Table 2 decoders, "
                      f"{args.folds}-fold cross-validation by patient")
    finally:
        stop.graceful = False
    print(f"\nwrote {out_dir / 'summary.json'} and {out_dir / 'summary.png'}")
    if failures:
        print(f"{len(failures)} run(s) failed: {'; '.join(failures)}; run the command again to "
              "resume them", file=sys.stderr)
    if stop.signum is not None:  # after the summary: what was done is kept and shown
        unfinished = sum(not run["finished"] for runs in summary["runs"].values() for run in runs)
        raise Stopped(stop.signum, f"stopped by {signal.Signals(stop.signum).name}: {unfinished} "
                      "run(s) not finished, each saved where it stopped; run the command again "
                      "to resume them")
    return 1 if failures else 0


if __name__ == "__main__":
    arguments = get_args_parser().parse_args()
    requests = StopRequests("stopping the runs, which save where they are, then the summary")
    sys.exit(run_command("crossval.py", lambda: main(arguments, requests), (UsageError,),
                         stop=requests))
