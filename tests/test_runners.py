"""runners.py: each path prediction can take gives the eager model's logits, and a path that cannot be used falls back
to the eager model in one line. (The CUDA graph itself is exercised by bench/gpu.sh on a GPU; here it must pass
everything through untouched.)"""
import errno
import sys

import pytest
import torch

from engine import backends
from helpers import save_checkpoint
from model import build_model

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runners")
    torch.manual_seed(0)
    model = build_model("resnet34", "fusion", num_classes=1, in_channels=1, decoder_channels=(16,) * 5).eval()
    return model, save_checkpoint(folder / "tiny.pt", model, args=dict(image_size=64)), folder


def test_eager_channels_last_and_graph_on_a_cpu_give_the_eager_logits(tiny):
    model, _, _ = tiny
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        expected = model(x)
        for backend in ("eager", "channels_last", "graph", "auto"):
            runner = backends.fast_model(model, torch.device("cpu"), backend=backend)
            assert runner.config == model.config and next(runner.parameters()).device.type == "cpu"
            torch.testing.assert_close(runner(x), expected, rtol=1e-4, atol=1e-4)
    assert isinstance(backends.fast_model(model, torch.device("cpu"), backend="graph"), backends.GraphedModel)
    assert backends.GraphedModel(model).graphs == {}  # nothing is captured off a GPU
    with pytest.raises(ValueError, match="backend"):
        backends.fast_model(model, torch.device("cpu"), backend="tensorrt")


def test_onnxruntime_is_checked_cached_and_falls_back_when_missing(tiny, monkeypatch, capsys):
    pytest.importorskip("onnxruntime", reason="the ONNX Runtime path's optional dependency: pip install onnxruntime")
    model, checkpoint, folder = tiny
    runner = backends.fast_model(model, torch.device("cpu"), backend="onnxruntime", checkpoint=str(checkpoint),
                                cache=folder / "cache", size=(64, 64))
    assert isinstance(runner, backends.OnnxRuntimeModel) and "exporting" in capsys.readouterr().out
    x = torch.randn(1, 1, 64, 128)  # another size than the check's: the graph's axes are dynamic
    with torch.no_grad():
        torch.testing.assert_close(runner(x), model(x), rtol=1e-3, atol=1e-3)
    exported = list((folder / "cache").glob("*.onnx"))
    assert len(exported) == 1
    backends.fast_model(model, torch.device("cpu"), backend="onnxruntime", checkpoint=str(checkpoint),
                       cache=folder / "cache", size=(64, 64))
    assert "exporting" not in capsys.readouterr().out  # the cached export is used again
    exported[0].write_bytes(b"damaged")  # a cached file damaged since: noted, removed, the model runs eagerly
    runner = backends.fast_model(model, torch.device("cpu"), backend="onnxruntime", checkpoint=str(checkpoint),
                                 cache=folder / "cache", size=(64, 64))
    assert runner is model and "could not load" in capsys.readouterr().err and not exported[0].exists()

    def full_disk(path, content, **options):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:  # the export cannot be written (a full disk): the same
        patch.setattr(backends, "atomic_write", full_disk)
        runner = backends.fast_model(model, torch.device("cpu"), backend="onnxruntime", checkpoint=str(checkpoint),
                                     cache=folder / "cache", size=(64, 64))
    assert runner is model and "could not be written ([Errno 28] No space left on device)" in capsys.readouterr().err
    # ONNX Runtime runs float32: asked for bf16, the model runs eagerly, where autocast applies (auto says nothing)
    runner = backends.fast_model(model, torch.device("cpu"), backend="onnxruntime", checkpoint=str(checkpoint),
                                 cache=folder / "cache", size=(64, 64), amp="bf16")
    assert runner is model and "--amp bf16" in capsys.readouterr().err
    runner = backends.fast_model(model, torch.device("cpu"), backend="auto", checkpoint=str(checkpoint),
                                 cache=folder / "cache", size=(64, 64), amp="bf16")
    assert not isinstance(runner, backends.OnnxRuntimeModel) and capsys.readouterr().err == ""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    fallback = backends.fast_model(model, torch.device("cpu"), backend="onnxruntime", checkpoint=str(checkpoint),
                                  cache=folder / "cache")
    assert fallback is model and "running the model eagerly" in capsys.readouterr().err
