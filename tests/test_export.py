"""hintdistill export: ONNX with a dynamic batch that onnxruntime runs like PyTorch, and clear errors."""

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from conftest import TINY_RECIPE

from hintdistill.cli import main
from hintdistill.engine.checkpoint import save_model
from hintdistill.errors import CheckpointError, ConfigError
from hintdistill.export import ExportMismatch, check_onnx, export_onnx
from hintdistill.models import build_model

CNN = {"name": "cnn", "args": {"widths": [4, 8], "depth": 1, "num_classes": 10}}


def save(spec: dict, path, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(spec["name"], spec["args"]).eval()
    save_model(model, spec, path)
    return model


def run_onnx(path, x: torch.Tensor) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})


@pytest.fixture(scope="module")
def cnn_export(tmp_path_factory):
    """A tiny cnn exported once: (model, result of export_onnx)."""
    folder = tmp_path_factory.mktemp("cnn")
    model = save(CNN, folder / "model.pt")
    return model, export_onnx(folder / "model.pt", (1, 28, 28))


def test_cnn_export_matches_pytorch_at_any_batch(cnn_export):
    model, result = cnn_export
    assert result["onnx"].endswith("model.onnx") and result["output_names"] == ["logits"]
    assert result["max_abs_diff"] <= 1e-4 and result["outputs"] == {"logits": [10]}
    assert result["size_bytes"] > 4 * sum(p.numel() for p in model.parameters())  # float32 weights inside
    assert result["onnxruntime_ms"] > 0 and result["pytorch_ms"] > 0
    for batch in (1, 5):  # the batch dimension is dynamic: neither the traced 2 nor the checked 4
        x = torch.randn(batch, 1, 28, 28)
        (got,) = run_onnx(result["onnx"], x)
        with torch.no_grad():
            np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4, rtol=1e-4)
        assert got.shape == (batch, 10)


def test_check_fails_when_the_graph_is_not_the_model(cnn_export, tmp_path):
    _, result = cnn_export
    other = save(CNN, tmp_path / "other.pt", seed=1)  # same architecture, other weights
    with pytest.raises(ExportMismatch, match="'logits' differs from PyTorch's"):
        check_onnx(other, result["onnx"], (1, 28, 28))


def test_yolo_exports_its_raw_head_maps(tmp_path):
    spec = {"name": "yolo", "args": {"num_classes": 3, "size": "n"}}
    model = save(spec, tmp_path / "yolo.pt")
    result = export_onnx(tmp_path / "yolo.pt", (3, 64, 64), tmp_path / "out" / "student.onnx")
    assert result["output_names"] == ["head0", "head1", "head2"]
    # strides 8, 16, 32 at 64 px; 3 anchors; 5 + 3 classes per anchor
    assert result["outputs"] == {"head0": [3, 8, 8, 8], "head1": [3, 4, 4, 8], "head2": [3, 2, 2, 8]}
    props = {p.key: p.value for p in onnx.load(tmp_path / "out" / "student.onnx").metadata_props}
    assert json.loads(props["anchors"]) == model.anchors.tolist() and json.loads(props["strides"]) == [8, 16, 32]
    assert json.loads(props["hintdistill.spec"]) == spec
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    for got, want in zip(run_onnx(tmp_path / "out" / "student.onnx", x), expected, strict=True):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-4)


def test_run_folder_exports_the_distilled_student_at_the_recipe_input_size(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "distilled").mkdir(parents=True)
    (run / "recipe.yaml").write_text(yaml.safe_dump(TINY_RECIPE))  # fashion_mnist: 1 x 28 x 28
    save({"name": "mlp", "args": {"hidden": [16]}}, run / "distilled" / "model.pt")  # an MLP exports fastest
    assert main(["export", str(run), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {run / 'distilled' / 'model.onnx'}" in out
    assert "input [batch, 1, 28, 28] -> logits [batch, 10]" in out
    assert "onnxruntime equals PyTorch on a batch of 4" in out and "CPU latency, batch 1" in out
    assert (run / "distilled" / "model.onnx").is_file()


def test_bad_sources_give_clear_errors(tmp_path, capsys, monkeypatch):
    with pytest.raises(CheckpointError, match="does not exist; give a run folder"):
        export_onnx(tmp_path / "missing.pt", (1, 28, 28))
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt cannot be read"):
        export_onnx(tmp_path / "junk.pt", (1, 28, 28))
    with pytest.raises(CheckpointError, match="no distilled/model.pt"):
        export_onnx(tmp_path, (1, 28, 28))  # a folder with no run in it
    save(CNN, tmp_path / "model.pt")
    with pytest.raises(ConfigError, match="give --input-shape C,H,W"):
        export_onnx(tmp_path / "model.pt")
    assert main(["export", str(tmp_path / "missing.pt")]) == 2  # a user error (RELIABILITY.md): exit 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.pt does not exist" in err and "Traceback" not in err
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the extra were not installed
    assert main(["export", str(tmp_path / "model.pt"), "--input-shape", "1,28,28"]) == 2
    assert "pip install hintdistill[export]" in capsys.readouterr().err
