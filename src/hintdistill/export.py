"""``hintdistill export``: the student alone as ONNX with a dynamic batch dimension, checked by onnxruntime.

The graph comes from ``torch.onnx.export(dynamo=True)``, the torch.export-based exporter that is the
default since PyTorch 2.9 (the TorchScript one is deprecated); it needs onnxscript. Input ``input``
``[batch, C, H, W]``; outputs ``logits`` ``[batch, classes]`` for a classifier, or a detector's raw
per-level head maps ``head0``, ``head1``, ``head2`` ``[batch, anchors, H/s, W/s, 5 + classes]`` (strides
8, 16, 32; undecoded, as ``YOLO.forward`` returns them; the anchors, strides and box decoding are in
the file's metadata). After writing, the file is run by onnxruntime
on a random test batch: every output must equal PyTorch's within 1e-4 (absolute, plus 1e-4 relative),
and batch 1 must run too (the batch dimension is really dynamic).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from .detection.heads import DECODING_FORMULAS, model_heads
from .errors import CheckpointError, ConfigError, HintDistillError, ShapeError
from .metrics import median_ms

TOLERANCE = 1e-4
EXTRA = "pip install hintdistill[export]"


class ExportMismatch(HintDistillError):
    """onnxruntime's outputs differ from PyTorch's: the exported graph is not the model."""


def _require_onnx():
    """onnxruntime (onnx and onnxscript are imported by torch's exporter), with the extra to install."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"hintdistill export needs onnx, onnxruntime and onnxscript ({e.name} is missing): "
                          f"{EXTRA}") from None
    return onnxruntime


def find_model_file(path: str | Path) -> Path:
    """A run folder's distilled ``model.pt``, or the given ``model.pt`` / ``checkpoint.pt`` itself."""
    path = Path(path)
    if path.is_dir():
        from .run_folder import Run

        model_file = Run(path).phases["distilled"]
        if model_file.name != "model.pt":
            raise CheckpointError(f"{path}'s distilled phase is unfinished (only {model_file} exists): rerun "
                                  f"`hintdistill run` to finish it, or export that checkpoint.pt explicitly")
        return model_file
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; give a run folder written by `hintdistill run` or a "
                              f"model.pt inside one (e.g. runs/demo/distilled/model.pt)")
    return path


def default_input_shape(model_file: Path, model: nn.Module) -> tuple[int, ...]:
    """C,H,W from the recipe.yaml of the run the model.pt lies in (RUN/<phase>/model.pt)."""
    from .config import load_recipe
    from .run_folder import _in_channels

    recipe_file = model_file.parent.parent / "recipe.yaml"
    if not recipe_file.is_file():
        raise ConfigError(f"{model_file} is not inside a run folder with a recipe.yaml, so its input size is "
                          f"unknown: give --input-shape C,H,W (e.g. 3,224,224)")
    recipe = load_recipe(recipe_file)
    size = {"mnist": 28, "fashion_mnist": 28, "cifar10": 32, "cifar100": 32}.get(recipe.data.name,
                                                                               recipe.data.image_size)
    return (3 if recipe.task == "detection" else _in_channels(model), size, size)


def _as_list(out) -> list[torch.Tensor]:
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    if not all(isinstance(t, torch.Tensor) for t in outs):
        raise ShapeError(f"the model returns {type(out).__name__}; export handles a tensor (logits) or a list "
                         f"of tensors (a detector's head maps)")
    return outs


def metadata(model: nn.Module, spec: dict) -> dict[str, str]:
    """What a deployment needs beside the graph: the model spec; for a detector its heads (strides, anchors,
    box decoding), and the yolo family's ``anchors`` / ``strides`` tensors as before."""
    props = {"hintdistill.spec": json.dumps(spec)}
    heads = model_heads(model)
    if not heads:
        return props
    props["heads"] = json.dumps([{"stride": h.stride, "anchors": [list(a) for a in h.anchors],
                                  "decoding": h.decoding, "scale_x_y": h.scale_x_y} for h in heads])
    props["box_decoding"] = "; ".join(f"{d}: {DECODING_FORMULAS[d]}" for d in dict.fromkeys(h.decoding for h in heads))
    anchors, strides = getattr(model, "anchors", None), getattr(model, "strides", None)
    if isinstance(anchors, torch.Tensor) and isinstance(strides, torch.Tensor):
        props.update({"anchors": json.dumps(anchors.tolist()), "strides": json.dumps(strides.tolist())})
    return props


def write_onnx(model: nn.Module, input_shape: tuple[int, ...], output: Path,
               props: dict[str, str] | None = None) -> list[str]:
    """Export ``model`` (eval mode) with a dynamic batch and ``props`` as metadata; written atomically;
    returns the output names."""
    model.eval()
    x = torch.randn(2, *input_shape)  # batch 2: a traced batch of 1 would be specialized into the graph
    with torch.no_grad():
        n_out = len(_as_list(model(x)))
    names = ["logits"] if n_out == 1 else [f"head{i}" for i in range(n_out)]
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    os.close(fd)
    try:
        log = io.StringIO()
        with contextlib.redirect_stdout(log):  # the exporter narrates each of its steps
            torch.onnx.export(model, (x,), tmp, dynamo=True, external_data=False, input_names=["input"],
                              output_names=names, dynamic_shapes=({0: torch.export.Dim("batch")},))
        if props:
            import onnx

            graph = onnx.load(tmp)
            onnx.helper.set_model_props(graph, props)
            onnx.save(graph, tmp)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the model from the service that deploys it
        os.replace(tmp, output)
    except Exception as e:
        raise ShapeError(f"torch.onnx.export could not export {type(model).__name__} "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return names


def check_onnx(model: nn.Module, path: Path, input_shape: tuple[int, ...], batch: int = 4,
               iters: int = 20) -> dict:
    """onnxruntime against PyTorch: max difference on a test batch, and median CPU latency at batch 1."""
    ort = _require_onnx()
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same threads as PyTorch: a fair comparison
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    dims = session.get_inputs()[0].shape
    if isinstance(dims[0], int):
        raise ExportMismatch(f"{path}: the input's batch dimension is fixed at {dims[0]}, not dynamic")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *input_shape, generator=gen)
    model = model.cpu().eval()
    with torch.no_grad():
        expected = [t.numpy() for t in _as_list(model(x))]
    got = session.run(None, {"input": x.numpy()})
    diff = max(float(abs(g - e).max()) for g, e in zip(got, expected, strict=True))
    for name, g, e in zip((o.name for o in session.get_outputs()), got, expected, strict=True):
        if g.shape != e.shape or not (abs(g - e) <= TOLERANCE + TOLERANCE * abs(e)).all():
            raise ExportMismatch(f"{path}: onnxruntime's '{name}' differs from PyTorch's (shapes {g.shape} vs "
                                 f"{e.shape}, max |difference| {float(abs(g - e).max()):.3g} > {TOLERANCE}); "
                                 f"the file is kept, but do not deploy it")
    one = x[:1].numpy()
    with torch.no_grad():
        torch_ms = median_ms(lambda: model(x[:1]), iters=iters)
    return {"max_abs_diff": diff, "check_batch": batch, "onnxruntime_ms": median_ms(
        lambda: session.run(None, {"input": one}), iters=iters), "pytorch_ms": torch_ms,
        "outputs": {o.name: list(r.shape[1:]) for o, r in zip(session.get_outputs(), got, strict=True)}}


def export_onnx(source: str | Path, input_shape: tuple[int, ...] | None = None,
                output: str | Path | None = None) -> dict:
    """Write the student of a run folder (or a model.pt) as ONNX, check it, and report size and latency."""
    from .engine.checkpoint import load_model

    _require_onnx()
    model_file = find_model_file(source)
    model, ckpt = load_model(model_file)
    model.eval()
    shape = tuple(input_shape) if input_shape else default_input_shape(model_file, model)
    out = Path(output) if output else model_file.with_suffix(".onnx")
    names = write_onnx(model, shape, out, metadata(model, ckpt["spec"]))
    result = {"source": str(model_file), "onnx": str(out), "input_shape": list(shape), "output_names": names,
              "size_bytes": out.stat().st_size}
    return {**result, **check_onnx(model, out, shape)}


def describe(result: dict) -> str:
    """The lines `hintdistill export` prints."""
    outs = ", ".join(f"{k} [batch, {', '.join(map(str, v))}]" for k, v in result["outputs"].items())
    shape = ", ".join(map(str, result["input_shape"]))
    return "\n".join([
        f"wrote {result['onnx']} ({result['size_bytes'] / 1e6:.2f} MB) from {result['source']}",
        f"  input [batch, {shape}] -> {outs}",
        f"  check: onnxruntime equals PyTorch on a batch of {result['check_batch']} "
        f"(max |difference| {result['max_abs_diff']:.2g} <= {TOLERANCE})",
        f"  CPU latency, batch 1, median: onnxruntime {result['onnxruntime_ms']:.3f} ms, "
        f"PyTorch {result['pytorch_ms']:.3f} ms ({torch.get_num_threads()} threads)",
    ])
