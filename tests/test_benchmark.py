"""benchmark.py and the timing helpers of engine/measure.py: the arithmetic of each row on a fake clock, the model table, the
refused flags, and bench/gpu.sh's CPU dry run (speed itself is measured by the scripts, never asserted here)."""
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

import benchmark
from engine import measure
from engine.cli import UsageError
from engine.measure import count_flops
from helpers import write_toy_mias

ROOT = Path(__file__).resolve().parents[1]


def test_median_seconds_runs_warmup_and_repeats_and_takes_the_median(monkeypatch):
    clock = iter([0.0, 3.0, 10.0, 11.0, 20.0, 22.0])  # three timed runs of 3, 1 and 2 seconds
    monkeypatch.setattr(measure.time, "perf_counter", lambda: next(clock))
    calls = []
    seconds = measure.median_seconds(lambda: calls.append(1), device=torch.device("cpu"), warmup=2, repeats=3)
    assert len(calls) == 5 and seconds == 2.0
    with pytest.raises(ValueError, match="repeats"):
        measure.median_seconds(lambda: None, device=torch.device("cpu"), warmup=0, repeats=0)


def test_speed_row_derives_its_rates_from_the_timings_and_trains_the_model(monkeypatch):
    kwargs = dict(encoder="resnet34", decoder="unet", num_classes=1, decoder_channels=(16, 16, 8, 8, 8))
    timings, built = iter([0.5, 2.0, 4.0]), []  # batch-1 latency, batch-2 forward, batch-2 training step

    def fake_median(fn, **_):
        fn()  # each measured function runs once, for real
        return next(timings)

    def spy(**options):
        built.append(benchmark_build(**options))
        built.append({k: v.clone() for k, v in built[0].state_dict().items()})
        return built[0]

    benchmark_build = benchmark.build_model
    monkeypatch.setattr(benchmark, "median_seconds", fake_median)
    monkeypatch.setattr(benchmark, "build_model", spy)
    row = benchmark.speed_row(kwargs, 32, device=torch.device("cpu"), precision="none", batch_size=2,
                              channels_last=False, compile_model=False, warmup=0, repeats=1)
    flops = count_flops(built[0], (2, 3, 32, 32))
    assert (row["latency_s"], row["forward_images_per_s"], row["train_images_per_s"]) == (0.5, 1.0, 0.5)
    assert row["train_tflops"] == pytest.approx(3 * flops / 4.0 / 1e12)  # backward ~ 2x forward
    assert row["precision"] == "fp32" and row["graph_latency_s"] is None and row["peak_train_memory_gib"] is None
    before, after = built[1], built[0].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())  # one step


def test_main_writes_the_model_table_as_json_and_refuses_flags_that_measure_nothing(tmp_path, capsys):
    out = tmp_path / "table.json"
    benchmark.main(benchmark.get_args_parser().parse_args(["--models", "Table 2 (B)", "--json", str(out)]))
    table = json.loads(out.read_text())
    assert [row["model"] for row in table["models"]] == ["Table 2 (B) SMP Unet, ResNet-34"]
    assert table["models"][0]["params"] == 24_436_369 and table["speed"] == []
    assert "24.44M" in capsys.readouterr().out
    for argv, words in ((["--models", "Table 9"], "no row starts with"), (["--repeats", "0"], "--repeats 0"),
                        (["--batch-size", "0"], "--batch-size 0"), (["--json", str(tmp_path)], "is a folder")):
        with pytest.raises(UsageError, match=words):
            benchmark.main(benchmark.get_args_parser().parse_args(argv))


@pytest.mark.slow
def test_gpu_script_runs_start_to_finish_in_its_cpu_dry_run(tmp_path):
    """bench/gpu.sh is run only where a GPU is at hand, and seldom: its dry run takes every step on the CPU at toy
    sizes, so a renamed flag or a broken step shows up here first."""
    write_toy_mias(tmp_path / "mias")
    results = tmp_path / "results"
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), str(results), str(tmp_path / "mias")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, DRY_RUN="1", OMP_NUM_THREADS="1", CV_RUNS=str(tmp_path / "cv")))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "!! " not in done.stdout  # no step failed
    steps = (results / "steps.txt").read_text().splitlines()  # each step's exit code, for a caller's record
    assert [line.split(" exit ")[0] for line in steps[:-1]] == [
        "crossval_256", "pipeline", "profile_eager", "speed", "peer", "crossval_1024"]
    assert all(" exit 0 after " in line for line in steps[:-1]) and steps[-1] == "exit 0"
    # whole images; patches: one decoder each (summaries of several: test_crossval.py)
    for protocol, decoders in (("256", {"fusion"}), ("1024", {"unet"})):
        summary = json.loads((results / f"crossval-mias-{protocol}" / "summary.json").read_text())
        assert set(summary["table"]) == decoders and summary["folds"] == 2
        assert all(run["images"] for runs in summary["runs"].values() for run in runs)  # every fold scored
        assert (results / f"crossval-mias-{protocol}" / "summary.png").stat().st_size > 0
    assert "--patch-size 32" in (results / "crossval-mias-1024" / "crossval.txt").read_text()
    assert [row["backend"] for row in json.loads((results / "pipeline.json").read_text())["rows"]][0] == "eager"
    speed = json.loads((results / "speed.json").read_text())
    assert [(row["model"], row["precision"]) for row in speed["speed"]] == [("Table 2 (B) SMP Unet, ResNet-34", "fp32")]
    (peer,) = json.loads((results / "peer.json").read_text())["rows"]  # SMP and timm are test requirements
    assert peer["pair"] == "Unet, ResNet-34" and peer["max_abs_output_difference"] < 1e-4  # the same network
    assert all(peer[f"{who}_{what}_s"] > 0 for who in ("ours", "theirs") for what in ("forward", "train_step"))


def test_the_peer_comparison_pairs_our_bit_encoders_maps_with_timms(monkeypatch):
    """bench/peer_smp.py's BiT row runs only on the GPU (the dry run compares ResNet-34): ours returns the input and
    five maps, timm's features_only the five; paired from the end they agree, and a map of another shape fails."""
    pytest.importorskip("timm")
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import peer_smp
    torch.manual_seed(0)
    ours, theirs, _ = peer_smp.build_pair("BiT-R50x1 encoder")
    # float32 rounding of maps up to ~120 (random weights): 1e-4 of their scale, as the model tests allow
    assert peer_smp.output_difference(ours, theirs, 64, torch.device("cpu")) < 0.02
    theirs.forward = lambda x: [torch.zeros(1, 3, 5, 5)] * 5  # maps of other shapes: no pair is quietly left out
    with pytest.raises(RuntimeError):
        peer_smp.output_difference(ours, theirs, 64, torch.device("cpu"))
