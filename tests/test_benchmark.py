"""benchmark.py: the timing helpers on a tiny model, and the table it writes (speed is measured by the script itself,
never asserted here)."""
import json
import os
import subprocess
from pathlib import Path

import torch

import benchmark


def test_median_seconds_runs_warmup_and_repeats_and_takes_the_median():
    calls = []
    seconds = benchmark.median_seconds(lambda: calls.append(1), device=torch.device("cpu"), warmup=2, repeats=5)
    assert len(calls) == 7 and 0 <= seconds < 1


def test_speed_row_times_a_tiny_model_and_trains_it():
    kwargs = dict(encoder="resnet34", decoder="unet", num_classes=1, decoder_channels=(16, 16, 8, 8, 8))
    torch.manual_seed(0)
    row = benchmark.speed_row(kwargs, 32, device=torch.device("cpu"), precision="none", batch_size=2,
                              channels_last=False, compile_model=False, warmup=0, repeats=1)
    assert row["latency_s"] > 0 and row["forward_images_per_s"] > 0 and row["train_images_per_s"] > 0
    assert row["train_tflops"] > 0 and row["peak_train_memory_gib"] is None  # peak memory: CUDA only


def test_main_writes_the_model_table_as_json(tmp_path, capsys):
    out = tmp_path / "table.json"
    benchmark.main(benchmark.get_args_parser().parse_args(["--models", "Table 2 (B)", "--json", str(out)]))
    table = json.loads(out.read_text())
    assert [row["model"] for row in table["models"]] == ["Table 2 (B) SMP Unet, ResNet-34"]
    assert table["models"][0]["params"] == 24_436_369 and table["speed"] == []
    assert "24.44M" in capsys.readouterr().out


def test_gpu_script_runs_start_to_finish_in_its_cpu_dry_run(tmp_path):
    """bench/gpu.sh is run only where a GPU is at hand, and seldom: its dry run takes every step on the CPU at toy
    sizes, so a renamed flag or a broken step shows up here first."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(["bash", str(root / "bench" / "gpu.sh"), str(tmp_path)], cwd=root, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, DRY_RUN="1", OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "failed" not in done.stdout
    speed = json.loads((tmp_path / "speed.json").read_text())
    assert [(row["model"], row["precision"]) for row in speed["speed"]] == [("Table 2 (B) SMP Unet, ResNet-34", "fp32")]
    assert json.loads((tmp_path / "peer_fp32.json").read_text())  # SMP is a test requirement
    assert torch.load(tmp_path / "train_smoke" / "last.pt", weights_only=True)["epoch"] == 0
