"""Atomic writes: a reader, a killed run or a second writer never meets half a file (cache entries,
checkpoints, logs, JSON); a full disk ends in one line naming the file system and the size needed.

    atomic_write("runs/x/last.pt", b"...")  # temporary file, fsync, os.replace
    write_json("runs/x/final.json", {...}); write_json_lines("runs/x/log.jsonl", records)
"""
from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

_UMASK = os.umask(0o022)  # read the process' umask (the only way is to set it), then put it back
os.umask(_UMASK)


class DiskFullError(OSError):
    """No space left while writing a file; the message names the file system and the size needed."""


def atomic_write(path: str | os.PathLike, content: bytes | Callable[[BinaryIO], None], *,
                 size_hint: int | None = None) -> None:
    """Write `content` (bytes, or a function writing to a binary file) so that readers see the old
    or the whole new file; on failure `path` is left as it was (DiskFullError for a full disk)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique temporary name (two writers never share one), cut to fit wherever `path`'s does
    # (255 bytes on most file systems).
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:200]}.",
                                             suffix=".tmp")
    file = None
    try:
        with os.fdopen(descriptor, "wb") as raw:
            file = _RecordingFile(raw)
            if isinstance(content, (bytes, bytearray, memoryview)):
                file.write(content)
            else:
                content(file)
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes 0600; a team's shared cache is read
        os.replace(temporary, path)
    except BaseException as error:
        written = file.written if file else 0
        Path(temporary).unlink(missing_ok=True)
        failed = file.error if file and file.error else error
        if isinstance(failed, OSError) and failed.errno in (errno.ENOSPC, errno.EDQUOT):
            needed = max(size_hint or 0, written)  # the hint, else what was written so far
            free = shutil.disk_usage(path.parent).free
            raise DiskFullError(errno.ENOSPC, f"no space left on {_mount_point(path.parent)} "
                                f"writing {path}, needed about {_size(needed)} ({_size(free)} "
                                "free); free some space or write elsewhere") from None
        raise


class _RecordingFile:
    """A binary file that remembers why a write failed (torch.save reports a full disk only as
    "[enforce fail at inline_container.cc] unexpected pos")."""

    def __init__(self, file: BinaryIO):
        self.file, self.error, self.written = file, None, 0

    def write(self, data) -> int:
        try:
            count = self.file.write(data)
        except OSError as error:
            self.error = error
            raise
        self.written += count
        return count

    def __getattr__(self, name: str):  # flush, tell, seek, ... as the file has them
        return getattr(self.file, name)


def write_json(path: str | os.PathLike, payload) -> None:
    """`payload` as indented JSON, written atomically; NaN (and inf) is null, numpy numbers plain ones."""
    text = json.dumps(_json_ready(payload), indent=2, allow_nan=False) + "\n"
    atomic_write(path, text.encode())


def write_json_lines(path: str | os.PathLike, records: list) -> None:
    """One JSON object per line (log.jsonl), written atomically; NaN and inf are null, as in write_json
    (strict readers, jq and JavaScript among them, refuse Python's bare NaN)."""
    text = "".join(json.dumps(_json_ready(record), allow_nan=False) + "\n" for record in records)
    atomic_write(path, text.encode())


def _json_ready(value):
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # a numpy or torch scalar
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value  # JSON has no NaN, inf


def _size(count: int) -> str:
    return f"{count / 2 ** 30:.2f} GB" if count >= 2 ** 30 else f"{count / 2 ** 20:.1f} MB"


def _mount_point(folder: Path) -> Path:
    folder = folder.resolve()
    while not os.path.ismount(folder) and folder != folder.parent:
        folder = folder.parent
    return folder
