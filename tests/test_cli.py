"""Command line: exit codes and messages without tracebacks, inspect, eval, and a 2-process DDP run on CPU."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import HAVE_FASHION, needs_fashion

from hintdistill.cli import main
from hintdistill.engine.checkpoint import save_model
from hintdistill.models import build_model

BIN = Path(sys.executable).parent


def cli(*args, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    """Run the installed ``hintdistill`` script (or ``python -m hintdistill.cli``) in a fresh process."""
    script = BIN / "hintdistill"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "hintdistill.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command + list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def test_run_bad_recipe_exits_2_without_traceback(tmp_path, tiny_recipe):
    tiny_recipe["distill"][0]["terms"][1]["temperature"] = 0
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(tiny_recipe))
    result = cli("run", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: invalid recipe bad.yaml:")
    assert "distill.0.terms.1.kd.temperature: Input should be greater than 0 (got 0)" in result.stderr
    assert not (tmp_path / "run").exists()  # nothing started


def test_run_errors_in_process(tmp_path, tiny_recipe, capsys):
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(tiny_recipe))
    assert main(["run", str(tmp_path / "r.yaml"), "--set", "distill.3.epochs=1"]) == 2
    assert "'3' is not a valid index of a list of 1" in capsys.readouterr().err
    tiny_recipe["student"]["name"] = "cnnn"
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(tiny_recipe))
    if HAVE_FASHION:  # the model is built once the data is found
        assert main(["run", str(tmp_path / "r.yaml")]) == 2
        assert "unknown model 'cnnn'. Closest: cnn" in capsys.readouterr().err


def test_inspect_lists_modules_with_shapes(capsys):
    assert main(["inspect", "cnn", "--input-shape", "1,28,28"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[1:] if line and not line.startswith("total")}
    # cnn defaults: widths 32, 64, 128; stage 1 keeps 28x28, each later stage halves it (pad 1, stride 2)
    assert "Sequential" in lines["features.stage1"] and "[32, 28, 28]" in lines["features.stage1"]
    assert "[64, 14, 14]" in lines["features.stage2"] and "[128, 7, 7]" in lines["features.stage3"]
    assert "[10]" in lines["classifier"] and lines["classifier"].split()[-1] == str(128 * 10 + 10)
    n = sum(p.numel() for p in build_model("cnn").parameters())
    assert f"total parameters: {n}" in out


def test_inspect_suggests_hint_guided_pairs(capsys):
    argv = ["inspect", "cnn", "--input-shape", "1,28,28", "--args", '{"widths": [32, 64, 128], "depth": 1}',
            "--student", "cnn", "--student-args", '{"widths": [8, 16, 32], "depth": 2}']
    assert main(argv) == 0
    out = capsys.readouterr().out.split("suggested hint (teacher) -> guided (student) pairs")[1]
    pairs = [line.split() for line in out.splitlines() if line.strip().startswith("hint:")]
    assert pairs
    for _, hint, _, guided, _, adapter in pairs:
        assert adapter == "conv1x1"  # widths differ: 32 vs 8, 64 vs 16, 128 vs 32
        assert hint.split(".")[:2] == guided.split(".")[:2]  # same stage: the only equal spatial sizes
    assert ["hint:", "features.stage2", "guided:", "features.stage2", "adapter:", "conv1x1"] in pairs


@pytest.mark.parametrize("argv, message", [
    (["inspect", "cnn", "--input-shape", "1,x,28"], "--input-shape expects positive integers like 1,28,28"),
    (["inspect", "cnn", "--input-shape", "0,28,28"], "got '0,28,28'"),
    (["inspect", "cnn", "--input-shape", "3,28,28"], "cannot run on an input of shape 3,28,28"),
    (["inspect", "cnn", "--input-shape", "1,28,28", "--args", "{widths: 3}"], "--args must be a JSON object"),
    (["inspect", "resnt20", "--input-shape", "3,32,32"], "unknown model 'resnt20'. Closest: resnet20"),
])
def test_inspect_bad_options_exit_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_models_lists_registry_names(capsys):
    assert main(["models"]) == 0
    names = capsys.readouterr().out.split()
    assert {"cnn", "mlp", "resnet20", "hinton_teacher", "torchvision:<name>"} <= set(names)


@needs_fashion
def test_eval_prints_accuracy_of_a_model_file(tmp_path, tiny_recipe, capsys):
    spec = {"name": "cnn", "args": {"widths": [4, 8], "depth": 1, "num_classes": 10}}
    torch.manual_seed(0)
    save_model(build_model(spec["name"], spec["args"]), spec, tmp_path / "model.pt")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(tiny_recipe))
    assert main(["eval", str(tmp_path / "r.yaml"), str(tmp_path / "model.pt")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["examples"] == 256 and result["errors"] == round(256 * (1 - result["accuracy"]))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert main(["eval", str(tmp_path / "r.yaml"), str(tmp_path / "junk.pt")]) == 2  # every user error exits 2
    assert f"checkpoint {tmp_path / 'junk.pt'} cannot be read" in capsys.readouterr().err


TORCHRUN = shutil.which("torchrun", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")


@needs_fashion
@pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed next to this Python or on PATH")
@pytest.mark.parametrize("check", ["step", "deferred"])
def test_ddp_two_processes_on_cpu(tmp_path, tiny_recipe, check):
    tiny_recipe["output_dir"] = "run"
    tiny_recipe["speed"] = {"nonfinite_check": check, "check_every": 3}  # deferred: flags all-reduced on the device
    tiny_recipe["distill"] = [
        {"name": "hint", "epochs": 1, "batch_size": 64, "trainable": "up_to_guided",
         "terms": [{"type": "hint", "hint": "features.stage2", "guided": "features.stage2"}]},
        {"name": "kd", "epochs": 1, "batch_size": 64, "terms": [{"type": "ce", "weight": 0.1}, {"type": "kd"}]}]
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_recipe))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "hintdistill.cli", "run",
                             "tiny.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "processes: 2" in result.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [r["model"] for r in summary["rows"]] == ["teacher", "distilled"]
    # only rank 0 writes: one metrics line per epoch, not one per process
    lines = (tmp_path / "run" / "distilled" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["stage"] for line in lines] == ["hint", "kd"]
    assert torch.load(tmp_path / "run" / "distilled" / "model.pt", weights_only=True)["spec"]["name"] == "cnn"
