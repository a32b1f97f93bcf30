"""How a run stops without losing work (engine/cli.StopRequests, train.py, docs/runs.md "Stopping a run"): SIGTERM or
Ctrl-C saves where the run is and the resumed run ends bit-identical; a second signal; a signal during the final write;
a terminal that hangs up; the DataLoader's workers under a signal to the whole process group; a kill -9, which loses
only what came after the last write. Tiny synthetic runs, in this process, and in others where a real signal or
terminal is the point."""
import errno
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import train
from engine import checkpoints, cli, run_folder
from engine.checkpoints import read_checkpoint
from engine.cli import Stopped, StopRequests
from helpers import TINY, TINY_RESUMED, as_logged, epochs_logged, read_log

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def final_weights(folder) -> dict:
    return torch.load(folder / "last.pt", weights_only=True)["model"]


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_and_the_resumed_run_ends_bit_identical(tmp_path, monkeypatch, capsys):
    """SIGTERM (what timeout, SLURM and Kubernetes send) stops at the next step with exit code 143 and one
    line saying how to resume; last.pt then holds the position within the epoch, and the resumed run ends
    with the weights of a run never stopped."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    straight, stopped, three_steps = tmp_path / "straight", tmp_path / "stopped", ["--limit", "9"]
    assert train.cli([*TINY, *three_steps, "--epochs", "2", "--out-dir", str(straight)]) == 0
    real_step, sent = train.Progress.step, []

    def step_then_signal(self, epoch, i, *args):
        real_step(self, epoch, i, *args)
        if (epoch, i) == (1, 0) and not sent:  # after the first step of epoch 1
            sent.append(os.kill(os.getpid(), signal.SIGTERM))

    monkeypatch.setattr(train.Progress, "step", step_then_signal)
    capsys.readouterr()
    assert train.cli([*TINY, *three_steps, "--epochs", "2", "--out-dir", str(stopped)]) == 143
    error = capsys.readouterr().err.strip().splitlines()[-1]  # the step under way when it came finishes
    assert error == (f"train.py: stopped by SIGTERM at epoch 1, step 2 of 3; saved {stopped / 'last.pt'}: "
                     f"continue with python train.py --resume {stopped / 'last.pt'}")
    saved = torch.load(stopped / "last.pt", weights_only=True)
    assert (saved["epoch"], saved["next_step"]) == (0, 2) and epochs_logged(stopped) == [0]
    assert not [p for p in stopped.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    # its position within the epoch is counted in batches: another --batch-size is refused
    assert train.cli(["--resume", str(stopped / "last.pt"), "--batch-size", "2"]) == 2
    assert capsys.readouterr().err == (f"train.py: error: --batch-size 2: {stopped / 'last.pt'} stopped 2 steps "
                                       "into epoch 1 at --batch-size 3; resume it with that, or resume a "
                                       "checkpoint saved at an epoch's end\n")
    # ...and each process takes its share of the epoch: another number of processes is refused too
    with monkeypatch.context() as torchrun:
        torchrun.setenv("RANK", "0"), torchrun.setenv("WORLD_SIZE", "2")
        assert train.cli(["--resume", str(stopped / "last.pt")]) == 2
    assert capsys.readouterr().err == (f"train.py: error: {stopped / 'last.pt'} stopped 2 steps into epoch 1 with 1 "
                                       "process(es), this run has 2: resume it with one process, without torchrun, "
                                       "or resume a checkpoint saved at an epoch's end\n")
    assert train.cli(["--resume", str(stopped / "last.pt"), *TINY_RESUMED]) == 0
    a, b = final_weights(straight), final_weights(stopped)
    assert all(torch.equal(a[k], b[k]) for k in a) and epochs_logged(stopped) == [0, 1]
    assert read_log(stopped)[1]["train_loss"] == read_log(straight)[1]["train_loss"]


def test_a_signal_while_the_last_checkpoint_is_written_lets_it_finish(tmp_path, monkeypatch):
    """All epochs are done and the final last.pt is on its way to the disk when SIGTERM comes: the write ends (the
    run is finished, exit 0), rather than being abandoned with the log one epoch ahead of the file."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    real_close = run_folder.RunFolder.close

    def close_after_a_sigterm(self):
        signal.raise_signal(signal.SIGTERM)
        return real_close(self)

    monkeypatch.setattr(run_folder.RunFolder, "close", close_after_a_sigterm)
    assert train.cli([*TINY, "--epochs", "2", "--out-dir", str(tmp_path / "run")]) == 0
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 1
    assert epochs_logged(tmp_path / "run") == [0, 1]


def test_a_second_sigterm_leaves_a_stop_under_way_and_a_second_ctrl_c_ends_it_at_once():
    """Ctrl-C and timeout signal a whole process group and crossval.py passes SIGTERM on to its runs as well, so a run
    can get two: the stop under way (its last.pt being saved) goes on; only a second Ctrl-C abandons it, as the first
    one's message says."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    with StopRequests() as stop:
        with pytest.raises(Stopped):  # before the training loop: a signal ends the command at once
            signal.raise_signal(signal.SIGTERM)
        stop.graceful = True  # the loop
        signal.raise_signal(signal.SIGINT)
        assert stop.signum == signal.SIGINT
        stop.graceful = False  # saving last.pt
        signal.raise_signal(signal.SIGTERM)
        assert stop.signum == signal.SIGINT
        with pytest.raises(Stopped, match="SIGINT"):
            signal.raise_signal(signal.SIGINT)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="a pseudo-terminal is POSIX")
def test_a_terminal_that_hangs_up_stops_the_run_and_it_saves(tmp_path):
    """An SSH session that drops: the run's terminal hangs up, SIGHUP comes, and every write to the terminal fails
    from then on (EIO). The run still saves where it is, as on SIGTERM, and exits 129; its log matches its weights."""
    import pty
    folder = tmp_path / "run"
    argv = [sys.executable, str(ROOT / "train.py"), *TINY, "--epochs", "50", "--out-dir", str(folder)]
    try:
        pid, terminal = pty.fork()  # the child's controlling terminal, stdin, stdout and stderr
    except OSError as error:
        pytest.skip(f"no pseudo-terminal on this machine ({error})")
    if pid == 0:
        try:
            os.execve(sys.executable, argv, dict(os.environ, OMP_NUM_THREADS="1"))
        finally:
            os._exit(127)
    seen, deadline = b"", time.monotonic() + 120
    try:
        while b"epoch 0 val" not in seen:  # an epoch validated and logged: the terminal shows its line
            assert time.monotonic() < deadline, seen[-2000:]
            seen += os.read(terminal, 65536)
    finally:
        os.close(terminal)  # the hang-up
    while (status := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status[1]) == 128 + signal.SIGHUP
    saved = read_checkpoint(folder / "last.pt", needs=checkpoints.RESUME_ENTRIES)
    assert as_logged(saved["log"]) == read_log(folder) and len(read_log(folder)) >= 1
    assert not list(folder.glob(".*.tmp"))


class WorkerPid(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        return os.getpid()


@pytest.mark.skipif(not hasattr(signal, "sigwaitinfo"), reason="Linux tells a worker who sent a SIGTERM")
def test_a_loader_worker_leaves_a_stop_signal_to_the_run_and_still_ends_when_its_process_ends_it():
    """timeout and a terminal signal the whole process group, SLURM every process: a DataLoader worker gets the
    SIGTERM, SIGINT or SIGHUP too. It leaves the stop to the run (a worker killed by it failed the step before the
    run could save), yet the SIGTERM of its own process, how a loader and Python's exit end a worker, ends it."""
    batches = iter(torch.utils.data.DataLoader(WorkerPid(), num_workers=1, persistent_workers=True,
                                               worker_init_fn=cli.ignore_stop_signals))
    pid = int(next(batches))
    for name in ("SIGTERM", "SIGINT", "SIGHUP"):  # from another process, as timeout, a terminal or SLURM send them
        subprocess.run([sys.executable, "-c", f"import os, signal; os.kill({pid}, signal.{name})"], check=True)
    time.sleep(0.2)
    assert int(next(batches)) == pid  # still there, still loading
    (worker,) = [process for process in mp.active_children() if process.pid == pid]
    worker.terminate()  # its own process's SIGTERM
    worker.join(timeout=30)
    if worker.exitcode is None:  # ignored: ended here, or Python's exit would wait for it forever
        worker.kill()
    assert worker.exitcode == 0


def test_a_write_that_finds_the_terminal_gone_detaches_and_the_command_goes_on(monkeypatch):
    """The SIGHUP handler runs between bytecodes, so a print can meet the hung-up terminal first (EIO), or a pipe
    whose reader is gone (EPIPE): the command's streams then detach and carry on. Other errors still fail."""
    class HungUpTerminal:
        def __init__(self):
            self.detached, self.written = False, []

        def write(self, text):
            if not self.detached:
                raise OSError(errno.EIO, "Input/output error")
            self.written.append(text)
            return len(text)

    terminal = HungUpTerminal()
    monkeypatch.setattr(cli, "detach_from_terminal", lambda: setattr(terminal, "detached", True))
    assert cli.HangUpSafe(terminal).write("epoch 3 val\n") == 12 and terminal.written == ["epoch 3 val\n"]

    class FullDisk:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        cli.HangUpSafe(FullDisk()).write("epoch 3 val\n")


def writing(path: Path) -> bool:
    """Whether a new `path` is being written: atomic_write's temporary file beside it holds some bytes."""
    for temporary in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            if temporary.stat().st_size > 0:
                return True
        except FileNotFoundError:  # renamed into place meanwhile
            pass
    return False


@pytest.mark.slow
def test_a_kill_9_loses_only_what_came_after_the_last_write(tmp_path):
    """SIGKILL leaves no time to save: the run resumes from the last last.pt it wrote (a write cut short leaves the
    previous file whole and its temporary file is cleared), its log goes back to those weights, and it ends with
    the weights of a run never killed."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    flags = [*TINY, "--epochs", "3", "--save-every", "1e-9"]  # last.pt after every epoch, in the background
    assert train.cli([*flags, "--out-dir", str(straight)]) == 0
    process = subprocess.Popen([sys.executable, "train.py", *flags, "--out-dir", str(killed)], cwd=ROOT,
                               env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:  # killed while it writes a last.pt after epoch 1 or 2 (its temporary file is there), the log ahead of it
        deadline = time.monotonic() + 120
        while not ((killed / "last.pt").exists() and len(read_log(killed)) >= 2 and writing(killed / "last.pt")):
            assert process.poll() is None and time.monotonic() < deadline, "the run ended before it was killed"
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert writing(killed / "last.pt")  # the write cut short
    assert torch.load(killed / "last.pt", weights_only=True)["epoch"] in (0, 1)  # the previous one, whole
    assert train.cli(["--resume", str(killed / "last.pt"), *TINY_RESUMED]) == 0
    a, b = final_weights(straight), final_weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a) and epochs_logged(killed) == [0, 1, 2]
    assert as_logged(torch.load(killed / "last.pt", weights_only=True)["log"]) == read_log(killed)
    assert not list(killed.glob(".*.tmp"))
