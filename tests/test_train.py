"""train.py end to end on tiny synthetic runs: the demo pipeline, exact resume, DDP metrics, NaN stop, CLI errors.

Every run uses the demo's synthetic data at 32x32 with a 16-channel fusion decoder (the ResNet-34 encoder is fixed),
one CPU thread per process (so the one- and two-process runs compute each image the same way, and a loaded machine
does not slow the tests down by oversubscription), and --limit to keep splits to a handful of images.
"""
import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import recipes
import train
from engine import setup
from model import build_model
from engine.devices import AutocastReplica, check_device_flags, resolve_device
from engine.cli import UsageError, error_line
from helpers import as_logged, read_log

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--image-size", "32", "--limit", "6", "--batch-size", "3", "--decoder-channels", "16,16,16,16,16",
        "--panels", "0", "--print-freq", "1", "--workers", "0"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def run_main(argv: list[str]) -> dict:
    return train.main(train.get_args_parser().parse_args(argv))


def script(*argv: str, launcher: tuple[str, ...] = (), env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *launcher, str(ROOT / "train.py"), *argv], cwd=ROOT, env=env or ENV,
                          capture_output=True, text=True, timeout=300)


# --------------------------------------------------------------------------------------------------- presets
def resolve(*argv: str):
    """train.py's settings for these flags, every default filled (nothing is built)."""
    args = train.get_args_parser().parse_args(list(argv))
    train.resolve_args(args)
    return args


def test_presets_are_table_1_and_the_demo_is_the_default():
    cbis, voc, demo = resolve("--dataset", "cbis"), resolve("--dataset", "voc"), resolve()
    assert (cbis.encoder, cbis.decoder, cbis.weights, cbis.loss, cbis.image_size, cbis.epochs) == \
        ("resnet34", "fusion", "imagenet-timm", "jaccard+focal_tversky", 256, 150)  # §4.3: encoders from timm
    assert cbis.milestones == [0, 40, 70, 100, 120]
    assert [cbis.lr * f for f in cbis.lr_factors] == pytest.approx([5e-4, 1e-4, 5e-5, 1e-5, 1e-6])
    assert (voc.encoder, voc.loss, voc.image_size, voc.epochs, voc.milestones) == \
        ("bit_r50x1", "ce+focal_tversky", 384, 150, [0, 80])
    assert [voc.lr * f for f in voc.lr_factors] == pytest.approx([5e-5, 1e-5])
    assert demo.dataset == "synthetic" and demo.weights is None and demo.decoder == "fusion"
    assert (demo.patch_size, demo.lesion_patches, demo.overlap) == (None, 1 / 3, 0.5)  # whole images
    overridden = resolve("--dataset", "cbis", "--lr", "1e-3", "--epochs", "3", "--weights", "none")
    assert (overridden.lr, overridden.epochs, overridden.weights) == (1e-3, 3, None)
    assert [overridden.lr * f for f in overridden.lr_factors] == pytest.approx([1e-3, 2e-4, 1e-4, 2e-5, 2e-6])
    own = resolve("--dataset", "cbis", "--schedule", "0:1e-3,2:1e-4")  # taken as written, not rescaled
    assert (own.lr, own.milestones, own.lr_factors) == (1e-3, [0, 2], pytest.approx([1, 0.1]))
    constant = resolve("--dataset", "voc", "--schedule", "constant", "--lr", "1e-4")
    assert (constant.lr, constant.milestones, constant.lr_factors) == (1e-4, [0], [1.0])
    assert cbis.augment and voc.augment and resolve("--dataset", "cbis", "--no-augment").augment is False


def test_the_demo_head_starts_at_its_foreground_prior_and_the_thesis_recipes_at_smp_zero_bias():
    network = lambda *argv: setup.build_network(resolve(*TINY, *argv), None, 0, torch.device("cpu"))
    head_bias = lambda *argv: network(*argv).head.bias
    demo = network()
    assert resolve().foreground_prior == 0.02 and torch.sigmoid(demo.head.bias).item() == pytest.approx(0.02)
    assert torch.equal(head_bias("--dataset", "cbis", "--weights", "none"), torch.zeros(1))  # as the thesis ran
    assert torch.equal(head_bias("--foreground-prior", "none"), torch.zeros(1))
    assert torch.sigmoid(head_bias("--dataset", "mias", "--weights", "none", "--foreground-prior", "0.1")).item() \
        == pytest.approx(0.1)
    # the prior moves the head's bias only: every other weight is initialised as without it
    plain, primed = network("--foreground-prior", "none").state_dict(), demo.state_dict()
    assert [name for name, value in plain.items() if not torch.equal(value, primed[name])] == ["head.bias"]


def test_no_augment_reaches_the_training_set(tmp_path, monkeypatch):
    built, build_dataset = {}, setup.build_dataset

    class Built(Exception):
        """Both splits are built: main() stops here, before any training."""

    def spy(name, root, split, image_size, **options):
        built[split] = build_dataset(name, root, split, image_size, **options)
        if split == "train":
            raise Built
        return built[split]

    monkeypatch.setattr(setup, "build_dataset", spy)
    for flags, augmented in ((["--no-augment"], False), (["--augment"], True), ([], False)):  # demo: off
        with pytest.raises(Built):
            run_main([*TINY, "--epochs", "1", *flags, "--out-dir", str(tmp_path)])
        assert built["train"].augment is augmented and built["val"].augment is False


def test_piecewise_schedule_steps_at_the_milestones_and_survives_a_state_dict_round_trip():
    milestones, factors, lr = recipes.parse_schedule("0:5e-4,40:1e-4,70:5e-5", None)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, recipes.PiecewiseConstant(milestones, factors))
    lrs = []
    for _ in range(80):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == lrs[39] == pytest.approx(5e-4) and lrs[40] == lrs[69] == pytest.approx(1e-4)
    assert lrs[70] == lrs[79] == pytest.approx(5e-5)
    fresh = torch.optim.lr_scheduler.LambdaLR(optimizer, recipes.PiecewiseConstant([0], [1.0]))
    fresh.load_state_dict(scheduler.state_dict())  # the milestones come back from the checkpoint
    assert fresh.lr_lambdas[0].milestones == [0, 40, 70] and fresh.lr_lambdas[0](75) == pytest.approx(0.1)
    assert recipes.parse_schedule("0:1e-3,5:1e-4", 2e-3)[2] == 2e-3  # --lr rescales the schedule


def test_autocast_replica_sets_its_own_dtype_in_any_thread():
    """nn.DataParallel runs each replica in a thread whose autocast has the device's default dtype (fp16 on CUDA);
    AutocastReplica must impose --amp's dtype there. Here: a thread whose ambient autocast says fp16."""
    layer, x, dtypes = torch.nn.Linear(4, 4), torch.randn(2, 4), {}

    def replica_thread(amp: str):
        with torch.autocast("cpu", dtype=torch.float16):
            dtypes[amp] = AutocastReplica(layer, amp)(x).dtype

    for amp in ("bf16", "none"):
        thread = threading.Thread(target=replica_thread, args=(amp,))
        thread.start()
        thread.join()
    assert dtypes == {"bf16": torch.bfloat16, "none": torch.float32}


# ------------------------------------------------------------------------------------------------- end to end
def test_demo_pipeline_end_to_end(tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    assert train.cli([*TINY, "--epochs", "2", "--panels", "2", "--out-dir", str(out), "--json",
                      str(tmp_path / "m.json")]) == 0
    printed = capsys.readouterr().out
    assert "predicting all background scores" in printed and "(0.0000 pooled)" in printed  # once any lesion exists
    config = json.loads((out / "config.json").read_text())
    assert config["args"]["dataset"] == "synthetic" and "torch" in config["versions"]
    log = read_log(out)
    assert [r["epoch"] for r in log] == [0, 1] and all(r["val_images"] == 6 for r in log)
    best_epoch = max(log, key=lambda r: r["val_dice_mean_per_image"])["epoch"]  # the thesis' statistic chooses
    for name, epoch in (("last.pt", 1), ("best.pt", best_epoch)):
        checkpoint = torch.load(out / name, weights_only=True)  # only tensors and primitives
        assert checkpoint["epoch"] == epoch and checkpoint["step"] == 2 * (epoch + 1)
        assert set(checkpoint) >= {"model", "best_metric", "model_config", "args", "versions", "checksum"}
        if name == "last.pt":  # what an exact resume needs; best.pt holds the weights only
            assert set(checkpoint) >= {"optimizer", "scheduler", "scaler", "rng", "log"}
            assert as_logged(checkpoint["log"]) == log[:epoch + 1]  # the log travels with the weights
        else:
            assert checkpoint["kind"] == "weights" and "optimizer" not in checkpoint
        model = build_model(**checkpoint["model_config"])  # rebuilt from the checkpoint alone
        model.load_state_dict(checkpoint["model"])
    assert checkpoint["metrics"]["dice_mean_per_image"] == max(r["val_dice_mean_per_image"] for r in log)
    panels = sorted((out / "panels").glob("*.png"))
    assert len(panels) == 2 and all(str(p) in printed for p in panels)
    final = json.loads((tmp_path / "m.json").read_text())
    assert final["final"]["dice_mean_per_image"] == log[-1]["val_dice_mean_per_image"]
    assert "val_lesions" not in log[0] and final["final"]["lesions"] == log[-1]["val_lesions"] > 0  # last epoch
    lesions = final["final"]
    assert f"lesions found {lesions['lesions_found']:.0f} of {lesions['lesions']:.0f}, false positives per " \
           f"image {lesions['false_positives_per_image']:.2f}" in printed
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave no temporary file
    # best.pt is weights only: a resume from it is refused in one line that names last.pt
    assert train.cli(["--resume", str(out / "best.pt"), "--epochs", "3"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "weights only" in error and f"continue from {out / 'last.pt'}" in error


@pytest.mark.slow
def test_the_script_runs_as_a_user_types_it(tmp_path):
    """python train.py in a new process: its __main__ block, and a flag error as one line with exit code 2."""
    done = script(*TINY, "--epochs", "1", "--out-dir", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    assert "done in" in done.stdout and (tmp_path / "run" / "best.pt").is_file()
    wrong = script("--no-such-flag")
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and "unrecognized" in wrong.stderr


def test_resume_after_one_epoch_gives_bit_identical_weights(tmp_path, one_thread):
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_main([*TINY, "--epochs", "2", "--out-dir", str(straight)])
    # The split run loads its data in a persistent worker process: the stream must not depend on that.
    split_args = [*TINY[:-1], "1", "--out-dir", str(split)]
    run_main([*split_args, "--epochs", "1"])
    assert torch.load(split / "last.pt", weights_only=True)["epoch"] == 0
    # Only --resume and the new --epochs: every other setting comes back from the checkpoint.
    run_main(["--resume", str(split / "last.pt"), "--epochs", "2", "--workers", "1", "--panels", "0"])
    a, b = (torch.load(folder / "last.pt", weights_only=True) for folder in (straight, split))
    assert a["epoch"] == b["epoch"] == 1
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    moments = lambda c: [t for state in c["optimizer"]["state"].values() for t in state.values()]
    assert all(torch.equal(x, y) for x, y in zip(moments(a), moments(b), strict=True))
    assert a["scheduler"] == b["scheduler"] and read_log(straight)[1]["val_dice_pooled"] == \
        read_log(split)[1]["val_dice_pooled"]


@pytest.mark.slow
def test_two_gloo_processes_report_the_metrics_of_one_process(tmp_path, one_thread):
    out = tmp_path / "ddp"
    # 5 validation images over 2 ranks (3 + 2): a padding sampler would score one image twice.
    # Unet++ has parameters without gradient (DDP must be told), and its losses sum their counts over both processes
    args = [*TINY, "--decoder", "unetplusplus", "--limit", "5", "--batch-size", "2", "--eval-batch-size", "1",
            "--epochs", "1", "--out-dir", str(out)]
    ddp = script(*args, launcher=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"))
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("epoch 0 val") == 1  # only rank 0 prints
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    two_processes = read_log(out)[0]
    # one process scores the same checkpoint (this one, at one thread as each of the two had)
    one = tmp_path / "one.json"
    assert train.cli([*args, "--resume", str(out / "last.pt"), "--eval-only", "--json", str(one)]) == 0
    one_process = json.loads(one.read_text())
    assert one_process["images"] == two_processes["val_images"] == 5
    for key, value in one_process.items():  # exact: integer counts, summed in a different order
        assert value == two_processes[f"val_{key}"] or (math.isnan(value) and math.isnan(two_processes[f"val_{key}"]))


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys,
                                                                                   one_thread):
    real_build_loss, calls = train.build_loss, []

    def build_loss_that_breaks(spec, num_classes, **options):
        criterion = real_build_loss(spec, num_classes, **options)
        forward_with_terms = criterion.forward_with_terms

        def poisoned(logits, target):
            calls.append(1)
            total, terms = forward_with_terms(logits, target)
            return (total * math.nan if len(calls) == 3 else total), terms  # the first step of epoch 1

        criterion.forward_with_terms = poisoned
        return criterion

    monkeypatch.setattr(train, "build_loss", build_loss_that_breaks)
    out = tmp_path / "nan"
    code = train.cli([*TINY, "--epochs", "3", "--out-dir", str(out)])
    error = capsys.readouterr().err.strip()
    assert code == train.NON_FINITE_EXIT and len(error.splitlines()) == 1
    assert "epoch 1, step 3 (1 of 2 in the epoch)" in error and str(out / "last.pt") in error
    kept = torch.load(out / "last.pt", weights_only=True)
    assert kept["epoch"] == 0 and all(v.isfinite().all() for v in kept["model"].values() if v.is_floating_point())
    assert [r["epoch"] for r in read_log(out)] == [0]


# -------------------------------------------------------------------------------------------------- CLI errors
def test_an_error_from_a_dataloader_worker_is_reported_by_its_own_message():
    wrapped = ("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "data.py", line 170, in preprocessed\nmammograms.DataError: /d/x.dcm: not a mask; delete it')
    assert error_line(RuntimeError(wrapped)) == "/d/x.dcm: not a mask; delete it"
    assert error_line(ValueError("--image-size 100: not a multiple of 32\nmore")) == \
        "--image-size 100: not a multiple of 32"


@pytest.mark.parametrize("launch", [{"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, "--data-parallel"])
def test_one_named_gpu_is_refused_where_several_are_used(monkeypatch, launch):
    """torchrun picks each process' GPU from LOCAL_RANK and DataParallel uses them all: --device cuda:N would put
    every process on one GPU, or the model beside DataParallel's first."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the check comes before any CUDA call
    flags = ["--device", "cuda:1"]
    if isinstance(launch, dict):
        for name, value in launch.items():
            monkeypatch.setenv(name, value)
    else:
        flags.append(launch)
    args = train.get_args_parser().parse_args(flags)
    train.resolve_args(args)
    with pytest.raises(UsageError, match="LOCAL_RANK"):
        check_device_flags(resolve_device(args.device), args.device, amp=args.amp, sync_bn=args.sync_bn,
                           data_parallel=args.data_parallel)


def test_user_errors_end_in_one_line_and_exit_code_2(tmp_path, monkeypatch, capsys):
    empty, voc = tmp_path / "empty", tmp_path / "voc" / "VOCdevkit" / "VOC2012"
    empty.mkdir()
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    for split in ("train", "val"):
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("")  # a tree with no samples
    torchrun = dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0")
    weights_only, junk = tmp_path / "weights.pt", tmp_path / "junk.pt"
    model = build_model(decoder_channels=(16, 16, 16, 16, 16))
    torch.save({"model": model.state_dict(), "model_config": model.config}, weights_only)  # no training state
    junk.write_text("not a checkpoint")
    cases = [  # (argv, extra environment, words the message must contain)
        (["--eval-only"], {}, "--resume"),
        (["--data-parallel"], torchrun, "torchrun"),
        (["--image-size", "100"], {}, "multiple of 32"),
        (["--image-size", "-32"], {}, "positive multiple of 32"),
        (["--patch-size", "48"], {}, "--patch-size 48: a multiple of 32, at most --image-size 32"),
        (["--patch-size", "64"], {}, "at most --image-size 32"),
        (["--overlap", "1"], {}, "--overlap 1.0: a share in [0, 1)"),
        (["--lesion-patches", "2"], {}, "--lesion-patches 2.0"),
        (["--amp", "fp16", "--device", "cpu"], {}, "bf16"),
        (["--dataset", "cbis", "--data-root", str(tmp_path / "missing")], {}, "not found"),  # before any download
        (["--data-root", str(empty)], {}, "without --dataset: say what it holds, --dataset folder"),
        (["--dataset", "cbis"], {}, "--dataset cbis reads files: name their folder (--data-root)"),
        (["--lr", "-1"], {}, "--lr -1.0: must be >= 0"),
        (["--weight-decay", "-0.1"], {}, "--weight-decay -0.1"),
        (["--decoder-channels", "64,32"], {}, "five positive widths"),
        (["--decoder-channels", "64,32,16,8,0"], {}, "five positive widths"),
        (["--dataset", "cbis", "--data-root", str(empty), "--weights", "none"], {}, "CSV"),
        (["--dataset", "voc", "--data-root", str(tmp_path / "voc"), "--weights", "none"], {}, "no images found"),
        (["--schedule", "40:1e-4"], {}, "start at 0"),
        (["--loss", "dice+nonsense"], {}, "nonsense"),
        (["--weights", str(tmp_path / "missing.pth")], {}, "missing.pth"),
        (["--resume", str(tmp_path / "missing.pt")], {}, "missing.pt: checkpoint not found (--resume)"),
        (["--resume", str(weights_only)], {}, "no 'optimizer', 'scheduler'"),
        (["--resume", str(junk)], {}, "junk.pt: cannot open it as a checkpoint"),
        (["--device", "gpu0"], {}, "--device gpu0"),
        (["--json", str(tmp_path)], {}, "--json"),
        (["--foreground-prior", "1"], {}, "--foreground-prior 1: a probability in (0, 1)"),
        (["--foreground-prior", "low"], {}, "--foreground-prior low: a probability such as 0.02"),
        (["--foreground-prior", "0.02", "--num-classes", "3"], {}, "one-logit (binary) head"),
    ]
    for argv, env, words in cases:
        with monkeypatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            code = train.cli([*TINY, "--out-dir", str(tmp_path / "o"), *argv])
        stderr = capsys.readouterr().err
        assert code == 2, (argv, stderr)
        assert len(stderr.strip().splitlines()) == 1 and words in stderr, (argv, stderr)
    with pytest.raises(SystemExit) as refused:  # no abbreviations: `--fol` passed crossval's check of its own flags
        train.cli([*TINY, "--fol", "0/2"])
    assert refused.value.code == 2 and "unrecognized arguments: --fol 0/2" in capsys.readouterr().err
