"""The command line every script shares: the parser, one-line errors, exit codes, stop signals
(Ctrl-C, SIGTERM, a terminal's hang-up, and the DataLoader workers' share of them), training's
step lines, and checks of output paths made before any work starts.

    sys.exit(run_command("benchmark.py", lambda: main(args), (UsageError,)))
"""
from __future__ import annotations

import argparse
import datetime
import errno
import os
import re
import signal
import stat
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import torch


class UsageError(Exception):
    """A bad flag or flag combination; the message names the flag."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2) and a --help in the docstring's layout. Flags are
    taken whole, never abbreviated: `--fol 0/2` after crossval.py's `--` would pass its check of the
    flags it sets itself and override --fold, and a run's recorded flags would read two ways."""

    def __init__(self, **options):
        super().__init__(**{"formatter_class": argparse.RawDescriptionHelpFormatter,
                            "allow_abbrev": False, **options})

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def error_line(error: BaseException) -> str:
    """The one line a user sees for an error: its first line, or a DataLoader worker's message."""
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    # raised in a DataLoader worker: the worker's traceback wraps the message, its last line
    if "Original Traceback" in str(error):
        return re.sub(r"^[\w.]*Error: ", "", lines[-1])
    return lines[0]


def run_command(prog: str, main: Callable[[], object],
                user_errors: tuple[type[BaseException], ...], *,
                exit_codes: dict[type, int] | None = None, quiet: bool = False,
                stop: "StopRequests | None" = None) -> int:
    """main()'s exit code; a user's error, Ctrl-C, SIGTERM or SIGHUP -> one line and 2, 130, 143
    or 129."""
    try:
        with stop or StopRequests():
            code = main()
        return code if isinstance(code, int) else 0
    except user_errors as error:
        if not quiet:
            print(f"{prog}: error: {error_line(error)}", file=sys.stderr)
        return (exit_codes or {}).get(type(error), 2)
    except (Stopped, KeyboardInterrupt) as error:
        stopped = error if isinstance(error, Stopped) else Stopped(signal.SIGINT)
        if not quiet:
            print(f"\n{prog}: {stopped}", file=sys.stderr)
        return stopped.exit_code


class Progress:
    """Training's step lines: a fixed-format one every print_freq steps, a live one on a tty."""

    def __init__(self, *, steps: int, epochs: int, print_freq: int, enabled: bool, world: int,
                 device: torch.device):
        self.steps, self.epochs, self.print_freq, self.enabled, self.world = (
            steps, epochs, print_freq, enabled, world)
        self.device, self.tty, self.started, self.first = device, sys.stdout.isatty(), None, 0
        # seconds waiting for data, seconds of steps, images, since the last fixed line
        self.window = [0.0, 0.0, 0]

    def step(self, epoch: int, i: int, values: dict, images: int, data_time: float,
             step_time: float, lr: float) -> None:
        if i == 0 or self.started is None:  # an epoch's first step (a resumed run: mid-epoch)
            self.started, self.first, self.window = time.time(), i, [0.0, 0.0, 0]
        self.window = [self.window[0] + data_time, self.window[1] + step_time,
                       self.window[2] + images]
        fixed = (i + 1) % self.print_freq == 0 or i + 1 == self.steps
        if not self.enabled or not (fixed or self.tty):
            return
        done = epoch * self.steps + i + 1
        seconds_per_step = (time.time() - self.started) / (i + 1 - self.first)
        eta = datetime.timedelta(
            seconds=round(seconds_per_step * (self.epochs * self.steps - done)))
        steps_in_window = (max(1, (i + 1) % self.print_freq or self.print_freq) if fixed
                           else i + 1)
        steps_in_window = min(steps_in_window, i + 1 - self.first)
        terms = " ".join(f"{k} {v:.4f}" for k, v in values.items() if k != "loss")
        line = (f"epoch {epoch} step {done} ({i + 1}/{self.steps}) loss {values['loss']:.4f} "
                f"({terms}) lr {lr:.2e} "
                f"img/s {self.window[2] * self.world / self.window[1]:.1f} "
                f"data {1000 * self.window[0] / steps_in_window:.0f}ms eta {eta}")
        if self.device.type == "cuda":
            line += f" mem {torch.cuda.max_memory_allocated(self.device) / 2 ** 30:.1f}GiB"
        if fixed:
            print(("\r\x1b[2K" if self.tty else "") + line, flush=True)
            self.window = [0.0, 0.0, 0]
        else:  # a terminal: redraw one live line between the fixed-format lines
            print("\r\x1b[2K" + line[:200], end="", flush=True)


def check_writable_file(path: str | os.PathLike, flag: str) -> Path:
    """UsageError naming `flag` now, not after an hour of work, if `path` cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name")
    check_output_folder(path.parent if str(path.parent) else ".", flag)
    return path


def folder_in_the_way(folder: str | os.PathLike) -> Path | None:
    """The file that stands where `folder`, or a folder above it, would be; None if none does."""
    for path in (Path(folder), *Path(folder).parents):
        if path.exists():
            return None if path.is_dir() else path
    return None


def refuse_file_in_the_way(folder: str | os.PathLike, flag: str) -> None:
    """UsageError naming `flag` before any work if a file stands where `folder` would be."""
    in_the_way = folder_in_the_way(folder)
    if in_the_way is not None:
        raise UsageError(f"{flag} {folder}: {in_the_way} is a file, not a folder; choose another "
                         f"{flag}")


def check_output_folder(folder: str | os.PathLike, flag: str = "--output") -> Path:
    """Make `folder` if needed; UsageError naming `flag` if no file can be created there."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{flag} {folder} is a file, not a folder; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()  # the one sure test: create (and delete) a file
    except OSError as error:  # a file in the way, a read-only file system, no permission
        raise UsageError(f"{flag} {folder}: cannot write there ({error.strerror or error}); "
                         "choose another folder") from None
    return folder


# The signals that ask a command to stop: Ctrl-C, kill/timeout/SLURM, and a terminal that hangs up
# (an SSH session that drops), which would otherwise end it where it stands.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))  # Windows has no SIGHUP


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader worker's worker_init_fn. A stop signal sent to the whole process group
    (timeout, the terminal's Ctrl-C or hang-up) or to every process (SLURM) is the main process's
    to act on: a worker that died of it would fail the step before last.pt is saved. A SIGTERM
    from the main process itself (how a loader ends a worker that does not stop by message, and
    how Python ends them at exit) still ends the worker."""
    for signum in STOP_SIGNALS:
        if signum != signal.SIGTERM:
            signal.signal(signum, signal.SIG_IGN)
    # Linux: a SIGTERM is waited for, to see who sent it (where it cannot be, as on macOS, a
    # SIGTERM to the whole group still ends the workers, and with them the run's step)
    if hasattr(signal, "sigwaitinfo"):
        parent = os.getppid()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started later too

        def end_on_the_parents_sigterm() -> None:
            while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
                pass
            os._exit(0)

        threading.Thread(target=end_on_the_parents_sigterm, daemon=True).start()


class Stopped(BaseException):
    """A run stopped by a signal of STOP_SIGNALS; exit code 128 + the signal (130, 143, 129)."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or f"stopped by {signal.Signals(signum).name}")
        self.signum, self.exit_code = signum, 128 + signum


class StopRequests:
    """STOP_SIGNALS as requests: while `graceful`, the training loop stops and saves. Once a stop
    is under way, a second Ctrl-C stops at once; a second SIGTERM or SIGHUP changes nothing: a
    supervisor may send it twice, and crossval.py passes its own on to runs that may have had
    the terminal's or timeout's already. After a hang-up nothing reads the terminal: what would
    have gone to it goes nowhere, so that a print cannot fail the save."""

    def __init__(self, doing: str = "stopping after this step and saving last.pt"):
        self.signum, self.graceful, self.doing, self._previous = None, False, doing, {}
        self._streams = None

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():  # only it may set handlers
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
            # A write can fail before the SIGHUP handler runs (it runs between bytecodes)
            self._streams = sys.stdout, sys.stderr
            sys.stdout, sys.stderr = HangUpSafe(sys.stdout), HangUpSafe(sys.stderr)
        return self

    def _handle(self, signum: int, frame) -> None:
        if signum == getattr(signal, "SIGHUP", None):
            detach_from_terminal()
        if self.graceful and self.signum is None:
            self.signum = signum
            print(f"\n{signal.Signals(signum).name}: {self.doing} (Ctrl-C again stops at once, "
                  "without saving)", file=sys.stderr, flush=True)
            return
        if self.signum is not None and signum != signal.SIGINT:
            return  # the stop already under way goes on
        raise Stopped(signum)  # an atomic write then removes its temporary file

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if self._streams is not None:
            sys.stdout, sys.stderr = self._streams


class HangUpSafe:
    """A text stream whose writes, when the terminal has hung up (EIO) or the pipe's reader is
    gone (EPIPE), detach the command from them and go nowhere instead of failing the command."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._retrying(self._stream.write, text)

    def flush(self) -> None:
        self._retrying(self._stream.flush)

    def _retrying(self, method, *args):
        try:
            return method(*args)
        except OSError as error:
            if error.errno not in (errno.EIO, errno.EPIPE):
                raise
            detach_from_terminal()
            return method(*args)  # now into os.devnull

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def detach_from_terminal() -> None:
    """Standard output and error to os.devnull where they went to a terminal or a pipe, which a
    hang-up closes (writing there then fails, and what is still buffered goes nowhere); output
    to a file (crossval.py's train.log) stays."""
    with open(os.devnull, "w") as devnull:
        for fd in (1, 2):
            try:
                mode = os.fstat(fd).st_mode  # not isatty(): a hung-up terminal answers no
                if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
                    os.dup2(devnull.fileno(), fd)
            except OSError:  # already closed
                pass
