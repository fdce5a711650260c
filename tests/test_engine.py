"""The engine on tiny real data (512 Fashion-MNIST images): outputs, resume, skip, NaN guard, bad checkpoints."""

import copy
import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import SGD, needs_fashion

import hintdistill.report
from hintdistill.build import build_data
from hintdistill.config import recipe_from_dict
from hintdistill.distiller import Distiller
from hintdistill.engine import stage as engine_stage
from hintdistill.engine.checkpoint import load_model, safe_load, save_model
from hintdistill.engine.interrupt import STOP, stop_at_step_boundary
from hintdistill.engine.logging import read_metrics
from hintdistill.engine.pipeline import run_recipe
from hintdistill.engine.stage import Stage
from hintdistill.errors import CheckpointError, ConfigError, Interrupted, ShapeError, TrainingDiverged
from hintdistill.metrics import evaluate_classifier
from hintdistill.models import build_model
from hintdistill.terms import SoftTargetKD

pytestmark = needs_fashion

STEPS_PER_EPOCH = 512 // 64
TEACHER_SPEC = {"name": "cnn", "args": {"widths": [8, 16], "depth": 1, "first_stride": 2, "num_classes": 10}}


class Crash(Exception):
    """Stands for a process killed in the middle of an epoch."""


@pytest.fixture
def no_report(monkeypatch):
    # report.html draws matplotlib figures (seconds per run) and has its own tests
    monkeypatch.setattr(hintdistill.report, "write_report", lambda run_dir: run_dir / "report.html")


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    """A fixed (untrained) teacher as a model.pt, so resume tests train the student only."""
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("teacher") / "model.pt"
    save_model(build_model(TEACHER_SPEC["name"], TEACHER_SPEC["args"]), TEACHER_SPEC, path)
    return str(path)


def run(tree, log=None):
    lines = [] if log is None else log
    summary = run_recipe(recipe_from_dict(tree), log=lines.append)
    return summary, lines


def fitnets(tree):
    """Stage 1: hint on the student up to features.stage2; stage 2: CE + KD (weight annealed) + dropout."""
    tree["student"]["args"]["dropout"] = 0.3  # draws from the global RNG every step: resume must restore it
    tree["distill"] = [
        {"name": "hint", "epochs": 1, "batch_size": 64, "optimizer": SGD, "trainable": "up_to_guided",
         "terms": [{"type": "hint", "hint": "features.stage2", "guided": "features.stage2"}]},
        {"name": "kd", "epochs": 2, "batch_size": 64, "optimizer": SGD,
         "terms": [{"type": "ce", "weight": 0.1},
                   {"type": "kd", "temperature": 4.0, "weight": {"start": 4.0, "end": 1.0, "epochs": 2}}]},
    ]
    return tree


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_full_run_outputs_then_rerun_skips_finished_phases(tiny_recipe, no_report):
    tree = fitnets(tiny_recipe)
    tree["baseline"] = {"epochs": 1, "batch_size": 64, "optimizer": SGD}
    summary, _ = run(tree)
    out = Path(tiny_recipe["output_dir"])
    rows = {r["model"]: r for r in summary["rows"]}
    assert list(rows) == ["teacher", "baseline", "distilled"]
    assert json.loads((out / "summary.json").read_text())["rows"] == summary["rows"]
    table = (out / "summary.md").read_text()
    assert "| model | architecture | test acc | test errors |" in table and "| distilled | cnn |" in table

    # model.pt: the student alone, loadable with weights_only=True, no adapter inside
    student = build_model("cnn", {"widths": [4, 8], "depth": 1, "first_stride": 2, "num_classes": 10, "dropout": 0.3})
    ckpt = torch.load(out / "distilled" / "model.pt", map_location="cpu", weights_only=True)
    assert set(ckpt) == {"spec", "state_dict"}
    assert list(ckpt["state_dict"]) == list(student.state_dict())
    assert not any("adapter" in k for k in ckpt["state_dict"])
    model, _ = load_model(out / "distilled" / "model.pt")
    data = build_data(recipe_from_dict(tree))
    metrics = evaluate_classifier(model, data.test_loader, torch.device("cpu"))
    assert metrics["examples"] == 256
    assert metrics["accuracy"] == rows["distilled"]["accuracy"] and metrics["errors"] == rows["distilled"]["errors"]
    assert rows["distilled"]["params"] == sum(p.numel() for p in student.parameters())

    # metrics.jsonl: one line per epoch, stage by stage, with the annealed KD weight
    lines = read_metrics(out / "distilled" / "metrics.jsonl")
    assert [(r["stage"], r["epoch"]) for r in lines] == [("hint", 1), ("kd", 2), ("kd", 3)]
    assert "train/hint" in lines[0] and "train/kd" in lines[1] and "test/accuracy" in lines[2]
    # the weight of the epoch's last step (stage epoch 0 + 7/8, then 1 + 7/8): 4 - 3 · 0.875 / 2; 4 - 3 · 1.875 / 2
    assert (lines[1]["weight/kd"], lines[2]["weight/kd"]) == (2.6875, 1.1875)
    assert all(math.isfinite(r["train/loss"]) for r in lines)
    assert len(read_metrics(out / "teacher" / "metrics.jsonl")) == 1
    assert len(read_metrics(out / "baseline" / "metrics.jsonl")) == 1
    assert safe_load(out / "distilled" / "checkpoint.pt")["done"] is True

    # rerun: every phase is finished, nothing is trained or rewritten
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("*/model.pt")}
    summary2, log = run(tree)
    assert sum("finished earlier" in line for line in log) == 3
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/model.pt")} == stamp
    assert len(read_metrics(out / "distilled" / "metrics.jsonl")) == 3
    assert [r["accuracy"] for r in summary2["rows"]] == [r["accuracy"] for r in summary["rows"]]

    # a changed recipe in the same folder is refused, not silently answered with the old results, and the
    # folder's recipe.yaml still describes the run it holds
    recorded = (out / "recipe.yaml").read_text()
    tree["distill"][1]["epochs"] = 3
    with pytest.raises(ConfigError) as err:
        run(tree)
    assert "'distilled' phase trained with other settings" in str(err.value) and "--output-dir" in str(err.value)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/model.pt")} == stamp
    assert (out / "recipe.yaml").read_text() == recorded


def crash_at(monkeypatch, call: int):
    """Make the Distiller's ``call``-th training step (1-based) raise Crash."""
    forward = Distiller.forward
    calls = {"n": 0}

    def counting(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise Crash(f"simulated kill at step {call}")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Distiller, "forward", counting)


@pytest.mark.parametrize("crash_step, resumed_at", [
    (STEPS_PER_EPOCH * 2 + 4, "[distilled/kd] resuming from"),         # mid stage 2, epoch 2: epoch checkpoint
    (STEPS_PER_EPOCH + 4, None),                                        # mid stage 2, epoch 1: stage boundary
])
def test_resume_after_a_crash_gives_the_same_weights(tmp_path, tiny_recipe, teacher_checkpoint, monkeypatch,
                                                     no_report, crash_step, resumed_at):
    tiny_recipe["teacher"].update(checkpoint=teacher_checkpoint, args=TEACHER_SPEC["args"])
    reference = fitnets(tiny_recipe)
    run(reference)
    expected = weights(tmp_path / "run" / "distilled" / "model.pt")

    reference["output_dir"] = str(tmp_path / "crashed")
    with monkeypatch.context() as m:
        crash_at(m, crash_step)
        with pytest.raises(Crash):
            run(reference)
    assert not (tmp_path / "crashed" / "distilled" / "model.pt").exists()
    _, log = run(reference)
    if resumed_at:
        assert any(line.startswith(resumed_at) and "at epoch 1" in line for line in log)
    assert_same_weights(weights(tmp_path / "crashed" / "distilled" / "model.pt"), expected)
    epochs = [r["epoch"] for r in read_metrics(tmp_path / "crashed" / "distilled" / "metrics.jsonl")]
    assert epochs[-1] == 3 and sorted(set(epochs)) == [1, 2, 3]


def signal_at(monkeypatch, call: int, signum: int):
    """Send ``signum`` to this process during the ``call``-th training step (1-based), as Ctrl-C or kill would."""
    step = Stage.step
    calls = {"n": 0}

    def signalling(self, *args):
        calls["n"] += 1
        if calls["n"] == call:
            os.kill(os.getpid(), signum)
        return step(self, *args)

    monkeypatch.setattr(Stage, "step", signalling)


def numbers(path):
    """metrics.jsonl without the wall-clock times."""
    return [{k: v for k, v in r.items() if k != "epoch_s"} for r in read_metrics(path)]


def run_then_aim_at_stopped(tmp_path, tiny_recipe, teacher_checkpoint):
    """The FitNets tree run uninterrupted (its weights expected of any resumed run), then pointed at ``stopped``."""
    tiny_recipe["teacher"].update(checkpoint=teacher_checkpoint, args=TEACHER_SPEC["args"])
    tree = fitnets(tiny_recipe)
    run(tree)
    expected = weights(tmp_path / "run" / "distilled" / "model.pt")
    tree["output_dir"] = str(tmp_path / "stopped")
    return tree, expected, tmp_path / "stopped" / "distilled" / "checkpoint.pt"


def assert_resumes_to_the_same_numbers(tmp_path, tree, ckpt, expected, epoch: int, step: int):
    _, log = run(tree)
    assert any(f"resuming from {ckpt} at epoch {epoch}, step {step}" in line for line in log)
    assert_same_weights(weights(tmp_path / "stopped" / "distilled" / "model.pt"), expected)
    assert numbers(tmp_path / "stopped" / "distilled" / "metrics.jsonl") == \
        numbers(tmp_path / "run" / "distilled" / "metrics.jsonl")


@pytest.mark.parametrize("call, signum, stopped", [
    (4, signal.SIGTERM, "[distilled/hint] stopped by SIGTERM after epoch 1, step 4/8"),    # stage 1, epoch 1
    (STEPS_PER_EPOCH * 2 + 3, signal.SIGINT, "[distilled/kd] stopped by SIGINT after epoch 2, step 3/8"),
])
def test_signal_saves_at_the_step_boundary_and_resumes_to_the_same_numbers(
        tmp_path, tiny_recipe, teacher_checkpoint, monkeypatch, no_report, call, signum, stopped):
    tree, expected, ckpt = run_then_aim_at_stopped(tmp_path, tiny_recipe, teacher_checkpoint)
    with monkeypatch.context() as m, stop_at_step_boundary():
        signal_at(m, call, signum)
        with pytest.raises(Interrupted) as err:
            run(tree)
    assert str(err.value) == f"{stopped}; saved {ckpt}" and err.value.exit_code == 128 + signum
    assert signal.getsignal(signum) is not None and STOP.signum is None  # handlers and flag put back
    state = safe_load(ckpt)
    epoch, step = (0, 4) if call == 4 else (1, 3)
    assert (state["stage"], state["epoch"], state["step"]) == ((0 if call == 4 else 1), epoch, step)
    assert_resumes_to_the_same_numbers(tmp_path, tree, ckpt, expected, epoch, step)


def test_a_stop_during_a_test_pass_whose_loader_dies_saves_the_epoch_and_resumes_to_the_same_numbers(
        tmp_path, tiny_recipe, teacher_checkpoint, monkeypatch, no_report):
    # SIGTERM to the process group (kill -- -PGID, a scheduler) during a test pass: the test loader's workers die
    # with the main process's request, and the loader fails; the stage saves its finished epoch instead of crashing
    tree, expected, ckpt = run_then_aim_at_stopped(tmp_path, tiny_recipe, teacher_checkpoint)
    evaluate, calls = Stage.evaluate, {"n": 0}

    def dying_test_pass(self, epoch):
        calls["n"] += 1
        if self.label == "distilled/kd" and epoch == 0:
            os.kill(os.getpid(), signal.SIGTERM)
            raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Terminated.")
        return evaluate(self, epoch)

    with monkeypatch.context() as m, stop_at_step_boundary():
        m.setattr(Stage, "evaluate", dying_test_pass)
        with pytest.raises(Interrupted) as err:
            run(tree)
    assert str(err.value) == f"[distilled/kd] stopped by SIGTERM after epoch 1, step 8/8; saved {ckpt}"
    assert err.value.exit_code == 143
    state = safe_load(ckpt)
    assert (state["stage"], state["epoch"], state["step"]) == (1, 0, STEPS_PER_EPOCH)
    # resumes at the end of the epoch: tests it, then goes on
    assert_resumes_to_the_same_numbers(tmp_path, tree, ckpt, expected, 0, STEPS_PER_EPOCH)


def test_a_failure_after_a_stop_request_ends_the_run_as_stopped_not_as_a_bug():
    # outside any stage's boundary (a teacher's evaluation, the report): the run ends as stopped, with the cause
    with pytest.raises(Interrupted, match=r"stopped by SIGTERM before the next step boundary \(RuntimeError: "
                                          r"worker gone\); the last saved checkpoint is kept") as err:
        with stop_at_step_boundary():
            os.kill(os.getpid(), signal.SIGTERM)
            raise RuntimeError("worker gone")
    assert err.value.exit_code == 143
    with pytest.raises(RuntimeError, match="a real bug"), stop_at_step_boundary():
        raise RuntimeError("a real bug")  # no stop asked: the error is the error


def test_sigterm_through_the_command_line_exits_143_with_the_command_to_resume(tmp_path, tiny_recipe,
                                                                              teacher_checkpoint, monkeypatch,
                                                                              no_report, capsys):
    import yaml

    from hintdistill.cli import main

    tiny_recipe["teacher"].update(checkpoint=teacher_checkpoint, args=TEACHER_SPEC["args"])
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe))
    signal_at(monkeypatch, 3, signal.SIGTERM)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["run", str(path), "--set", "seed=0"]) == 143
    err = capsys.readouterr().err
    ckpt = tmp_path / "run" / "distilled" / "checkpoint.pt"
    assert err == (f"interrupted: [distilled/kd] stopped by SIGTERM after epoch 1, step 3/8; saved {ckpt}. Rerun the "
                   f"same command to resume from there with the same numbers as an uninterrupted run:\n"
                   f"  hintdistill run {path} --set seed=0\n")
    assert signal.getsignal(signal.SIGTERM) is before  # the handlers are the run's only


def poison(monkeypatch, what: str, from_step: int, to_step: int = 99):
    """Make the distilled stage's epoch 2 non-finite from step ``from_step`` to ``to_step`` (0-based): its input
    batch (``what="input"``) or its KD term (``what="kd"``, infinite)."""
    step, forward = Stage.step, SoftTargetKD.forward
    now = {"kd": False}

    def poisoned_step(self, epoch, s, x, y):
        bad = self.label == "distilled/kd" and epoch == 1 and from_step <= s <= to_step
        if bad and what == "input":
            x = x.clone()
            x[0, 0, 0, 0] = float("nan")
        now["kd"] = bad and what == "kd"
        return step(self, epoch, s, x, y)

    def kd(self, *args, **kwargs):
        value = forward(self, *args, **kwargs)
        return value * float("inf") if now["kd"] else value

    monkeypatch.setattr(Stage, "step", poisoned_step)
    monkeypatch.setattr(SoftTargetKD, "forward", kd)


@pytest.mark.parametrize("what, source, advice", [
    ("kd", "term 'kd'", "Lower the learning rate (0.05) or the weight of term 'kd'"),
    ("input", "the input batch", "so the learning rate is not the cause: check the data"),
])
def test_non_finite_steps_in_a_row_stop_with_the_last_good_checkpoint(tmp_path, tiny_recipe, teacher_checkpoint,
                                                                      monkeypatch, no_report, what, source, advice):
    tiny_recipe["teacher"].update(checkpoint=teacher_checkpoint, args=TEACHER_SPEC["args"])
    tiny_recipe["distill"][0]["max_nonfinite_steps"] = 3
    with monkeypatch.context() as m:
        poison(m, what, from_step=2)
        lines: list[str] = []
        with pytest.raises(TrainingDiverged) as err:
            run(tiny_recipe, lines)
    ckpt_path = tmp_path / "run" / "distilled" / "checkpoint.pt"
    message = str(err.value)
    assert message.startswith("[distilled/kd] 3 steps in a row were non-finite (max_nonfinite_steps: 3), the last "
                              f"at epoch 2, step 5/8: {source} (")
    assert f"the last good checkpoint is kept at {ckpt_path}" in message and advice in message
    assert ("Lower the learning rate" in message) == (what == "kd")
    skipped = [line for line in lines if "step skipped" in line]
    assert skipped == [f"[distilled/kd] epoch 2, step {s}/8: {source} non-finite, step skipped ({n} in a row; the "
                       f"stage stops at 3)" for n, s in ((1, 3), (2, 4), (3, 5))]
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert state["epoch"] == 1 and state["done"] is False
    assert all(torch.isfinite(v).all() for v in state["student"].values() if v.is_floating_point())

    _, log = run(tiny_recipe)  # the data or the term fixed: the same command resumes
    assert any("resuming from" in line and "at epoch 1" in line for line in log)
    assert (tmp_path / "run" / "distilled" / "model.pt").is_file()


def test_sporadic_non_finite_steps_are_skipped_and_counted(tmp_path, tiny_recipe, teacher_checkpoint,
                                                           monkeypatch, no_report):
    tiny_recipe["teacher"].update(checkpoint=teacher_checkpoint, args=TEACHER_SPEC["args"])
    clean = copy.deepcopy(tiny_recipe)
    clean["output_dir"] = str(tmp_path / "clean")
    run(clean)
    poison(monkeypatch, "kd", from_step=3, to_step=4)
    _, lines = run(tiny_recipe)
    records = read_metrics(tmp_path / "run" / "distilled" / "metrics.jsonl")
    assert [r["nonfinite_steps"] for r in records] == [0, 2]
    assert "[distilled/kd] epoch 2: 2 non-finite steps skipped" in lines
    assert all(math.isfinite(v) for r in records for k, v in r.items() if k.startswith("train/"))
    # epoch 1 is the same as a clean run's: the skipped steps come after it
    first = read_metrics(tmp_path / "clean" / "distilled" / "metrics.jsonl")[0]
    assert records[0]["train/loss"] == first["train/loss"]
    assert records[1]["train/loss"] != read_metrics(tmp_path / "clean" / "distilled" / "metrics.jsonl")[1]["train/loss"]


HOST_READS = ("__float__", "__int__", "__bool__", "item", "tolist")  # each one a host sync on a GPU


def count_host_reads(monkeypatch, label: str = "distilled/kd") -> dict[str, int]:
    """Count the scalar reads that the steps of stage ``label`` make (not those of the loader or the cache)."""
    count, inside = {"n": 0}, {"on": False}
    for name in HOST_READS:
        def counted(self, *args, _original=getattr(torch.Tensor, name), **kwargs):
            count["n"] += inside["on"]
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    step = Stage.step

    def watched(self, *args):
        inside["on"] = self.label == label
        try:
            return step(self, *args)
        finally:
            inside["on"] = False

    monkeypatch.setattr(Stage, "step", watched)
    return count


def fused_everywhere(monkeypatch) -> None:
    """The step check with the fused optimizer the deferred one needs: the fused SGD kernel rounds the update
    differently from the per-tensor one (1e-9 on a bias here), so only then are the two checks' runs equal."""
    make = engine_stage.make_optimizer
    monkeypatch.setattr(engine_stage, "make_optimizer", lambda cfg, params, fused=False: make(cfg, params, True))


def deferred(tree: dict, folder: Path, **speed) -> dict:
    """``tree`` with the deferred non-finite check, writing to ``folder``."""
    tree = copy.deepcopy(tree)
    tree.update(output_dir=str(folder), speed={"nonfinite_check": "deferred", **speed})
    return tree


def test_deferred_check_trains_the_same_numbers_without_a_host_read_per_step(tmp_path, tiny_recipe,
                                                                            teacher_checkpoint, monkeypatch,
                                                                            no_report):
    tiny_recipe["teacher"].update(checkpoint=teacher_checkpoint, args=TEACHER_SPEC["args"])
    reads = count_host_reads(monkeypatch)
    run(deferred(tiny_recipe, tmp_path / "deferred"))
    assert reads["n"] == 0
    fused_everywhere(monkeypatch)
    run(tiny_recipe)
    assert reads["n"] == 3 * 2 * STEPS_PER_EPOCH  # the input, the loss and the gradients' flag, every step
    assert numbers(tmp_path / "deferred" / "distilled" / "metrics.jsonl") == \
        numbers(tmp_path / "run" / "distilled" / "metrics.jsonl")
    assert_same_weights(weights(tmp_path / "deferred" / "distilled" / "model.pt"),
                        weights(tmp_path / "run" / "distilled" / "model.pt"))


@pytest.mark.parametrize("what", ["kd", "input"])
def test_deferred_check_skips_the_steps_the_step_check_skips(tmp_path, tiny_recipe, teacher_checkpoint,
                                                             monkeypatch, no_report, what):
    """A constant LR (the deferred check's schedule advances on a skipped step): the same weights, batch-norm
    statistics and logged means, with two steps of epoch 2 skipped by each check."""
    tiny_recipe["teacher"].update(checkpoint=teacher_checkpoint, args=TEACHER_SPEC["args"])
    tiny_recipe["distill"][0]["schedule"] = {"name": "none"}
    poison(monkeypatch, what, from_step=3, to_step=4)
    with monkeypatch.context() as m:
        fused_everywhere(m)
        run(tiny_recipe)
    _, lines = run(deferred(tiny_recipe, tmp_path / "deferred"))
    records = read_metrics(tmp_path / "deferred" / "distilled" / "metrics.jsonl")
    assert [r["nonfinite_steps"] for r in records] == [0, 2]
    assert "[distilled/kd] epoch 2, steps 1-8/8: 2 non-finite (the loss or the gradients), skipped (0 in a row " \
           "at step 8; the stage stops at 20)" in lines
    assert numbers(tmp_path / "deferred" / "distilled" / "metrics.jsonl") == \
        numbers(tmp_path / "run" / "distilled" / "metrics.jsonl")
    assert_same_weights(weights(tmp_path / "deferred" / "distilled" / "model.pt"),
                        weights(tmp_path / "run" / "distilled" / "model.pt"))


def test_deferred_check_stops_at_the_read_after_too_many_in_a_row(tmp_path, tiny_recipe, teacher_checkpoint,
                                                                  monkeypatch, no_report):
    tiny_recipe["teacher"].update(checkpoint=teacher_checkpoint, args=TEACHER_SPEC["args"])
    tiny_recipe["distill"][0]["max_nonfinite_steps"] = 3
    tree = deferred(tiny_recipe, tmp_path / "run", check_every=2)
    lines: list[str] = []
    with monkeypatch.context() as m:
        poison(m, "input", from_step=2)
        with pytest.raises(TrainingDiverged) as err:
            run(tree, lines)
    ckpt_path = tmp_path / "run" / "distilled" / "checkpoint.pt"
    assert str(err.value).startswith("[distilled/kd] 4 steps in a row were non-finite (max_nonfinite_steps: 3), the "
                                     "last at epoch 2, step 6/8: the loss or the gradients (found by the deferred "
                                     f"check). Training stopped; the last good checkpoint is kept at {ckpt_path}.")
    assert [line for line in lines if "non-finite (" in line] == [
        f"[distilled/kd] epoch 2, steps {a}-{b}/8: 2 non-finite (the loss or the gradients), skipped ({n} in a row "
        f"at step {b}; the stage stops at 3)" for a, b, n in ((3, 4, 2), (5, 6, 4))]
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["student"].values()
                                       if v.is_floating_point())
    _, log = run(tree)  # the data fixed: the same command resumes
    assert any("resuming from" in line and "at epoch 1" in line for line in log)


def test_deferred_check_resumes_a_stopped_epoch_with_its_skipped_steps(tmp_path, tiny_recipe, teacher_checkpoint,
                                                                       monkeypatch, no_report):
    tiny_recipe["teacher"].update(checkpoint=teacher_checkpoint, args=TEACHER_SPEC["args"])
    poison(monkeypatch, "kd", from_step=1, to_step=2)
    whole = deferred(tiny_recipe, tmp_path / "run")
    run(whole)
    stopped = deferred(tiny_recipe, tmp_path / "stopped")
    with monkeypatch.context() as m, stop_at_step_boundary():
        signal_at(m, STEPS_PER_EPOCH + 4, signal.SIGTERM)  # after two skipped steps of epoch 2
        with pytest.raises(Interrupted):
            run(stopped)
    partial = safe_load(tmp_path / "stopped" / "distilled" / "checkpoint.pt")["partial"]
    assert (partial["steps"], partial["nonfinite"], partial["in_row"]) == (2, 2, 0)
    run(stopped)
    assert [r["nonfinite_steps"] for r in read_metrics(tmp_path / "stopped" / "distilled" / "metrics.jsonl")] == [0, 2]
    assert numbers(tmp_path / "stopped" / "distilled" / "metrics.jsonl") == \
        numbers(tmp_path / "run" / "distilled" / "metrics.jsonl")


def test_a_run_stopped_under_one_check_resumes_under_the_other(tmp_path, tiny_recipe, teacher_checkpoint,
                                                               monkeypatch, no_report):
    """The optimizer's state keeps its ``fused`` setting: the resumed stage uses the kernel its check needs."""
    tiny_recipe["teacher"].update(checkpoint=teacher_checkpoint, args=TEACHER_SPEC["args"])
    for first, then in (("step", "deferred"), ("deferred", "step")):
        tree = deferred(tiny_recipe, tmp_path / first)
        tree["speed"]["nonfinite_check"] = first
        with monkeypatch.context() as m, stop_at_step_boundary():
            signal_at(m, STEPS_PER_EPOCH + 3, signal.SIGTERM)
            with pytest.raises(Interrupted):
                run(tree)
        tree["speed"]["nonfinite_check"] = then
        _, log = run(tree)
        assert any("resuming from" in line for line in log)
        assert [r["epoch"] for r in read_metrics(tmp_path / first / "distilled" / "metrics.jsonl")] == [1, 2]


def test_deferred_check_needs_a_fused_optimizer(tmp_path, tiny_recipe, teacher_checkpoint, no_report):
    tiny_recipe["teacher"].update(checkpoint=teacher_checkpoint, args=TEACHER_SPEC["args"])
    tiny_recipe["distill"][0]["optimizer"] = {"name": "rmsprop", "lr": 0.01}
    with pytest.raises(ConfigError, match="rmsprop has none: use sgd, adam, adamw, or nonfinite_check: step"):
        run(deferred(tiny_recipe, tmp_path / "run"))


def test_corrupt_resume_checkpoint_names_the_file(tmp_path, tiny_recipe, no_report):
    bad = tmp_path / "run" / "teacher" / "checkpoint.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x00garbage, not a zip file" * 10)
    with pytest.raises(CheckpointError) as err:
        run(tiny_recipe)
    assert f"checkpoint {bad} cannot be read" in str(err.value) and "delete it to retrain" in str(err.value)


def test_corrupt_teacher_checkpoint_names_the_file(tmp_path, tiny_recipe, no_report):
    bad = tmp_path / "teacher.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    tiny_recipe["teacher"]["checkpoint"] = str(bad)
    with pytest.raises(CheckpointError, match=f"checkpoint {bad} cannot be read"):
        run(tiny_recipe)
    with pytest.raises(CheckpointError, match="does not exist"):
        tiny_recipe["teacher"]["checkpoint"] = str(tmp_path / "missing.pt")
        run(tiny_recipe)


def test_teacher_checkpoint_for_other_classes(tmp_path, tiny_recipe, no_report):
    spec = {"name": "cnn", "args": {**TEACHER_SPEC["args"], "num_classes": 5}}
    path = tmp_path / "five.pt"
    save_model(build_model(spec["name"], spec["args"]), spec, path)
    tiny_recipe["teacher"]["checkpoint"] = str(path)  # recipe args: 10 classes (the data's)
    with pytest.raises(CheckpointError) as err:
        run(tiny_recipe)
    assert f"the weights in {path} do not fit the model" in str(err.value)
    assert "classifier.weight" in str(err.value) and "model name and args" in str(err.value)
    # the teacher's args say 5 classes too: the weights fit, but not the data or the student
    tiny_recipe["teacher"]["args"]["num_classes"] = 5
    with pytest.raises(ShapeError, match="the teacher predicts 5 classes but the data has 10"):
        run(tiny_recipe)


def test_student_with_other_classes_fails_before_the_teacher_trains(tmp_path, tiny_recipe, no_report):
    tiny_recipe["student"]["args"]["num_classes"] = 7
    with pytest.raises(ShapeError, match="the student predicts 7 classes but the data has 10"):
        run(tiny_recipe)
    assert not (tmp_path / "run" / "teacher" / "checkpoint.pt").exists()


def test_grad_clip_norm_bounds_every_step(tiny_recipe, teacher_checkpoint, no_report):
    # Plain SGD (no momentum, no decay): each step moves the weights by lr · ‖clipped grad‖ <= lr · clip,
    # so after 8 steps the student has moved at most 8 · 1.0 · 1e-3 in L2 norm, whatever the loss.
    tree = tiny_recipe
    tree["teacher"]["checkpoint"] = teacher_checkpoint
    tree["teacher"]["args"] = {**TEACHER_SPEC["args"]}
    tree["distill"][0].update(epochs=1, grad_clip_norm=1e-3,
                              optimizer={"name": "sgd", "lr": 1.0, "momentum": 0.0, "weight_decay": 0.0})
    torch.manual_seed(0)
    start = build_model("cnn", {"widths": [4, 8], "depth": 1, "first_stride": 2, "num_classes": 10})
    run(tree)
    end = torch.load(Path(tree["output_dir"]) / "distilled" / "model.pt", weights_only=True)["state_dict"]
    moved = torch.cat([(end[k].float() - v.float()).flatten() for k, v in start.state_dict().items()
                       if v.dtype.is_floating_point and "running" not in k])
    assert 0 < moved.norm() <= STEPS_PER_EPOCH * 1.0 * 1e-3 + 1e-6


def test_eval_every_tests_on_schedule_and_after_the_last_epoch(tiny_recipe, teacher_checkpoint, no_report):
    tree = tiny_recipe
    tree["teacher"]["checkpoint"] = teacher_checkpoint
    tree["teacher"]["args"] = {**TEACHER_SPEC["args"]}
    tree["distill"][0].update(epochs=3, eval_every=2)
    summary, lines = run(tree)
    records = read_metrics(Path(tree["output_dir"]) / "distilled" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert ["test/accuracy" in r for r in records] == [False, True, True]
    assert all("train/loss" in r for r in records)
    distilled = next(r for r in summary["rows"] if r["model"] == "distilled")
    assert distilled["accuracy"] == records[-1]["test/accuracy"]  # the summary is the last epoch's test
    assert any("| test - |" in line for line in lines)


def test_a_cached_kd_run_equals_the_uncached_run(tmp_path, tiny_recipe, teacher_checkpoint, no_report):
    """The Fashion-MNIST cnn pair (tiny widths): teacher_cache auto (the default) vs off, same seed."""
    tiny_recipe["teacher"].update(checkpoint=teacher_checkpoint, args=TEACHER_SPEC["args"])
    tiny_recipe["distill"][0]["epochs"] = 3
    cached, _ = run(tiny_recipe)
    online = {**tiny_recipe, "output_dir": str(tmp_path / "online"), "speed": {"teacher_cache": "off"}}
    uncached, _ = run(online)
    assert cached["rows"][-1]["accuracy"] == uncached["rows"][-1]["accuracy"]
    assert_same_weights(weights(tmp_path / "run" / "distilled" / "model.pt"),
                        weights(tmp_path / "online" / "distilled" / "model.pt"))
    assert len(list((tmp_path / "run" / "distilled" / "teacher_cache").glob("*.values"))) == 1
    assert not (tmp_path / "online" / "distilled" / "teacher_cache").exists()


def test_weight_average_is_the_stage_result_and_resumes_exactly(tmp_path, tiny_recipe, teacher_checkpoint,
                                                                monkeypatch, no_report):
    """``ema`` on both stages: the model.pt differs from the trained weights' run, the checkpoint carries the
    average, and a run killed in stage 2 resumes to the same averaged weights and test numbers."""
    tiny_recipe["teacher"].update(checkpoint=teacher_checkpoint, args=TEACHER_SPEC["args"])
    plain = fitnets(copy.deepcopy(tiny_recipe))
    run(plain)
    tree = fitnets(tiny_recipe)
    for stage in tree["distill"]:
        stage["ema"] = 0.999
    tree["output_dir"] = str(tmp_path / "ema")
    run(tree)
    averaged = weights(tmp_path / "ema" / "distilled" / "model.pt")
    trained = weights(tmp_path / "run" / "distilled" / "model.pt")
    assert any(not torch.equal(averaged[k], trained[k]) for k in averaged if averaged[k].is_floating_point())
    state = safe_load(tmp_path / "ema" / "distilled" / "checkpoint.pt")
    assert_same_weights(state["student"], averaged)  # the finished phase holds the average
    tree["output_dir"] = str(tmp_path / "crashed")
    with monkeypatch.context() as m:
        crash_at(m, STEPS_PER_EPOCH * 2 + 4)
        with pytest.raises(Crash):
            run(tree)
    assert safe_load(tmp_path / "crashed" / "distilled" / "checkpoint.pt")["ema"]["updates"] == STEPS_PER_EPOCH
    run(tree)
    assert_same_weights(weights(tmp_path / "crashed" / "distilled" / "model.pt"), averaged)
    assert numbers(tmp_path / "crashed" / "distilled" / "metrics.jsonl") == \
        numbers(tmp_path / "ema" / "distilled" / "metrics.jsonl")


def test_an_ensemble_of_teachers_gets_its_own_row_from_the_average_of_their_probabilities(tiny_recipe, no_report):
    tree = copy.deepcopy(tiny_recipe)
    teacher = tree.pop("teacher")
    tree["teachers"] = [teacher, copy.deepcopy(teacher)]
    tree["distill"][0]["epochs"] = 1
    summary, _ = run(tree)
    rows = {r["model"]: r for r in summary["rows"]}
    assert list(rows) == ["teacher_0", "teacher_1", "ensemble", "distilled"]
    out = Path(tree["output_dir"])
    members = [load_model(out / f"teacher_{i}" / "model.pt")[0].eval() for i in (0, 1)]
    data = build_data(recipe_from_dict(tree))
    wrong = 0
    with torch.no_grad():
        for x, y in data.test_loader:
            probs = sum(m(x).softmax(-1) for m in members) / 2
            wrong += int((probs.argmax(1) != y).sum())
    assert rows["ensemble"]["errors"] == wrong
    assert rows["ensemble"]["params"] == rows["teacher_0"]["params"] + rows["teacher_1"]["params"]
    assert rows["teacher_0"]["errors"] != rows["teacher_1"]["errors"]  # seeded apart: two different members


def test_bn_frozen_epochs_train_the_last_epochs_with_batchnorm_in_eval_mode(tiny_recipe, teacher_checkpoint,
                                                                             monkeypatch, no_report):
    """``bn_frozen_epochs: 1`` of 2: epoch 1 trains with batch statistics and moves the running ones; epoch 2
    normalises with the running statistics, leaves them as they were, and still trains the BN weights."""
    tiny_recipe["teacher"].update(checkpoint=teacher_checkpoint, args=TEACHER_SPEC["args"])
    tiny_recipe["distill"][0]["bn_frozen_epochs"] = 1
    seen = []
    step = Stage.step

    def watching(self, epoch, s, x, y):
        bns = [m for m in self.student.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        seen.append((epoch, {m.training for m in bns}, bns[0].running_mean.clone(), bns[0].weight.detach().clone()))
        return step(self, epoch, s, x, y)

    monkeypatch.setattr(Stage, "step", watching)
    run(tiny_recipe)
    assert [e for e, *_ in seen] == [0] * STEPS_PER_EPOCH + [1] * STEPS_PER_EPOCH
    assert all(modes == {True} for e, modes, *_ in seen if e == 0)
    assert all(modes == {False} for e, modes, *_ in seen if e == 1)
    epoch2 = [r for e, _, r, _ in seen if e == 1]
    assert not torch.equal(seen[0][2], epoch2[0])  # epoch 1 moved the running statistics
    assert all(torch.equal(epoch2[0], r) for r in epoch2)  # epoch 2 did not
    final = weights(Path(tiny_recipe["output_dir"]) / "distilled" / "model.pt")
    first_bn = next(k for k in final if k.endswith("running_mean"))
    assert torch.equal(final[first_bn], epoch2[0])
    assert not torch.equal(final[first_bn.replace("running_mean", "weight")], seen[STEPS_PER_EPOCH][3])


def test_cpu_model_names_the_family_the_rounding_depends_on():
    from hintdistill.metrics import cpu_model
    info = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n"
            "flags\t\t: fpu avx2\n\nprocessor\t: 1\ncpu family\t: 25\nmodel\t\t: 17\n")
    assert cpu_model(info) == "AMD EPYC family 26 model 2"  # the first processor's
    assert cpu_model("processor\t: 0\nmodel name\t: Some ARM core\n") == "Some ARM core"
    assert cpu_model("") == ""
