"""Runs that never lose work (runs.py, train.py, atomic.atomic_write, data.cache_folder): a new run never replaces an
old one, one run per folder at a time, a resume continues the same run with a log that matches its weights, and a full
disk or an unwritable cache ends in one line with the earlier files intact. Tiny synthetic runs, in this process."""
import errno
import fcntl
import json
import shutil

import pytest
import torch

import train
from readers import atomic
from data import DataError, build_dataset

TINY = ["--image-size", "32", "--limit", "6", "--batch-size", "3", "--decoder-channels", "16,16,16,16,16",
        "--panels", "0", "--print-freq", "100", "--workers", "0"]
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def epochs_logged(folder) -> list[int]:
    return [json.loads(line)["epoch"] for line in (folder / "log.jsonl").read_text().splitlines()]


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
    assert train.cli([*TINY, "--epochs", "1", "--out-dir", str(folder)]) == 0
    shutil.copy(folder / "last.pt", folder / "epoch0.pt")  # an older checkpoint, as best.pt can be
    assert train.cli(["--resume", str(folder / "last.pt"), "--epochs", "3"]) == 0
    assert epochs_logged(folder) == [0, 1, 2]
    # Another dataset or another network is another run: refused, in one line
    for flags, words in ((["--dataset", "mias"], "continues a synthetic run"),
                         (["--decoder", "unet"], "--decoder unet (checkpoint: fusion)")):
        assert train.cli(["--resume", str(folder / "last.pt"), "--epochs", "4", *flags]) == 2
        assert words in capsys.readouterr().err
    # A run copied elsewhere resumes where it now is, the original untouched; and a kill between last.pt and its
    # log line (simulated: the line removed) is made good from the checkpoint, which holds the log
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    lines = (copy / "log.jsonl").read_text().splitlines()
    (copy / "log.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    original = snapshot(folder)
    assert train.cli(["--resume", str(copy / "last.pt"), "--epochs", "4"]) == 0
    assert epochs_logged(copy) == [0, 1, 2, 3] and snapshot(folder) == original
    # Resuming an older checkpoint: the log goes back to it, and the newer last.pt is kept aside, not overwritten
    newer = (copy / "last.pt").read_bytes()
    assert train.cli(["--resume", str(copy / "epoch0.pt"), "--epochs", "2"]) == 0
    assert "kept as" in capsys.readouterr().out and (copy / "last-epoch3.pt").read_bytes() == newer
    assert epochs_logged(copy) == [0, 1]
    assert torch.load(copy / "last.pt", weights_only=True)["log"] == [json.loads(line) for line in
                                                                     (copy / "log.jsonl").read_text().splitlines()]


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
    monkeypatch.setenv("UNET_FUSION_CACHE", str(tmp_path / "shared-cache"))
    build_dataset("mias", tmp_path, "train", 64, verbose=False)
    written = list((tmp_path / "shared-cache").rglob("skipped_train.csv"))
    assert written and written[0].stat().st_mode & 0o044 == 0o044 & ~atomic._UMASK  # readable as the umask allows
    assert train.cli([*TINY, "--dataset", "mias", "--data-root", str(tmp_path), "--weights", "none",
                      "--cache-dir", str(blocker), "--out-dir", str(tmp_path / "o")]) == 2
    assert "--cache-dir" in capsys.readouterr().err
