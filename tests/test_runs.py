"""Runs that never lose work (runs.py, train.py, utils.atomic_write, data.cache_folder): a new run never replaces an
old one, one run per folder at a time, a resume continues the same run with a log that matches its weights, and a full
disk or an unwritable cache ends in one line with the earlier files intact. Tiny synthetic runs, in this process."""
import errno
import fcntl
import json
import shutil

import pytest
import torch

import train
import utils
from data import DataError, build_dataset

TINY = ["--image-size", "32", "--limit", "6", "--batch-size", "3", "--decoder-channels", "16,16,16,16,16",
        "--panels", "0", "--print-freq", "100", "--workers", "0"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def epochs_logged(folder) -> list[int]:
    return [json.loads(line)["epoch"] for line in (folder / "log.jsonl").read_text().splitlines()]


def snapshot(folder) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file() and path.name != ".lock"}


def test_a_new_run_never_replaces_an_old_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert train.cli([*TINY, "--epochs", "1"]) == 0  # no --out-dir: runs/synthetic
    first = snapshot(tmp_path / "runs" / "synthetic")
    assert train.cli([*TINY, "--epochs", "1"]) == 0  # the next free folder, said on stdout
    assert "writing runs/synthetic-2" in capsys.readouterr().out
    assert snapshot(tmp_path / "runs" / "synthetic") == first
    # An explicit --out-dir holding a run: refused in one line naming --resume and --overwrite, nothing touched
    assert train.cli([*TINY, "--epochs", "1", "--out-dir", "runs/synthetic"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--resume runs/synthetic/last.pt" in error and "--overwrite" in error
    assert snapshot(tmp_path / "runs" / "synthetic") == first
    assert train.cli([*TINY, "--epochs", "1", "--out-dir", "runs/synthetic", "--overwrite"]) == 0  # on purpose


def test_one_run_per_folder_and_a_dead_runs_lock_blocks_nothing(tmp_path, capsys):
    folder = tmp_path / "run"
    assert train.cli([*TINY, "--epochs", "1", "--out-dir", str(folder)]) == 0
    before = snapshot(folder)
    with open(folder / ".lock", "a+") as held:  # another process's run holds the folder
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.truncate(0)
        held.write("pid 4242\n")
        held.flush()
        assert train.cli(["--resume", str(folder / "last.pt"), "--epochs", "2"]) == 2
        error = capsys.readouterr().err
        assert "in use by a running train.py (pid 4242)" in error and error.count("\n") == 1
    assert snapshot(folder) == before  # the second run wrote nothing
    # The lock is the kernel's: once its holder is gone (closed, or killed), the file left behind blocks nothing
    assert train.cli(["--resume", str(folder / "last.pt"), "--epochs", "2"]) == 0
    assert epochs_logged(folder) == [0, 1]


def test_resume_is_the_same_run_with_a_log_that_matches_its_weights(tmp_path, capsys):
    folder = tmp_path / "run"
    assert train.cli([*TINY, "--epochs", "1", "--out-dir", str(folder)]) == 0
    shutil.copy(folder / "last.pt", folder / "epoch0.pt")  # an older checkpoint, as best.pt can be
    assert train.cli(["--resume", str(folder / "last.pt"), "--epochs", "3"]) == 0
    assert epochs_logged(folder) == [0, 1, 2]
    # Another dataset or another network is another run: refused, in one line
    for flags, words in ((["--dataset", "mias"], "continues a synthetic run"),
                         (["--decoder", "unet"], "--decoder unet (checkpoint: fusion)")):
        assert train.cli(["--resume", str(folder / "last.pt"), "--epochs", "4", *flags]) == 2
        assert words in capsys.readouterr().err
    # A kill between last.pt and its log line: the next resume rebuilds the log from the checkpoint
    lines = (folder / "log.jsonl").read_text().splitlines()
    (folder / "log.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    assert train.cli(["--resume", str(folder / "last.pt"), "--epochs", "4"]) == 0
    assert epochs_logged(folder) == [0, 1, 2, 3]
    # Resuming an older checkpoint: the log goes back to it, and the newer last.pt is kept aside, not overwritten
    newer = (folder / "last.pt").read_bytes()
    assert train.cli(["--resume", str(folder / "epoch0.pt"), "--epochs", "2"]) == 0
    assert "kept as" in capsys.readouterr().out and (folder / "last-epoch3.pt").read_bytes() == newer
    assert epochs_logged(folder) == [0, 1]
    assert torch.load(folder / "last.pt", weights_only=True)["log"] == [json.loads(line) for line in
                                                                       (folder / "log.jsonl").read_text().splitlines()]
    # A run copied elsewhere resumes where it now is; the original stays as it was
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    original = snapshot(folder)
    assert train.cli(["--resume", str(copy / "last.pt"), "--epochs", "3"]) == 0
    assert epochs_logged(copy) == [0, 1, 2] and snapshot(folder) == original


def test_a_full_disk_ends_in_one_line_and_keeps_the_previous_last_pt(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "run"
    assert train.cli([*TINY, "--epochs", "1", "--out-dir", str(folder)]) == 0
    before = snapshot(folder)
    real_save = torch.save

    def save_until_the_disk_is_full(obj, file, *args, **kwargs):
        file.write(b"\0" * 4096)  # part of the file, then the device is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    assert train.cli(["--resume", str(folder / "last.pt"), "--epochs", "2"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no space left on " in error and "needed about" in error
    assert "inline_container" not in error
    monkeypatch.setattr(torch, "save", real_save)
    assert snapshot(folder)["last.pt"] == before["last.pt"]  # the previous last.pt, whole
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]  # no partial file left


def test_an_unwritable_cache_is_named_in_one_line_and_the_cache_is_group_readable(tmp_path, monkeypatch, capsys):
    (tmp_path / "Info.txt").write_text("")  # an empty mini-MIAS: only the cache matters here
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache should go")
    with pytest.raises(DataError, match=r"cache folder .*not-a-folder/mias cannot be written .*--cache-dir"):
        build_dataset("mias", tmp_path, "train", 64, cache_dir=blocker / "mias")
    monkeypatch.setenv("UNET_FUSION_CACHE", str(blocker))  # a read-only home's fix, here pointing at a file
    with pytest.raises(DataError, match="UNET_FUSION_CACHE"):
        build_dataset("mias", tmp_path, "train", 64)
    monkeypatch.setenv("UNET_FUSION_CACHE", str(tmp_path / "shared-cache"))
    build_dataset("mias", tmp_path, "train", 64, verbose=False)
    written = list((tmp_path / "shared-cache").rglob("skipped_train.csv"))
    assert written and written[0].stat().st_mode & 0o044 == 0o044 & ~utils._UMASK  # readable as the umask allows
    assert train.cli([*TINY, "--dataset", "mias", "--data-root", str(tmp_path), "--weights", "none",
                      "--cache-dir", str(blocker), "--out-dir", str(tmp_path / "o")]) == 2
    assert "--cache-dir" in capsys.readouterr().err
