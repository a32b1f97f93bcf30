"""How a trained model runs for prediction (Tables 2 and 4's "inference time", for users): a CUDA
graph per input shape on a GPU, ONNX Runtime (else channels_last) on a CPU, the eager model where a
path cannot be used (docs/speed.md). Each takes normalised images (B, C, H, W) to logits.

    model = fast_model(model, device, backend="auto", checkpoint="runs/cbis/best.pt", cache=folder)
"""
from __future__ import annotations

import hashlib
import io
import sys
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from readers.atomic import atomic_write

from .cli import error_line

BACKENDS = ("auto", "eager", "graph", "onnxruntime", "channels_last")
ONNX_TOLERANCE = 1e-2  # x max(1, max |logit|): export.py's, measured in docs/deploy.md


class GraphedModel(nn.Module):
    """On a CUDA GPU without gradients, the forward captured as a CUDA graph once per input shape
    (and autocast setting) and replayed: the card's own time, not Python's kernel launches."""

    MAX_SHAPES = 4  # a graph holds its own memory: a batch, the last smaller one, TTA at most

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.config, self.graphs = model, model.config, {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cuda" or torch.is_grad_enabled() or self.model.training:
            return self.model(x)  # anywhere else, or past MAX_SHAPES shapes: the plain forward
        amp = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        key = (tuple(x.shape), x.dtype, x.is_contiguous(memory_format=torch.channels_last), *amp)
        if key not in self.graphs:
            fits = len(self.graphs) < self.MAX_SHAPES
            self.graphs[key] = self._capture(x, *amp) if fits else None
        if self.graphs[key] is None:
            return self.model(x)
        graph, static_input, static_output = self.graphs[key]
        static_input.copy_(x)
        graph.replay()
        return static_output.clone()  # the next replay overwrites the static output

    def _capture(self, x: torch.Tensor, amp_enabled: bool, amp_dtype: torch.dtype):
        """(graph, its input, its output), or None (the plain forward) where capture fails."""
        static_input = x.clone(memory_format=torch.preserve_format)
        # Autocast's cache of cast weights would live outside the graph and be freed under it.
        cast = dict(device_type="cuda", enabled=amp_enabled, dtype=amp_dtype, cache_enabled=False)
        try:
            side = torch.cuda.Stream(x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side), torch.autocast(**cast):
                for _ in range(3):  # warm-up off the graph: cuDNN chooses its algorithms here
                    self.model(static_input)
            torch.cuda.current_stream(x.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.autocast(**cast):
                static_output = self.model(static_input)
            return graph, static_input, static_output
        except RuntimeError as error:  # an operation that cannot be captured: say so, run eagerly
            print(f"note: CUDA graph capture failed ({str(error).splitlines()[0]}); running the "
                  "model eagerly", file=sys.stderr)
            return None


class NormalisedModel(nn.Module):
    """Images in [0, 1] (B, C, H, W) -> logits: the model with its normalisation inside (export)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        for name in ("mean", "std"):
            value = torch.tensor(model.config[name], dtype=torch.float32).view(1, -1, 1, 1)
            self.register_buffer(name, value)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)


def export_graph(module: nn.Module, opset: int = 17, *, in_channels: int) -> bytes:
    """`module` (eval mode) as a serialised ONNX model with dynamic batch, height and width."""
    example = torch.rand(2, in_channels, 64, 96)  # batch 2, H != W: nothing traced as 1 or square
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        # The deprecation notice is about the exporter below. The TracerWarnings come from
        # SegmentationModel.forward's input checks (multiple of 32), traced as the branch not
        # taken; callers check the graph at two sizes. BiT's ConstantPad2d leaves a Slice with
        # step -1 that is computed at run time instead of folded.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        buffer = io.BytesIO()
        # The TorchScript exporter (deprecated), not torch 2.9+'s dynamo one: both export these
        # models right, but dynamo needs onnxscript and onnx_ir and took 5x longer (docs/deploy.md).
        torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=opset,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": axes, "logits": axes})
    return buffer.getvalue()


class OnnxRuntimeModel(nn.Module):
    """The model through ONNX Runtime on the CPU: normalised images -> float32 logits."""

    def __init__(self, model: nn.Module, path: Path):
        super().__init__()
        import onnxruntime  # optional: only this path needs it

        self.model, self.config = model, model.config  # kept for .parameters() (the device)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # as many threads as torch uses
        self.session = onnxruntime.InferenceSession(str(path), options,
                                                    providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(None, {"image": x.detach().float().contiguous().numpy()})
        return torch.from_numpy(logits)


def _onnx_file(model: nn.Module, checkpoint: str, cache: Path) -> Path:
    """The cached export of this checkpoint, keyed by its path, size, mtime and torch's version."""
    stat = Path(checkpoint).stat()
    key = f"{Path(checkpoint).resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{torch.__version__}"
    path = cache / f"{Path(checkpoint).stem}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.onnx"
    if not path.is_file():
        print(f"exporting {checkpoint} to ONNX for ONNX Runtime (once; cached as {path})",
              flush=True)
        atomic_write(path, export_graph(model, in_channels=model.config["in_channels"]))
    return path


def _agrees(fast: nn.Module, model: nn.Module, size: tuple[int, int]) -> float:
    """The largest logit difference of a path from the eager model, in max(1, max |logit|)."""
    seeded = torch.Generator().manual_seed(0)
    x = torch.randn(1, model.config["in_channels"], *size, generator=seeded)
    with torch.no_grad():
        expected, got = model(x), fast(x)
    return float((got - expected).abs().max() / max(1.0, float(expected.abs().max())))


def fast_model(model: nn.Module, device: torch.device, *, backend: str = "auto",
               checkpoint: str | None = None, cache: Path | None = None,
               size: tuple[int, int] = (256, 256), amp: str = "none") -> nn.Module:
    """The model wrapped for `backend`; auto: the fastest on `device` (ONNX Runtime needs a
    checkpoint and a cache folder for its export, and runs float32 only: not with `amp`); a path
    refused falls back to eager."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    model.eval()
    if backend == "onnxruntime" and amp != "none":
        print(f"note: ONNX Runtime runs the float32 graph, --amp {amp} asks for {amp}; running the "
              "model eagerly", file=sys.stderr)
        return model
    if backend == "auto":  # measured by bench/cpu_predict.py (docs/speed.md, "Prediction on a CPU")
        onnx = _has_onnxruntime() and checkpoint and cache and amp == "none"
        backend = ("graph" if device.type == "cuda" else
                   "onnxruntime" if onnx else "channels_last")
    if backend == "graph":
        return GraphedModel(model)
    if backend == "channels_last":
        return model.to(memory_format=torch.channels_last)
    if backend != "onnxruntime":
        return model
    if device.type != "cpu" or not _has_onnxruntime() or checkpoint is None or cache is None:
        print("note: --backend onnxruntime needs the CPU, `pip install onnxruntime onnx` and a "
              "checkpoint; running the model eagerly", file=sys.stderr)
        return model
    try:
        exported = _onnx_file(model, checkpoint, cache)
    except OSError as error:  # a full disk or a quota in the cache folder
        print(f"note: the ONNX export could not be written ({error_line(error)}); running the "
              "model eagerly", file=sys.stderr)
        return model
    try:
        fast = OnnxRuntimeModel(model, exported)
    except Exception as error:  # ONNX Runtime's errors are plain Exceptions: a damaged cached file
        exported.unlink(missing_ok=True)  # exported anew next time
        print(f"note: ONNX Runtime could not load {exported} ({error_line(error)}; removed); "
              "running the model eagerly", file=sys.stderr)
        return model
    difference = _agrees(fast, model, size)
    if not difference <= ONNX_TOLERANCE:
        print(f"note: ONNX Runtime's logits differ by {difference:.2g} of their scale; running the "
              "model eagerly", file=sys.stderr)
        return model
    return fast


def _has_onnxruntime() -> bool:
    try:
        import onnx  # noqa: F401  the exporter writes through it
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True

