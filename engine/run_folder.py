"""The run folder train.py writes (thesis §4.3's training runs), kept so that no command loses a user's work.

    runs/<name>/config.json   the resolved run (flags, versions, commit, device), written before step 0
                log.jsonl     one JSON line per epoch, each epoch once, in order, matching last.pt
                last.pt       after every epoch (and before step 0); it holds the log too (checkpoints.py)
                best.pt       a hard link to the last.pt that scored best on validation
                panels/       prediction panels of a few validation images, at the end

Rules (RunFolder):
  * A fresh run never writes into a folder that holds a run: without --out-dir it takes the next free runs/<dataset>,
    runs/<dataset>-2, ... and says so; an explicit --out-dir that holds a run is refused in one line naming --resume
    and --overwrite (which replaces the old run on purpose).
  * One run at a time per folder: a lock (flock on <folder>/.lock) that the kernel releases when the process ends,
    however it ends, so a killed run never blocks the next.
  * A resumed run continues in the folder its checkpoint is in (a moved or copied run resumes where it now is). Its
    log is rewritten from the checkpoint, so it holds each epoch once up to the checkpoint's; a newer last.pt, when
    resuming from an older best.pt, is kept as last-epoch<N>.pt rather than overwritten.
  * After an epoch, last.pt is written first, then log.jsonl from the records last.pt holds: a kill between the two
    leaves the log one line short, which the next --resume restores.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .checkpoints import read_checkpoint, save_checkpoint, share_file
from .cli import UsageError
from readers.atomic import atomic_write, write_json

try:
    import fcntl  # POSIX; elsewhere runs are not locked
except ImportError:  # pragma: no cover
    fcntl = None

RUN_FILES = ("config.json", "log.jsonl", "last.pt", "best.pt")


class RunFolder:
    """One run's folder: chosen, locked, and written in an order that survives a kill at any moment."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock_file = None

    @classmethod
    def choose(cls, out_dir: str | None, default: str, *, resume: str | None, overwrite: bool) -> "RunFolder":
        """The folder of this run: the --resume checkpoint's folder unless --out-dir names another; --out-dir; or the
        first free one of default, default-2, default-3, ... (said on stdout by the caller)."""
        if resume is not None:
            return cls(out_dir or Path(resume).parent)
        if out_dir is not None:
            folder = cls(out_dir)
            if folder.holds_run() and not overwrite:
                raise UsageError(f"--out-dir {out_dir} holds a run ({folder.describe()}): continue it with --resume "
                                 f"{folder.path / 'last.pt'}, write elsewhere with another --out-dir, or replace it "
                                 "with --overwrite")
            return folder
        number = 1
        while (folder := cls(default if number == 1 else f"{default}-{number}")).holds_run():
            number += 1
        return folder

    def holds_run(self) -> bool:
        return any((self.path / name).exists() for name in RUN_FILES)

    def describe(self) -> str:
        """What the folder holds, e.g. 'last.pt after epoch 4'."""
        records = self.read_log()
        return f"log.jsonl up to epoch {records[-1]['epoch']}" if records else \
            ", ".join(name for name in RUN_FILES if (self.path / name).exists())

    def lock(self) -> None:
        """Hold the folder for this process; UsageError if another run holds it. The kernel drops the lock when the
        process ends, so a killed run leaves nothing behind that blocks the next."""
        self.path.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            return
        self._lock_file = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            holder = self._lock_file.read().strip() or "another process"
            self._lock_file.close()
            self._lock_file = None
            raise UsageError(f"--out-dir {self.path} is in use by a running train.py ({holder}); wait for it to "
                             "finish or choose another --out-dir") from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(f"pid {os.getpid()}\n")
        self._lock_file.flush()

    def start(self, *, overwrite: bool, checkpoint: dict | None, resume: str | None, records: list[dict],
              config: dict) -> None:
        """Lock the folder, clear an old run on --overwrite, bring the log back to the weights a resumed run starts
        from (each epoch once, up to the checkpoint's), write config.json."""
        self.lock()
        if overwrite:
            self.clear()
        if checkpoint:
            self.keep_newer_last(checkpoint, resume)
            self.write_log(records)
        write_json(self.path / "config.json", config)

    def clear(self) -> None:
        """--overwrite: remove the old run's files (only the files a run writes; nothing else in the folder)."""
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.path / "panels", ignore_errors=True)

    def save(self, checkpoint: dict, *, best: bool) -> None:
        """last.pt, then log.jsonl from the records it holds, then best.pt (a hard link) if this epoch is the best."""
        save_checkpoint(checkpoint, self.path / "last.pt")
        self.write_log(checkpoint["log"])
        if best:
            share_file(self.path / "last.pt", self.path / "best.pt")

    # ----------------------------------------------------------------------------------------------------- the log
    def read_log(self) -> list[dict]:
        """The records of log.jsonl (an unreadable last line, from an older version killed mid-write, is dropped)."""
        records = []
        try:
            lines = (self.path / "log.jsonl").read_text().splitlines()
        except OSError:
            return records
        for line in lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return records

    def write_log(self, records: list[dict]) -> None:
        atomic_write(self.path / "log.jsonl", "".join(json.dumps(record) + "\n" for record in records).encode())

    @staticmethod
    def records_at_resume(checkpoint: dict, resume: str) -> list[dict]:
        """The epoch records a resumed run starts from: those the checkpoint holds (older checkpoints hold none: then
        the log's lines up to its epoch), rewritten to log.jsonl so it matches the weights."""
        records = checkpoint.get("log")
        if records is None:
            source = RunFolder(Path(resume).parent)
            records = [r for r in source.read_log() if r.get("epoch", -1) <= checkpoint["epoch"]]
        return list(records)

    def keep_newer_last(self, checkpoint: dict, resume: str) -> None:
        """When resuming from a checkpoint older than this folder's last.pt (an earlier best.pt, say), move that
        last.pt aside as last-epoch<N>.pt instead of overwriting it, and say so."""
        last = self.path / "last.pt"
        if not last.exists() or os.path.samefile(last, resume):  # best.pt is a hard link to last.pt when newest
            return
        newer = read_checkpoint(last, needs=("epoch",), flag="--resume", mmap=True)["epoch"]
        if newer <= checkpoint["epoch"]:
            return
        kept = self.path / f"last-epoch{newer}.pt"
        os.replace(last, kept)
        print(f"note: resuming from epoch {checkpoint['epoch']}, older than {last} (epoch {newer}), which is kept as "
              f"{kept}")
