"""Runs that never lose work (runs.py, train.py, atomic.atomic_write, data.cache_folder): a new run never replaces an
old one, one run per folder at a time, a resume continues the same run with a log that matches its weights, and a full
disk or an unwritable cache ends in one line with the earlier files intact. Tiny synthetic runs, in this process.
How a run stops (signals, a hang-up, a kill -9): test_stops.py."""
import errno
import fcntl
import shutil

import numpy as np
import pytest
import torch

import train
from data import DataError, build_dataset, cache_folder
from engine import checkpoints, run_folder
from engine.checkpoints import CheckpointError, CheckpointWriter, read_checkpoint, save_checkpoint
from engine.cli import UsageError
from engine.setup import check_same_images
from helpers import TINY, TINY_RESUMED, as_logged, epochs_logged, read_log
from model import build_model
from readers import atomic

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def snapshot(folder) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file() and path.name != ".lock"}


@pytest.mark.slow
def test_a_new_run_never_replaces_an_old_one_and_one_run_holds_a_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    first = tmp_path / "runs" / "synthetic"
    assert train.cli([*TINY, "--epochs", "1"]) == 0  # no --out-dir: runs/synthetic
    before = snapshot(first)
    assert train.cli([*TINY, "--epochs", "1"]) == 0  # the next free folder, said on stdout
    assert "writing runs/synthetic-2" in capsys.readouterr().out and snapshot(first) == before
    # An explicit --out-dir holding a run: refused in one line naming --resume and --overwrite, nothing touched
    assert train.cli([*TINY, "--epochs", "1", "--out-dir", "runs/synthetic"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--resume runs/synthetic/last.pt" in error and "--overwrite" in error
    # While another process's run holds the folder, a second run into it is refused and writes nothing
    with open(first / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.truncate(0)
        held.write("pid 4242\n")
        held.flush()
        assert train.cli(["--resume", str(first / "last.pt"), "--epochs", "2"]) == 2
        error = capsys.readouterr().err
        assert "in use by a running train.py (pid 4242)" in error and error.count("\n") == 1
    assert snapshot(first) == before
    # The lock is the kernel's: its holder gone (closed, or killed), the file left behind blocks nothing; and a run
    # replaces another only when asked to
    assert train.cli([*TINY, "--epochs", "1", "--out-dir", "runs/synthetic", "--overwrite"]) == 0
    assert epochs_logged(first) == [0] and snapshot(first) != before


@pytest.mark.slow
def test_resume_is_the_same_run_with_a_log_that_matches_its_weights(tmp_path, capsys):
    folder = tmp_path / "run"
    assert train.cli([*TINY, "--epochs", "1", "--val-every", "3", "--out-dir", str(folder)]) == 0
    shutil.copy(folder / "last.pt", folder / "epoch0.pt")  # an older checkpoint, as best.pt can be
    assert train.cli(["--resume", str(folder / "last.pt"), "--epochs", "3", *TINY_RESUMED]) == 0
    assert epochs_logged(folder) == [0, 1, 2]
    # its settings too: epoch 1 is not validated (--val-every 3), the last one is
    assert [("val_dice_mean_per_image" in r) for r in read_log(folder)] == [True, False, True]
    # Another dataset or another network is another run: refused, in one line
    # and so are other images: fewer, or as many with other names (a file swapped, a split drawn another way)
    swapped = torch.load(folder / "last.pt", weights_only=True)
    swapped["images"]["val"]["ids_sha1"] = "0" * 40
    torch.save(swapped, tmp_path / "swapped.pt")
    before = snapshot(folder)
    for checkpoint, flags, words in (
            (folder / "last.pt", ["--dataset", "mias"], "continues a synthetic run"),
            (folder / "last.pt", ["--decoder", "unet"], "--decoder unet (checkpoint: fusion)"),
            (folder / "last.pt", ["--limit", "5"], "trained/validated on 6/6 images, this call finds 5/5"),
            (tmp_path / "swapped.pt", ["--out-dir", str(folder)], "finds other ones (or in another order) 6/6")):
        assert train.cli(["--resume", str(checkpoint), "--epochs", "4", *TINY_RESUMED, *flags]) == 2
        assert words in capsys.readouterr().err
    assert snapshot(folder) == before
    # A run copied elsewhere resumes where it now is, the original untouched; and a kill between last.pt and its
    # log line (simulated: the line removed) is made good from the checkpoint, which holds the log
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    lines = (copy / "log.jsonl").read_text().splitlines()
    (copy / "log.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    original = snapshot(folder)
    assert train.cli(["--resume", str(copy / "last.pt"), "--epochs", "4", *TINY_RESUMED]) == 0
    assert epochs_logged(copy) == [0, 1, 2, 3] and snapshot(folder) == original
    # Resuming an older checkpoint: the log goes back to it, and the newer last.pt is kept aside, not overwritten
    newer = (copy / "last.pt").read_bytes()
    assert train.cli(["--resume", str(copy / "epoch0.pt"), "--epochs", "2", *TINY_RESUMED]) == 0
    assert "kept as" in capsys.readouterr().out and (copy / "last-epoch3.pt").read_bytes() == newer
    assert epochs_logged(copy) == [0, 1]
    assert as_logged(torch.load(copy / "last.pt", weights_only=True)["log"]) == read_log(copy)


def test_a_resume_is_refused_where_its_mammograms_would_be_read_otherwise():
    """The same image ids read by another version of the mammogram reading (a VOI LUT now applied, say) are other
    pixels: refused, naming both versions; a checkpoint from before the images were recorded is not checked."""
    now = {"train": {"images": 6, "ids_sha1": "a"}, "val": {"images": 2, "ids_sha1": "b"}, "reading": 3}
    check_same_images({"images": dict(now)}, now, "last.pt")
    check_same_images({}, now, "last.pt")
    with pytest.raises(UsageError, match="read and prepared by version 2 of the mammogram reading, this one is "
                                         "version 3"):
        check_same_images({"images": dict(now, reading=2)}, now, "last.pt")


def test_a_checkpoint_saved_within_an_epoch_is_newer_than_one_saved_at_its_start(tmp_path, capsys):
    torch.save({"epoch": 0, "next_step": 1}, tmp_path / "last.pt")  # stopped after the first step of epoch 1
    torch.save({"epoch": 0, "next_step": 0}, tmp_path / "epoch0.pt")  # a copy taken at the end of epoch 0
    run_folder.RunFolder(tmp_path).keep_newer({"epoch": 0, "next_step": 0}, str(tmp_path / "epoch0.pt"))
    assert "kept as" in capsys.readouterr().out and not (tmp_path / "last.pt").exists()
    assert torch.load(tmp_path / "last-epoch0.pt", weights_only=True)["next_step"] == 1


def test_the_log_is_strict_json_a_nan_score_null(tmp_path):
    """Precision is NaN when nothing is predicted; jq and JavaScript refuse Python's bare NaN, so the log says null."""
    folder = run_folder.RunFolder(tmp_path)
    folder.write_log([{"epoch": 0, "val_precision": float("nan"), "val_dice": np.float32(0.5), "lr": float("inf")}])
    assert read_log(tmp_path) == [{"epoch": 0, "val_precision": None, "val_dice": 0.5, "lr": None}]


@pytest.mark.slow
def test_a_full_disk_ends_in_one_line_and_keeps_the_previous_last_pt(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "run"
    assert train.cli([*TINY, "--epochs", "1", "--out-dir", str(folder)]) == 0
    before = snapshot(folder)

    def save_until_the_disk_is_full(obj, file, *args, **kwargs):
        file.write(b"\0" * 4096)  # part of the file, then the device is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    assert train.cli(["--resume", str(folder / "last.pt"), "--epochs", "2"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no space left on " in error and "needed about" in error
    assert "inline_container" not in error
    monkeypatch.undo()
    assert snapshot(folder)["last.pt"] == before["last.pt"]  # the previous last.pt, whole
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]  # no partial file left


def test_a_write_that_failed_in_the_background_ends_the_run_at_the_next_epoch(tmp_path, monkeypatch):
    """Not at the next write, --save-every minutes later: the run does not train on without a checkpoint."""
    folder = run_folder.RunFolder(tmp_path, save_minutes=0)  # last.pt after every epoch

    def full_disk(obj, file, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    state = lambda: {"epoch": 0, "model": {"weight": torch.zeros(3)}}
    folder.end_epoch([{"epoch": 0}], state, improved=False, final=False)  # its write fails in the background
    folder.writer._thread.join()
    folder.save_minutes = 60  # the next write an hour away
    with pytest.raises(atomic.DiskFullError, match="no space left on"):
        folder.end_epoch([{"epoch": 0}, {"epoch": 1}], state, improved=False, final=False)
    assert epochs_logged(tmp_path) == [0] and not (tmp_path / "last.pt").exists()


def test_atomic_write_names_a_full_disk_and_leaves_nothing_behind(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    target.write_bytes(b"the previous file")

    def replace_on_a_full_disk(source, destination):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", replace_on_a_full_disk)
    with pytest.raises(atomic.DiskFullError, match=r"no space left on .* writing .*last.pt, needed about 1.0 MB"):
        atomic.atomic_write(target, b"x" * 2 ** 20)
    assert target.read_bytes() == b"the previous file" and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_an_unwritable_cache_is_named_in_one_line_and_the_cache_is_group_readable(tmp_path, monkeypatch, capsys):
    (tmp_path / "Info.txt").write_text("")  # an empty mini-MIAS: only the cache matters here
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache should go")
    with pytest.raises(DataError, match=r"cache folder .*not-a-folder/mias cannot be written .*--cache-dir"):
        build_dataset("mias", tmp_path, "train", 64, cache_dir=blocker / "mias")
    monkeypatch.setenv("UNET_FUSION_CACHE", str(blocker))  # a read-only home's fix, here pointing at a file
    with pytest.raises(DataError, match="UNET_FUSION_CACHE"):
        build_dataset("mias", tmp_path, "train", 64)
    with pytest.raises(DataError) as error:  # predict.py's ONNX cache: a command without --cache-dir
        cache_folder("onnx", tmp_path, blocker / "onnx", flag=None)
    assert "--cache-dir" not in str(error.value) and "UNET_FUSION_CACHE" in str(error.value)
    monkeypatch.setenv("UNET_FUSION_CACHE", str(tmp_path / "shared-cache"))
    build_dataset("mias", tmp_path, "train", 64, verbose=False)
    written = list((tmp_path / "shared-cache").rglob("skipped_mias-*_train.csv"))
    assert written and written[0].stat().st_mode & 0o044 == 0o044 & ~atomic._UMASK  # readable as the umask allows
    assert train.cli([*TINY, "--dataset", "mias", "--data-root", str(tmp_path), "--weights", "none",
                      "--cache-dir", str(blocker), "--out-dir", str(tmp_path / "o")]) == 2
    assert "--cache-dir" in capsys.readouterr().err


@pytest.mark.slow
def test_a_resume_never_replaces_another_run(tmp_path, capsys):
    run, other = tmp_path / "run", tmp_path / "other"
    assert train.cli([*TINY, "--epochs", "1", "--out-dir", str(run)]) == 0
    assert train.cli([*TINY, "--epochs", "1", "--out-dir", str(other)]) == 0
    before, original = snapshot(other), snapshot(run)
    # Into another run's folder: refused in one line, that run untouched
    assert train.cli(["--resume", str(run / "last.pt"), "--epochs", "2", "--out-dir", str(other)]) == 2
    assert "holds another run" in capsys.readouterr().err and snapshot(other) == before
    # Into an empty folder: a copy of the run goes on there, the original untouched
    assert train.cli(["--resume", str(run / "last.pt"), "--epochs", "2", "--out-dir",
                      str(tmp_path / "empty"), *TINY_RESUMED]) == 0
    assert epochs_logged(tmp_path / "empty") == [0, 1] and snapshot(run) == original
    # Its best.pt is named only if an epoch there beat the resumed run's best and wrote one
    named = f"{tmp_path / 'empty' / 'best.pt'} (best)" in capsys.readouterr().out
    assert named == (tmp_path / "empty" / "best.pt").exists()


def test_a_kept_checkpoint_is_never_replaced(tmp_path, capsys):
    """Two branches resumed from one older checkpoint reach the same epoch: each newer last.pt (and
    best.pt) is kept under a free name, none replaced."""
    folder = run_folder.RunFolder(tmp_path)
    older = {"epoch": 0}
    kept = []
    for branch in range(2):
        for name in ("last.pt", "best.pt"):
            torch.save({"epoch": 3, "branch": branch}, tmp_path / name)
        torch.save(older, tmp_path / "epoch0.pt")
        folder.keep_newer(older, str(tmp_path / "epoch0.pt"))
        kept.append(sorted(p.name for p in tmp_path.glob("*-epoch3*.pt")))
    assert kept[-1] == ["best-epoch3-2.pt", "best-epoch3.pt", "last-epoch3-2.pt", "last-epoch3.pt"]
    assert [torch.load(tmp_path / name)["branch"] for name in ("last-epoch3.pt", "last-epoch3-2.pt")] \
        == [0, 1]
    assert not (tmp_path / "last.pt").exists() and "kept as" in capsys.readouterr().out


def test_a_folder_without_a_checkpoint_is_no_run_and_stale_temporary_files_go(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").write_text("{}")  # a run that died at its first save (a full disk, say)
    (folder / ".last.pt.x1y2.tmp").write_bytes(b"half a checkpoint")  # a writer killed mid-write
    assert train.cli([*TINY, "--epochs", "1", "--out-dir", str(folder), "--save-every", "1e-9"]) == 0
    assert "removed 1 temporary file" in capsys.readouterr().out
    assert not list(folder.glob(".*.tmp")) and epochs_logged(folder) == [0]


def test_a_disk_too_small_for_a_checkpoint_is_refused_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_folder.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1, 1, 2**20))
    assert train.cli([*TINY, "--epochs", "1", "--out-dir", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    # at the second write: the new last.pt (weights + 3 optimizer buffers) beside the first, and best.pt
    assert error.count("\n") == 1 and "0.00 GB free, this run's checkpoints need about 0.73 GB" in error


def test_a_damaged_or_foreign_checkpoint_is_named_in_one_line(tmp_path):
    model = build_model("resnet34", "unet", decoder_channels=(16, 16, 16, 16, 16))
    path = tmp_path / "best.pt"
    save_checkpoint({"model": model.state_dict(), "model_config": model.config}, path)
    assert read_checkpoint(path)["checksum"].startswith("crc32:")
    data = bytearray(path.read_bytes())
    weight = model.state_dict()["head.weight"].numpy().tobytes()
    at = data.find(weight)  # the head's weights, stored as they are in memory
    data[at + 5] ^= 0x10  # one bit flipped inside the tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"best.pt: its weights do not match the checksum"):
        read_checkpoint(path)
    path.write_bytes(b"\x80\x02not a checkpoint at all")
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(path)
    assert "cannot open it as a checkpoint" in str(error.value) and "weights_only" not in str(error.value)


def test_a_write_abandoned_mid_way_leaves_the_previous_file_and_nothing_else(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"the previous last.pt")
    writer = CheckpointWriter()
    writer._cancel.set()  # as a second Ctrl-C does, here before torch.save's first chunk
    writer.write([(path, {"model": {"w": torch.zeros(1000)}})])
    writer.cancel()
    assert path.read_bytes() == b"the previous last.pt" and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("flags, words", [(["--limit", "0"], "--limit 0: must be >= 1"),
                                          (["--save-every", "0"], "--save-every 0.0: minutes, > 0"),
                                          (["--val-every", "0"], "--val-every 0: must be >= 1"),
                                          (["--batch-size", "1"], "--batch-size 1 at 32x32: the encoder's last")])
def test_bad_run_flags_are_named(tmp_path, capsys, flags, words):
    assert train.cli([*TINY, "--out-dir", str(tmp_path / "o"), *flags]) == 2
    assert words in capsys.readouterr().err


def test_an_out_dir_where_a_file_stands_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "notes").write_text("a file")
    for out_dir in (tmp_path / "notes", tmp_path / "notes" / "run"):
        assert train.cli([*TINY, "--out-dir", str(out_dir)]) == 2
        assert capsys.readouterr().err == (f"train.py: error: --out-dir {out_dir}: {tmp_path / 'notes'} is a file, "
                                           "not a folder; choose another --out-dir\n")


def test_last_pt_is_written_when_due_and_at_the_end_not_every_epoch(tmp_path, monkeypatch):
    written = []
    real_save = checkpoints.save_checkpoint
    monkeypatch.setattr(checkpoints, "save_checkpoint",
                        lambda checkpoint, path, cancel=None: written.append(path.name) or
                        real_save(checkpoint, path, cancel))
    # every 5 minutes by default; validated at epoch 1 and at the last, 2
    assert train.cli([*TINY, "--epochs", "3", "--out-dir", str(tmp_path / "a"), "--val-every", "2"]) == 0
    assert written.count("last.pt") == 1 and written.count("best.pt") == 1
    log = read_log(tmp_path / "a")
    assert ["val_images" in record for record in log] == [False, True, True]
    written.clear()
    assert train.cli([*TINY, "--epochs", "3", "--out-dir", str(tmp_path / "b"), "--save-every", "1e-9"]) == 0
    assert written.count("last.pt") == 3 and 1 <= written.count("best.pt") <= 3
