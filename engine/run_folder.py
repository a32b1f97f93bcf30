"""The run folder train.py writes (thesis §4.3's training runs): config.json, log.jsonl, last.pt,
best.pt and panels/, chosen, locked and written so that no command loses a user's work. The rules
RunFolder keeps are in docs/runs.md.

    folder = RunFolder.choose(None, "runs/cbis", resume=None, overwrite=False)  # runs/cbis-2, ...
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from readers.atomic import write_json, write_json_lines

from .checkpoints import CheckpointWriter, copy_to_cpu, read_checkpoint, weights_checkpoint
from .cli import UsageError

try:
    import fcntl  # POSIX; elsewhere runs are not locked
except ImportError:  # pragma: no cover
    fcntl = None

CHECKPOINTS = ("last.pt", "best.pt")
RUN_FILES = ("config.json", "log.jsonl", *CHECKPOINTS)


class RunFolder:
    """One run's folder: chosen, locked, and written in an order that survives a kill anywhere."""

    def __init__(self, path: str | os.PathLike, *, save_minutes: float = 5.0):
        self.path = Path(path)
        self.save_minutes, self.writer = save_minutes, CheckpointWriter()
        self._lock_file, self._best, self._last_save = None, None, time.monotonic()

    @classmethod
    def choose(cls, out_dir: str | None, default: str, *, resume: str | None, overwrite: bool,
               save_minutes: float = 5.0) -> "RunFolder":
        """--out-dir, else the --resume checkpoint's folder, else the first free default(-N)."""
        if resume is not None:
            own = Path(resume).parent
            folder = cls(out_dir or own, save_minutes=save_minutes)
            other = folder.path.exists() and not os.path.samefile(folder.path, own)
            if other and folder.holds_run():
                raise UsageError(f"--out-dir {out_dir} holds another run ({folder.describe()}); a "
                                 f"resume continues in its own folder ({own}) or in an empty one")
            return folder
        if out_dir is not None:
            folder = cls(out_dir, save_minutes=save_minutes)
            if folder.holds_run() and not overwrite:
                last = folder.path / "last.pt"
                raise UsageError(f"--out-dir {out_dir} holds a run ({folder.describe()}): continue "
                                 f"it with --resume {last}, write elsewhere with another "
                                 "--out-dir, or replace it with --overwrite")
            return folder
        number = 1
        while (folder := cls(default if number == 1 else f"{default}-{number}",
                             save_minutes=save_minutes)).holds_run():
            number += 1
        return folder

    def holds_run(self) -> bool:
        """A checkpoint or a logged epoch; a config.json alone (died before either) is no run."""
        return any((self.path / name).exists() for name in CHECKPOINTS) or bool(self.read_log())

    def describe(self) -> str:
        records = self.read_log()
        if records:
            return f"log.jsonl up to epoch {records[-1]['epoch']}"
        return ", ".join(name for name in RUN_FILES if (self.path / name).exists())

    def lock(self) -> None:
        """Hold the folder (flock: the kernel drops it however the process ends)."""
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
            raise UsageError(f"--out-dir {self.path} is in use by a running train.py ({holder}); "
                             "wait for it to finish or choose another --out-dir") from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(f"pid {os.getpid()}\n")
        self._lock_file.flush()

    def start(self, *, overwrite: bool, checkpoint: dict | None, resume: str | None,
              records: list[dict], config: dict) -> None:
        """Lock; remove what a killed writer left; clear an old run on --overwrite; on resume keep
        newer checkpoints aside and bring the log back to the weights; write config.json."""
        self.lock()
        stale = [path for path in (*self.path.glob(".*.tmp"), *self.path.glob("panels/.*.tmp"))]
        for path in stale:  # the lock is ours: whoever wrote them is gone
            path.unlink(missing_ok=True)
        if stale:
            print(f"note: removed {len(stale)} temporary file(s) in {self.path} left by a run "
                  "killed while writing")
        if overwrite:
            self.clear()
        if checkpoint:
            self.keep_newer(checkpoint, resume)
            self.write_log(records)
        write_json(self.path / "config.json", config)

    def clear(self) -> None:
        """--overwrite: remove the old run's files (only those a run writes, nothing else)."""
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.path / "panels", ignore_errors=True)

    # --------------------------------------------------------------------------------------- saving
    def check_space(self, peak_bytes: int) -> None:
        """Refuse to start when the disk cannot hold the run's checkpoints at their peak (a new
        last.pt beside the one it replaces, and best.pt), less what the folder's hold already."""
        present = {(stat.st_dev, stat.st_ino): stat.st_size  # a hard link counted once
                   for stat in ((self.path / name).stat() for name in CHECKPOINTS
                                if (self.path / name).exists())}
        checkpoint_bytes = peak_bytes - sum(present.values())
        free = shutil.disk_usage(self.path).free
        if free < checkpoint_bytes:
            raise UsageError(f"--out-dir {self.path}: {free / 2**30:.2f} GB free, this run's "
                             f"checkpoints need about {checkpoint_bytes / 2**30:.2f} GB; free some "
                             "space or write elsewhere")

    def end_epoch(self, records: list[dict], state: Callable[[], dict], *, improved: bool,
                  final: bool) -> None:
        """log.jsonl now; the best weights copied aside; last.pt (and best.pt) when due. A write
        that failed in the background ends the run here, not minutes later at the next one."""
        self.writer.raise_if_failed()
        self.write_log(records)
        due = final or time.monotonic() - self._last_save >= 60 * self.save_minutes
        if not (improved or due):
            return
        checkpoint = state()
        if improved:  # copied now: training goes on changing the weights (unless final)
            self._best = copy_to_cpu(weights_checkpoint(checkpoint), copy=not final)
        if due:
            self.save(checkpoint, final=final)

    def save(self, checkpoint: dict, *, final: bool = False) -> None:
        """Write last.pt, then best.pt if it changed, in the background after the last write;
        final: no training follows (the run ends, or stops), so the state needs no copy."""
        files = [(self.path / "last.pt", copy_to_cpu(checkpoint, copy=not final))]
        if self._best is not None:
            files.append((self.path / "best.pt", self._best))
            self._best = None
        self.writer.write(files)
        self._last_save = time.monotonic()

    def close(self) -> None:
        """Wait for the last write (raising its error, e.g. a full disk)."""
        self.writer.wait()

    # -------------------------------------------------------------------------------------- the log
    def read_log(self) -> list[dict]:
        """The records of log.jsonl (an unreadable last line, from an older version, dropped)."""
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
        write_json_lines(self.path / "log.jsonl", records)  # a NaN score (nothing predicted) as null

    @staticmethod
    def records_at_resume(checkpoint: dict, resume: str) -> list[dict]:
        """The epoch records a resumed run starts from: the checkpoint's, else (older) the log's."""
        records = checkpoint.get("log")
        if records is None:
            source = RunFolder(Path(resume).parent)
            records = [r for r in source.read_log() if r.get("epoch", -1) <= checkpoint["epoch"]]
        return list(records)

    def keep_newer(self, checkpoint: dict, resume: str) -> None:
        """Resuming an older checkpoint: the newer last.pt and best.pt kept under free names
        (last-epoch<N>.pt, last-epoch<N>-2.pt, ...), never replaced, and said so."""
        for name in CHECKPOINTS:
            current = self.path / name
            if not current.exists() or os.path.samefile(current, resume):
                continue
            saved = read_checkpoint(current, needs=("epoch",), flag="--resume", mmap=True)
            newer = saved["epoch"]
            if (newer, saved.get("next_step", 0)) <= (checkpoint["epoch"],
                                                      checkpoint.get("next_step", 0)):
                continue  # not ahead of it: within an epoch (next_step) counts
            stem, number = f"{current.stem}-epoch{newer}", 1
            while (kept := self.path / (f"{stem}.pt" if number == 1 else f"{stem}-{number}.pt")):
                try:
                    os.link(current, kept)  # fails if the name is taken: "create, never replace"
                except FileExistsError:
                    number += 1
                    continue
                except OSError:  # a file system without hard links
                    if kept.exists():
                        number += 1
                        continue
                    os.rename(current, kept)
                break
            current.unlink(missing_ok=True)
            print(f"note: resuming from epoch {checkpoint['epoch']}, older than {current} (epoch "
                  f"{newer}), which is kept as {kept}")
