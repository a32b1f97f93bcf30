"""crossval.py's summary: from finished runs (their final.json and log.jsonl) to Table 2's format with mean and standard
deviation over folds, the paired comparison and the figure, without training anything; and a cross-validation stopped
by a signal, with tiny runs. The whole command runs to its end in bench/gpu.sh's dry run (tests/test_benchmark.py)."""
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import crossval
from helpers import write_toy_mias

ROOT = Path(__file__).resolve().parents[1]

# per decoder and fold: (Dice over the images with a lesion, Dice over all images); IoU is derived from them
DICE = {"fusion": [(0.60, 0.70), (0.50, 0.64), (0.70, 0.78)],
        "unet": [(0.55, 0.69), (0.52, 0.66), (0.61, 0.72)]}


def write_finished_runs(out_dir):
    """Finished runs of 3 folds, as an earlier `crossval.py --dataset mias --data-root <out_dir's parent> --folds 3`
    left them, with the crossval.json that call wrote."""
    settings = dict(dataset="mias", data_root=str(out_dir.parent.resolve()), folds=3, train_args=[])
    out_dir.mkdir(parents=True)
    (out_dir / "crossval.json").write_text(json.dumps(settings))
    for decoder, folds in DICE.items():
        for fold, (lesion, every) in enumerate(folds):
            folder = out_dir / decoder / f"fold{fold}"
            folder.mkdir(parents=True)
            final = dict(dice_mean_lesion_images=lesion, iou_mean_lesion_images=lesion / 2, dice_mean_per_image=every,
                         iou_mean_per_image=every / 2, dice_pooled=lesion + 0.1, iou_pooled=lesion / 2 + 0.05,
                         images=15.0, images_with_lesion=11.0, lesion_sensitivity=lesion + 0.2,
                         false_positives_per_image=fold + lesion,
                         false_positives_per_normal_image=2 * fold)
            (folder / "final.json").write_text(json.dumps({"final": final}))
            ran = dict(epochs=3, image_size=1024, patch_size=256, lesion_patches=1 / 3, overlap=0.5)
            (folder / "config.json").write_text(json.dumps({"args": ran}))
            records = [{"epoch": epoch, "train_loss": 1 / (epoch + 1),
                        "val_dice_mean_lesion_images": lesion * (epoch + 1) / 3} for epoch in range(3)]
            (folder / "log.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))


def test_a_multiclass_cross_validation_with_no_run_finished_is_summarised_by_miou(tmp_path):
    """Its logs say what it scores before any final.json does: each run's last mIoU, not an empty binary table."""
    for fold in range(2):
        folder = tmp_path / "cv" / "unet" / f"fold{fold}"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"args": {"epochs": 10, "image_size": 64}}))
        (folder / "log.jsonl").write_text("".join(json.dumps({"epoch": epoch, "val_mean_iou": epoch / 8})
                                                  + "\n" for epoch in range(4)))
    args = crossval.get_args_parser().parse_args(["--dataset", "folder", "--data-root", str(tmp_path), "--folds", "2",
                                                  "--decoders", "unet", "--", "--num-classes", "3"])
    summary, _ = crossval.summarise(args, tmp_path / "cv")
    assert summary["scores"] == "classes"
    assert [run["last_validated"] for run in summary["runs"]["unet"]] == [{"epoch": 3, "score": 0.375}] * 2


def test_summary_of_finished_runs_is_table_2_with_spread_and_a_paired_comparison(tmp_path, capsys):
    out_dir = tmp_path / "cv"
    write_finished_runs(out_dir)
    args = crossval.get_args_parser().parse_args(["--dataset", "mias", "--data-root", str(tmp_path),
                                                  "--folds", "3", "--decoders", "fusion", "unet",
                                                  "--out-dir", str(out_dir)])
    assert crossval.main(args) == 0
    printed = capsys.readouterr().out
    assert "0 runs to do" in printed and "started" not in printed  # finished runs are not trained again
    summary = json.loads((out_dir / "summary.json").read_text())
    for decoder, folds in DICE.items():
        lesion = [dice for dice, _ in folds]
        table = summary["table"][decoder]
        assert table["dice_mean_lesion_images"]["mean"] == pytest.approx(statistics.fmean(lesion))
        assert table["dice_mean_lesion_images"]["std"] == pytest.approx(statistics.stdev(lesion))  # n - 1
        assert table["dice_mean_per_image"]["mean"] == pytest.approx(statistics.fmean(every for _, every in folds))
        assert table["iou_mean_lesion_images"]["mean"] == pytest.approx(statistics.fmean(lesion) / 2)
        assert table["lesion_sensitivity"]["mean"] == pytest.approx(statistics.fmean(lesion) + 0.2)
        rates = [fold + dice for fold, dice in enumerate(lesion)]
        assert table["false_positives_per_image"]["mean"] == pytest.approx(statistics.fmean(rates))
        assert table["false_positives_per_image"]["std"] == pytest.approx(statistics.stdev(rates))
        assert table["false_positives_per_normal_image"]["mean"] == pytest.approx(2)  # 0, 2, 4
    pair = summary["paired"]["fusion vs unet"]  # compared on the images with a lesion: +5, -2, +9 points
    assert pair["differences"] == pytest.approx([0.05, -0.02, 0.09])
    assert (pair["fusion_wins"], pair["other_wins"], pair["ties"]) == (2, 1, 0)
    assert pair["mean"] == pytest.approx(0.04)
    assert "60.00 ± 10.00" in printed  # fusion's lesion-image Dice, mean ± SD
    header = next(line for line in printed.splitlines() if line.startswith("Architecture"))
    assert re.split(r"\s{2,}", header) == [
        "Architecture", "IoU, lesion images (%)", "Dice, lesion images (%)", "Dice, all images (%)",
        "IoU pooled (%)", "Dice pooled (%)", "lesions found (%)", "FP / image", "FP / normal image",
        "folds"]
    fusion = next(line for line in printed.splitlines() if line.startswith("fusion "))
    cells = re.split(r"\s{2,}", fusion)[-4:]
    assert cells == ["80.00 ± 10.00", "1.60 ± 1.05", "2.00 ± 2.00", "3"]  # FP not in %
    assert "(mean +4.00); fusion wins 2, unet 1, ties 0, of 3 folds" in printed
    for score in summary["table"]["fusion"].values():  # one fold scored: a mean, no spread (not "± nan")
        score["std"] = math.nan
    crossval.print_summary(summary)
    fusion = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("fusion "))
    assert "nan" not in fusion and re.split(r"\s{2,}", fusion)[-4:-1] == ["80.00", "1.60", "2.00"]
    assert "images at 1024x1024, trained on 256x256 patches (0.33 lesion-centred)" in printed
    assert (summary["image_size"], summary["patch_size"]) == (1024, 256)
    assert (out_dir / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_class_index_runs_are_summarised_by_their_miou(tmp_path, capsys):
    """Runs of a K-class folder (-- --num-classes K) write mIoU, not Dice: the table and the comparison use it."""
    out_dir = tmp_path / "cv"
    for decoder, scores in (("fusion", (0.40, 0.50)), ("unet", (0.45, 0.42))):
        for fold, score in enumerate(scores):
            (out_dir / decoder / f"fold{fold}").mkdir(parents=True)
            final = dict(mean_iou=score, mean_dice=score + 0.1, pixel_accuracy=0.9, images=6.0)
            (out_dir / decoder / f"fold{fold}" / "final.json").write_text(json.dumps({"final": final}))
    args = crossval.get_args_parser().parse_args(["--dataset", "folder", "--data-root", str(tmp_path), "--folds", "2",
                                                  "--decoders", "fusion", "unet", "--out-dir", str(out_dir)])
    assert crossval.main(args) == 0
    summary, printed = json.loads((out_dir / "summary.json").read_text()), capsys.readouterr().out
    assert summary["scores"] == "classes" and summary["compared"] == "mean_iou"
    assert summary["table"]["fusion"]["mean_iou"]["mean"] == pytest.approx(0.45)
    assert summary["paired"]["fusion vs unet"]["differences"] == pytest.approx([-0.05, 0.08])
    assert "mIoU (%)" in printed and "mIoU difference per fold -5.0, +8.0 points" in printed


def test_a_run_killed_after_its_last_epoch_is_scored_from_its_log(tmp_path, capsys):
    """No final.json, but the log reached config.json's last epoch: scored from the log's last validation, not
    trained again (train.py would refuse to resume a finished run)."""
    out_dir = tmp_path / "cv"
    write_finished_runs(out_dir)
    folder = out_dir / "unet" / "fold1"
    (folder / "final.json").unlink()
    args = crossval.get_args_parser().parse_args(["--dataset", "mias", "--data-root", str(tmp_path), "--folds", "3",
                                                  "--decoders", "fusion", "unet", "--out-dir", str(out_dir)])
    assert crossval.main(args) == 0
    assert "0 runs to do" in capsys.readouterr().out
    final = json.loads((folder / "final.json").read_text())
    assert final == {"final": {"dice_mean_lesion_images": 0.52 * 3 / 3}, "from": "log.jsonl"}  # epoch 2's


def test_a_decoder_named_twice_runs_once_and_a_summary_says_what_it_cannot_compute(tmp_path, capsys):
    """--decoders unet unet trains each fold once; a comparison with no fold to pair prints n/a, not +nan; a caption
    whose run records lack the patch settings leaves them out; runs whose config.json is gone still hold runs."""
    out_dir = tmp_path / "cv"
    write_finished_runs(out_dir)
    parse = lambda *argv: crossval.get_args_parser().parse_args(["--dataset", "mias", "--data-root", str(tmp_path),
                                                                 "--folds", "3", "--out-dir", str(out_dir), *argv])
    assert crossval.main(parse("--decoders", "unet", "unet")) == 0
    assert "mias: 1 decoders x 3 folds, 0 runs to do" in capsys.readouterr().out
    final = out_dir / "unet" / "fold1" / "final.json"
    final.write_text(final.read_text().replace('"dice_mean_lesion_images": 0.52', '"dice_mean_lesion_images": NaN'))
    summary, _ = crossval.summarise(parse("--decoders", "fusion", "unet"), out_dir)
    assert summary["paired"]["fusion vs unet"]["differences"][1] is None  # a NaN score is no score to pair
    summary["paired"]["fusion vs unet"].update(differences=[None] * 3, mean=math.nan, fusion_wins=0, other_wins=0)
    crossval.print_summary(summary)
    assert "(mean n/a); fusion wins 0, unet 0, ties 0, of 0 folds" in capsys.readouterr().out
    assert crossval.resolution_text(dict(image_size=1024, patch_size=256)) == (
        "images at 1024x1024, trained on 256x256 patches, validated by windows")
    (out_dir / "crossval.json").unlink()
    for config in out_dir.glob("*/fold*/config.json"):
        config.unlink()  # a log and a final.json remain: runs all the same
    with pytest.raises(crossval.UsageError, match="holds runs .* but no crossval.json"):
        crossval.main(parse("--decoders", "unet"))


def test_runs_of_an_older_version_are_scored_by_their_mean_over_all_images_and_say_so(tmp_path, capsys):
    out_dir = tmp_path / "cv"
    write_finished_runs(out_dir)
    final = out_dir / "unet" / "fold0" / "final.json"
    older = {key: value for key, value in json.loads(final.read_text())["final"].items() if "lesion" not in key}
    final.write_text(json.dumps({"final": older}))
    args = crossval.get_args_parser().parse_args(["--dataset", "mias", "--data-root", str(tmp_path), "--folds", "3",
                                                  "--decoders", "fusion", "unet", "--out-dir", str(out_dir)])
    assert crossval.main(args) == 0
    summary, printed = json.loads((out_dir / "summary.json").read_text()), capsys.readouterr().out
    assert summary["runs"]["unet"][0]["dice_mean_lesion_images"] == 0.69  # that fold's mean over all images
    assert "1 run(s) predate the means over images with a lesion" in printed
    # ...so its fold is not paired with fusion's Dice over the images with a lesion: another statistic
    assert "per fold n/a, -2.0, +9.0 points" in printed and "fusion wins 1, unet 1, ties 0, of 2 folds" in printed


def test_runs_without_lesion_counts_show_n_a_in_their_columns(tmp_path, capsys):
    out_dir = tmp_path / "cv"
    write_finished_runs(out_dir)
    for final in out_dir.glob("unet/fold*/final.json"):
        counted = ("lesion_sensitivity", "false_positives_per_image",
                   "false_positives_per_normal_image")
        scores = json.loads(final.read_text())["final"]
        older = {key: value for key, value in scores.items() if key not in counted}
        final.write_text(json.dumps({"final": older}))
    no_lesion = out_dir / "fusion" / "fold0" / "final.json"  # a fold without lesions: no sensitivity, yet counted
    scores = json.loads(no_lesion.read_text())["final"]
    no_lesion.write_text(json.dumps({"final": dict(scores, lesion_sensitivity=None)}))
    args = crossval.get_args_parser().parse_args(["--dataset", "mias", "--data-root", str(tmp_path),
                                                  "--folds", "3", "--out-dir", str(out_dir),
                                                  "--decoders", "fusion", "unet"])
    assert crossval.main(args) == 0
    printed = capsys.readouterr().out
    unet = next(line for line in printed.splitlines() if line.startswith("unet "))
    assert unet.split()[-4:] == ["n/a", "n/a", "n/a", "3"]  # the lesion columns; the Dice are there
    assert "3 run(s) predate the lesion counts" in printed  # unet's three, not fusion's fold without lesions


def test_bad_flags_and_other_settings_are_refused_before_any_run(tmp_path):
    parse = lambda *argv: crossval.get_args_parser().parse_args(["--dataset", "mias", "--out-dir", str(tmp_path / "cv"),
                                                                 *argv])
    with pytest.raises(crossval.UsageError, match="--fold after --"):
        crossval.main(parse("--data-root", str(tmp_path), "--", "--fold", "1/5"))
    with pytest.raises(crossval.UsageError, match="--data-root .*missing: folder not found"):
        crossval.main(parse("--data-root", str(tmp_path / "missing")))
    assert not (tmp_path / "cv").exists()  # refused before anything was written
    (tmp_path / "a-file").write_text("")
    with pytest.raises(crossval.UsageError, match="--out-dir .*a-file is a file, not a folder"):
        crossval.main(crossval.get_args_parser().parse_args(["--dataset", "mias", "--data-root", str(tmp_path),
                                                             "--out-dir", str(tmp_path / "a-file" / "cv")]))
    write_finished_runs(tmp_path / "cv")
    assert crossval.main(parse("--data-root", str(tmp_path), "--folds", "3", "--decoders", "unet")) == 0
    with pytest.raises(crossval.UsageError, match=r"other settings \(folds 3, not 2\)"):
        crossval.main(parse("--data-root", str(tmp_path), "--folds", "2", "--decoders", "unet"))
    with pytest.raises(crossval.UsageError, match="train_args"):
        crossval.main(parse("--data-root", str(tmp_path), "--folds", "3", "--", "--epochs", "9"))
    (tmp_path / "cv" / "crossval.json").unlink()  # runs whose settings nothing records are not mixed in either
    with pytest.raises(crossval.UsageError, match=r"holds runs \(.*fold0\) but no crossval.json"):
        crossval.main(parse("--data-root", str(tmp_path), "--folds", "3", "--decoders", "unet"))
    corrected = ["--dataset", "mias", "--data-root", str(tmp_path), "--out-dir", str(tmp_path / "cv2"), "--folds",
                 "2", "--decoders", "unet", "--", "--epochs", "5"]
    typo = crossval.get_args_parser().parse_args([*corrected[:-2], "--epoch", "5"])
    assert crossval.main(typo) == 1  # every run fails at once, before its folder holds a run
    assert not any((tmp_path / "cv2").glob("*/fold*/config.json"))
    crossval.check_settings(crossval.get_args_parser().parse_args(corrected), tmp_path / "cv2")  # so this is taken
    # how the runs run is not what they compute: another device or worker count, flags in another order
    assert crossval.recipe_flags(["--epochs", "5", "--device", "cuda:1", "--amp=bf16"]) == \
        crossval.recipe_flags(["--amp", "bf16", "--workers", "2", "--epochs", "5"])


@pytest.mark.slow
def test_a_stopped_cross_validation_saves_every_run_and_still_writes_its_summary(tmp_path):
    """SIGTERM to crossval.py alone (`kill PID`; Ctrl-C and timeout reach its runs too): it passes the stop on, each run
    saves where it is, the summary shows what was done, it exits 143, and the next call resumes every run."""
    write_toy_mias(tmp_path / "mias")
    out_dir = tmp_path / "cv"
    argv = ["--dataset", "mias", "--data-root", str(tmp_path / "mias"), "--folds", "2", "--jobs", "2", "--decoders",
            "unet", "--out-dir", str(out_dir), "--", "--device", "cpu", "--epochs", "50", "--image-size", "32",
            "--batch-size", "4", "--workers", "0", "--decoder-channels", "16,16,16,16,16", "--weights", "none",
            "--panels", "0"]
    process = subprocess.Popen([sys.executable, str(ROOT / "crossval.py"), *argv], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    folders = [out_dir / "unet" / f"fold{fold}" for fold in range(2)]
    deadline = time.time() + 120
    while not all((folder / "log.jsonl").is_file() for folder in folders):  # each run has logged an epoch
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, out[-2000:] + err[-2000:]
    assert err.strip().splitlines()[-1] == ("crossval.py: stopped by SIGTERM: 2 run(s) not finished, each saved where "
                                            "it stopped; run the command again to resume them")
    summary = json.loads((out_dir / "summary.json").read_text())
    assert (out_dir / "summary.png").stat().st_size > 0
    args = crossval.get_args_parser().parse_args(argv)
    for folder, run in zip(folders, summary["runs"]["unet"]):
        assert not run["finished"] and 1 <= run["epochs_done"] < 50 and run["epochs"] == 50
        last = run["last_validated"]  # every epoch is validated here: the last one logged
        assert last["epoch"] == run["epochs_done"] - 1 and 0 <= last["score"] <= 1
        assert (f"unet fold {run['fold']} ({run['epochs_done']} of 50 epochs; Dice (images with a lesion) "
                f"{100 * last['score']:.2f} at epoch {last['epoch']})") in out
        assert "train.py: stopped by SIGTERM at epoch" in (folder / "train.log").read_text()  # saved, not killed
        saved = torch.load(folder / "last.pt", weights_only=True, mmap=True)
        assert saved["epoch"] == run["epochs_done"] - 1  # the log shows what the weights have seen
        command = crossval.train_command(args, "unet", run["fold"], folder)
        assert command[command.index("--resume") + 1] == str(folder / "last.pt")
