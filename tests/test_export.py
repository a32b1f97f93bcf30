"""export.py: the ONNX file computes what PyTorch computes (ONNX Runtime run here, apart from export.py's own check),
at other sizes and batches than the one traced, carries its metadata, and the command fails cleanly: one line on
stderr, the right exit code, no partial or overwritten file. Tiny decoders at 64x64 keep the whole file fast."""
import json
from pathlib import Path
import sys

import numpy as np
import pytest
import torch
from PIL import Image

onnx = pytest.importorskip("onnx", reason="export.py's optional dependency: pip install onnx onnxruntime")
ort = pytest.importorskip("onnxruntime", reason="export.py's optional dependency: pip install onnx onnxruntime")

import export  # noqa: E402 (after the skips: export.py imports them itself, lazily)
from model import build_model  # noqa: E402
from engine.inference import sliding_window_logits, to_model_input  # noqa: E402

TINY_DECODER = (16, 16, 16, 16, 16)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models at 64x64 gain nothing from a second thread, and where other jobs share the 2 cores two OpenMP
    threads mostly wait for each other: this file took 11 s with one thread and 40-50 s with two, measured so."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def save_checkpoint(path, **config) -> torch.nn.Module:
    """A train.py-shaped checkpoint of a tiny random model trained 'at 64x64'; returns the model in eval mode."""
    torch.manual_seed(0)
    model = build_model(**config, decoder_channels=TINY_DECODER)
    torch.save({"model": model.state_dict(), "model_config": model.config, "args": {"image_size": 64},
                "epoch": 7, "metric_name": "dice_pooled", "best_metric": 0.25}, path)
    return model.eval()


def run(argv, capsys) -> tuple[int, list[str]]:
    """export.cli in this process (a new interpreter would cost seconds of torch import) -> (code, stderr lines)."""
    try:
        code = export.cli([str(arg) for arg in argv])
    except SystemExit as exit:  # argparse's errors leave from parse_args
        code = exit.code
    return code, capsys.readouterr().err.strip().splitlines()


def assert_matches_pytorch(path, model, shapes):
    """ONNX Runtime on random images of each shape vs the model after inference.to_model_input's normalisation."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(1)
    for shape in shapes:
        images = torch.rand(shape, generator=generator)
        with torch.no_grad():
            expected = model(to_model_input(images, model.config)).numpy()
        (got,) = session.run(None, {"image": images.numpy()})
        assert got.shape == expected.shape == (shape[0], model.config["num_classes"], *shape[2:])
        limit = export.TOLERANCE * max(1.0, float(np.abs(expected).max()))
        assert np.abs(got - expected).max() <= limit, shape


@pytest.fixture(scope="module")
def binary_export(tmp_path_factory):
    """The thesis' proposed model (tiny decoder), 1 channel, exported over an existing file with --force."""
    folder = tmp_path_factory.mktemp("binary")
    model = save_checkpoint(folder / "tiny.pt", encoder="resnet34", decoder="fusion", num_classes=1, in_channels=1)
    (folder / "tiny.onnx").write_bytes(b"an older export")
    assert export.cli(["--checkpoint", str(folder / "tiny.pt"), "--output", str(folder / "tiny.onnx"), "--force"]) == 0
    return model, folder


def test_binary_fusion_export_matches_pytorch_at_other_sizes_and_batches(binary_export):
    model, folder = binary_export
    session = ort.InferenceSession(str(folder / "tiny.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 1, "height", "width"]
    assert_matches_pytorch(folder / "tiny.onnx", model, [(1, 1, 64, 64), (2, 1, 96, 160)])
    assert sorted(path.name for path in folder.iterdir()) == ["tiny.onnx", "tiny.pt"]  # no temporary file left


def test_metadata_holds_the_config_normalisation_and_mask_rule(binary_export):
    model, folder = binary_export
    metadata = {prop.key: prop.value for prop in onnx.load(folder / "tiny.onnx").metadata_props}
    assert json.loads(metadata["model_config"]) == model.config
    assert json.loads(metadata["mean"]) == model.config["mean"] and json.loads(metadata["std"]) == model.config["std"]
    assert "logit > 0" in metadata["mask"] and "[0, 1]" in metadata["input"] and "32" in metadata["input"]
    assert json.loads(metadata["checkpoint_epoch"]) == 7 and json.loads(metadata["checkpoint_best_metric"]) == 0.25
    assert json.loads(metadata["training_image_size"]) == [64, 64]
    session = ort.InferenceSession(str(folder / "tiny.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map == metadata  # what a deployment reads


def test_multiclass_unet_checked_on_an_image_file(tmp_path, capsys):
    model = save_checkpoint(tmp_path / "voc.pt", encoder="resnet34", decoder="unet", num_classes=21, in_channels=3)
    gray = (np.add.outer(np.arange(90), np.arange(120)) % 256).astype(np.uint8)  # gray file, RGB model
    Image.fromarray(gray).save(tmp_path / "photo.png")
    code, errors = run(["--checkpoint", tmp_path / "voc.pt", "--output", tmp_path / "voc.onnx",
                        "--check-image", tmp_path / "photo.png"], capsys)
    assert code == 0 and errors == []
    metadata = {prop.key: prop.value for prop in onnx.load(tmp_path / "voc.onnx").metadata_props}
    assert "argmax" in metadata["mask"] and json.loads(metadata["model_config"])["num_classes"] == 21
    assert_matches_pytorch(tmp_path / "voc.onnx", model, [(2, 3, 64, 128)])


def test_a_failed_check_writes_nothing_and_keeps_the_old_file(tmp_path, capsys, monkeypatch, unet_checkpoint):
    (tmp_path / "model.onnx").write_bytes(b"an older export")
    # A broken export: the graph forgets the normalisation that PyTorch's path (to_model_input) applies.
    monkeypatch.setattr(export.NormalisedModel, "forward", lambda self, images: self.model(images))
    code, errors = run(["--checkpoint", unet_checkpoint, "--output", tmp_path / "model.onnx", "--force"], capsys)
    assert code == 1 and len(errors) == 1 and "differs from PyTorch" in errors[0]
    assert (tmp_path / "model.onnx").read_bytes() == b"an older export"
    assert [path.name for path in tmp_path.iterdir()] == ["model.onnx"]  # and no temporary file


def test_a_broken_checkpoint_is_one_line_and_exit_code_2(tmp_path, capsys):
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    code, errors = run(["--checkpoint", tmp_path / "broken.pt", "--output", tmp_path / "model.onnx"], capsys)
    assert code == 2 and len(errors) == 1 and "broken.pt" in errors[0] and "train.py" in errors[0]
    assert not (tmp_path / "model.onnx").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["broken.pt"]


def test_an_existing_output_is_not_overwritten_without_force(tmp_path, capsys):
    (tmp_path / "model.onnx").write_bytes(b"an older export")
    code, errors = run(["--checkpoint", tmp_path / "missing.pt", "--output", tmp_path / "model.onnx"], capsys)
    assert code == 2 and len(errors) == 1 and "--force" in errors[0]
    assert (tmp_path / "model.onnx").read_bytes() == b"an older export"


@pytest.fixture(scope="module")
def unet_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("unet") / "tiny.pt"
    save_checkpoint(path, encoder="resnet34", decoder="unet", num_classes=1, in_channels=1)
    return path


@pytest.mark.parametrize("flags, named", [
    (["--output", "{tmp}/no/such/folder/model.onnx"], "does not exist"),
    (["--output", "{tmp}"], "is a folder"),
    (["--output", "{tmp}/model.onnx", "--opset", "9"], "--opset 9"),
    (["--output", "{tmp}/model.onnx", "--image-size", "50"], "--image-size 50"),
    (["--output", "{tmp}/model.onnx", "--image-size", "0"], "--image-size 0"),  # not taken as "not given"
    (["--output", "{tmp}/model.onnx", "--check-image", "{tmp}/missing.png"], "missing.png"),
    (["--output", "{tmp}/model.onnx", "--opset", "seventeen"], "--opset"),  # argparse's own error, one line too
])
def test_usage_errors_are_one_line_naming_the_flag_and_exit_code_2(tmp_path, capsys, unet_checkpoint, flags, named):
    argv = ["--checkpoint", unet_checkpoint] + [flag.format(tmp=tmp_path) for flag in flags]
    code, errors = run(argv, capsys)
    assert code == 2 and len(errors) == 1 and named in errors[0], errors
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary file


def test_missing_onnxruntime_is_one_line_with_the_pip_command(tmp_path, capsys, monkeypatch, unet_checkpoint):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    code, errors = run(["--checkpoint", unet_checkpoint, "--output", tmp_path / "model.onnx"], capsys)
    assert code == 2 and errors == ["export.py: error: needs onnx and onnxruntime: pip install onnx onnxruntime"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("in_channels", [1, 3])
def test_the_docs_snippet_runs_the_exported_file_on_gray_and_rgb_models(in_channels, tmp_path, capsys,
                                                                        monkeypatch):
    """docs/deploy.md's onnxruntime lines, run as written on an exported file: their mask is the model's own on
    the image as they prepare it (the recipes' real-data models take RGB, the demo's gray)."""
    readme = (Path(__file__).resolve().parents[1] / "docs" / "deploy.md").read_text()
    snippet = readme.split("Running the file:\n\n```python\n", 1)[1].split("```", 1)[0]
    assert len(snippet.strip().splitlines()) <= 6
    model = save_checkpoint(tmp_path / "best.pt", encoder="resnet34", decoder="unet", num_classes=1,
                            in_channels=in_channels)
    assert run(["--checkpoint", tmp_path / "best.pt", "--output", tmp_path / "model.onnx"], capsys)[0] == 0
    scan = (np.random.default_rng(2).random((300, 200)) * 255).astype(np.uint8)
    Image.fromarray(scan).save(tmp_path / "scan.png")
    monkeypatch.chdir(tmp_path)
    names = {}
    exec(snippet, names)  # noqa: S102 (the docs' own code)
    image = torch.from_numpy(np.asarray(Image.fromarray(scan).resize((256, 256)), np.float32) / 255)[None, None]
    with torch.no_grad():
        expected = model(to_model_input(image, model.config))[0, 0].numpy() > 0
    assert names["mask"].shape == (256, 256) and (names["mask"] != expected).mean() < 1e-3


def test_a_patch_model_exports_at_its_patch_and_the_docs_window_onnx_runtime(tmp_path, capsys,
                                                                             monkeypatch):
    """A model trained on 64x64 patches of 128x128 images: checked at its patch, its windows in the
    metadata; docs/high-resolution.md's lines, run as written, give engine.inference's mask."""
    docs = (Path(__file__).resolve().parents[1] / "docs" / "high-resolution.md").read_text()
    snippet = docs.split("Windows around ONNX Runtime:\n\n```python\n", 1)[1].split("```", 1)[0]
    assert len(snippet.strip().splitlines()) <= 11
    torch.manual_seed(0)
    model = build_model("resnet34", "unet", num_classes=1, in_channels=1,
                        decoder_channels=TINY_DECODER).eval()
    args = {"image_size": 128, "patch_size": 64, "overlap": 0.5, "dataset": "mias"}
    torch.save({"model": model.state_dict(), "model_config": model.config, "args": args},
               tmp_path / "p.pt")
    assert export.cli(["--checkpoint", str(tmp_path / "p.pt"), "--output",
                       str(tmp_path / "model.onnx")]) == 0
    assert "check 64x64 batch 1" in capsys.readouterr().out  # the network's input: its patch
    metadata = onnx.load(tmp_path / "model.onnx").metadata_props
    metadata = {prop.key: prop.value for prop in metadata}
    assert json.loads(metadata["window"]) == [64, 64]
    assert json.loads(metadata["training_image_size"]) == [128, 128]  # the whole image's
    scan = (np.random.default_rng(3).random((300, 200)) * 255).astype(np.uint8)
    Image.fromarray(scan).save(tmp_path / "scan.png")
    monkeypatch.chdir(tmp_path)
    names = {}
    exec(snippet, names)  # noqa: S102 (the docs' own code)
    image = np.asarray(Image.fromarray(scan).resize((128, 128)), np.float32) / 255
    image = torch.from_numpy(image)[None, None]  # (1, 1, 128, 128)
    expected = sliding_window_logits(model, image, (64, 64), overlap=0.5)[0, 0].numpy() > 0
    assert names["mask"].shape == (128, 128) and (names["mask"] != expected).mean() < 1e-3
