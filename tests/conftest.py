"""Shared by the tests: the project's real sample data, which lies beside a checkout in CI (../shared/data) but not
in a user's clone. Tests that need it take one of these fixtures and are skipped, with the path in the reason, when it
is absent; everything else the tests need they write themselves."""
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from helpers import save_checkpoint
from model import build_model

# pytest-xdist runs the tests in parallel processes (pytest.ini: -n auto, at most 4): each takes its share of the
# cores, for its own work and its subprocesses', since threads that outnumber the cores wait for each other.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    THREADS = str(max(1, (os.cpu_count() or 1) // WORKERS))
    os.environ.setdefault("OMP_NUM_THREADS", THREADS)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# The tests' folders in memory where the machine has room: a tiny run's last.pt is 350 MB (ResNet-34 and AdamW's state),
# and writing one took 3-5 s on a disk-backed /tmp (ext4 with discard) against 0.5 s in tmpfs: the suite took 245 s on
# the disk, 158 s in memory. At most 3.3 GB was held at once (a passing test's folder is removed when it ends:
# pytest.ini).
MEMORY_FOLDER, ROOM_NEEDED = Path("/dev/shm"), 8 * 2 ** 30


def pytest_configure(config):
    """Put the base temporary folder in MEMORY_FOLDER unless the user chose one (--basetemp, TMPDIR) or it lacks room;
    xdist's workers get their folders inside the one chosen here."""
    if hasattr(config, "workerinput") or config.option.basetemp or os.environ.get("TMPDIR"):
        return
    if MEMORY_FOLDER.is_dir() and os.access(MEMORY_FOLDER, os.W_OK) and \
            shutil.disk_usage(MEMORY_FOLDER).free >= ROOM_NEEDED and available_memory() >= ROOM_NEEDED:
        tempfile.tempdir = str(MEMORY_FOLDER)  # read by pytest's tmp_path_factory when it makes the base folder


def available_memory() -> int:
    """MemAvailable of /proc/meminfo (Linux, as /dev/shm is), in bytes; 0 where it cannot be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return 0


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path}, the real sample data that sits beside the project in CI; not on this machine")
    return path


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """Every cache the code under test writes (preprocessed images, ONNX exports) goes to a temporary folder, never to
    the user's ~/.cache."""
    patch = pytest.MonkeyPatch()
    patch.setenv("UNET_FUSION_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    patch.undo()


@pytest.fixture
def mias() -> Path:
    """The real mini-MIAS sample: Info.txt, images/mdbNNN.png (76 images) and masks/ (55 mass outlines)."""
    return shared("mini-mias")


@pytest.fixture
def cbis_csvs() -> Path:
    """TCIA's four real CBIS-DDSM case-description CSVs."""
    return shared("cbis-ddsm-csv")


@pytest.fixture
def cbis_sample() -> Path:
    """Two real CBIS-DDSM mammograms with their masks, as 8-bit PNGs."""
    return shared("cbis-ddsm-sample")


@pytest.fixture
def one_thread():
    """One intra-op thread: the tests' CPUs are shared with other jobs, where OpenMP's threads wait for each other
    (5x slower here), and one- and two-process runs then compute each image the same way."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SMALL = dict(decoder_channels=(32, 16, 16, 8, 8))  # narrow decoders keep the models of the tests fast


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """Checkpoints of small models for evaluate and predict: two binary 1-channel ones (the second saved through DDP +
    torch.compile, its weight names prefixed) and a 21-class RGB one."""
    folder = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    unet = build_model("resnet34", "unet", num_classes=1, in_channels=1, **SMALL)
    fusion = build_model("resnet34", "fusion", num_classes=1, in_channels=1, **SMALL)
    voc = build_model("resnet34", "unet", num_classes=21, in_channels=3, **SMALL)
    args = dict(image_size=64, dataset="synthetic")
    return dict(unet=save_checkpoint(folder / "unet.pt", unet, args=args, epoch=7),
                fusion=save_checkpoint(folder / "fusion.pt", fusion, prefix="module._orig_mod.", args=args),
                voc=save_checkpoint(folder / "voc.pt", voc, args=dict(image_size=64, dataset="voc")),
                models=dict(unet=unet.eval(), fusion=fusion.eval(), voc=voc.eval()))


@pytest.fixture(autouse=True)
def no_fsync():
    """Checkpoints are still written whole and replaced atomically; only the flush to the disk is skipped in the
    test processes: power loss is not what the tests check, and fsync of the suite's gigabytes of checkpoints was a
    fifth of its time. (Its own MonkeyPatch: a test's monkeypatch is undone before its tmp_path is removed.)"""
    patch = pytest.MonkeyPatch()
    patch.setattr(os, "fsync", lambda fd: None)
    yield
    patch.undo()
