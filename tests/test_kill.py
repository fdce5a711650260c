"""kill -9 of a real ``hintdistill run`` at several points (issue 12): in each phase (teacher, baseline, distilled)
and in the middle of a checkpoint write; every rerun resumes, and the last one ends with the uninterrupted run's
exact weights, metrics.jsonl and summary numbers."""

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from conftest import SGD, TINY_RECIPE, needs_fashion

import hintdistill.report
from hintdistill.cli import main
from hintdistill.engine.checkpoint import TEST_DELAY, safe_load
from hintdistill.engine.logging import read_metrics

pytestmark = needs_fashion

SRC = Path(__file__).resolve().parents[1] / "src"
PHASES = ("teacher", "baseline", "distilled")


def recipe(tmp_path: Path) -> Path:
    """Three phases of 3 epochs each (8 steps of 64 images); dropout, so the resumed RNG matters."""
    tree = copy.deepcopy(TINY_RECIPE)
    train = {"epochs": 3, "batch_size": 64, "optimizer": SGD}
    tree["teacher"]["train"] = train
    tree["baseline"] = train
    tree["student"]["args"]["dropout"] = 0.3
    tree["distill"][0]["epochs"] = 3
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def launch(recipe_path: Path, out: Path, delay: float | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop(TEST_DELAY, None)
    if delay is not None:
        env[TEST_DELAY] = str(delay)
    return subprocess.Popen([sys.executable, "-m", "hintdistill.cli", "run", str(recipe_path), "--output-dir",
                             str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def kill_after_line(proc: subprocess.Popen, prefix: str) -> None:
    """SIGKILL as soon as the run prints a line starting with ``prefix`` (an epoch finished)."""
    for line in proc.stdout:
        if line.startswith(prefix):
            proc.send_signal(signal.SIGKILL)
            break
    assert proc.wait(timeout=120) == -signal.SIGKILL, f"the run ended before printing {prefix!r}"
    proc.stdout.close()


def kill_during_write(proc: subprocess.Popen, out: Path, timeout: float = 60, stale: frozenset = frozenset()) -> Path:
    """SIGKILL while a checkpoint's temp file exists (the save is held open by the test delay); ``stale``: temp
    files an earlier kill left behind, which the run deletes when it opens their phase (not this save's)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        temps = [t for t in out.glob("*/.checkpoint.pt.*.tmp") if t not in stale]
        if temps:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            proc.stdout.close()
            return temps[0]
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("no checkpoint write was seen")


def finish(recipe_path: Path, out: Path) -> str:
    proc = launch(recipe_path, out)
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, text
    return text


def state(out: Path, phase: str) -> dict | None:
    path = out / phase / "checkpoint.pt"
    return safe_load(path) if path.is_file() else None


def results(out: Path) -> dict:
    """What must not depend on the kills: each phase's weights, its epoch records and its test numbers."""
    summary = yaml.safe_load((out / "summary.json").read_text())
    return {phase: {"weights": torch.load(out / phase / "model.pt", weights_only=True)["state_dict"],
                    "records": [{k: v for k, v in r.items() if k != "epoch_s"}
                                for r in read_metrics(out / phase / "metrics.jsonl")],
                    "row": {k: v for k, v in next(r for r in summary["rows"] if r["model"] == phase).items()
                            if k in ("accuracy", "errors", "examples", "params")}}
            for phase in PHASES}


def assert_same(a: dict, b: dict) -> None:
    for phase in PHASES:
        assert a[phase]["records"] == b[phase]["records"], phase
        assert a[phase]["row"] == b[phase]["row"], phase
        wa, wb = a[phase]["weights"], b[phase]["weights"]
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), phase


def test_kill_9_in_every_phase_and_during_a_checkpoint_write(tmp_path, monkeypatch):
    path = recipe(tmp_path)
    # the reference runs in this process (one start of Python and torch less); report.html is not compared
    monkeypatch.setattr(hintdistill.report, "write_report", lambda run_dir: run_dir / "report.html")
    assert main(["run", str(path), "--output-dir", str(tmp_path / "reference")]) == 0
    expected = results(tmp_path / "reference")
    out = tmp_path / "killed"

    kill_after_line(launch(path, out), "[teacher/train] epoch 1/3")
    assert_killed_in(out, "teacher")
    kill_after_line(launch(path, out), "[baseline/train] epoch 1/3")
    assert_killed_in(out, "baseline")
    # the resumed baseline's next save is held open: kill -9 with its temp file half written
    before = (out / "baseline" / "checkpoint.pt").read_bytes() if state(out, "baseline") else None
    stale = frozenset(out.glob("*/.checkpoint.pt.*.tmp"))  # a kill -9 during an earlier save may have left one
    temp = kill_during_write(launch(path, out, delay=30), out, stale=stale)
    assert temp.parent.name == "baseline" and temp.name.startswith(".checkpoint.pt.")
    after = out / "baseline" / "checkpoint.pt"
    assert (after.read_bytes() if after.is_file() else None) == before  # the old checkpoint, byte for byte
    kill_after_line(launch(path, out), "[distilled/kd] epoch 1/3")
    assert_killed_in(out, "distilled")

    finish(path, out)
    assert_same(results(out), expected)


def assert_killed_in(out: Path, phase: str) -> None:
    """The kill landed in ``phase``: it is not finished (no model.pt), every phase before it is."""
    killed = state(out, phase)
    assert not (out / phase / "model.pt").exists() and (killed is None or killed["done"] is False), phase
    assert all(state(out, p)["done"] for p in PHASES[: PHASES.index(phase)])
