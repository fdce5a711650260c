"""The whole recipe: train (or load) the teacher(s), train the baseline student, distill, summarize."""

from __future__ import annotations

import random

import torch
import yaml

from .. import report
from ..build import build_data, instantiate, model_spec
from ..checks import check_model_fits_data, check_num_classes  # issue 12
from ..config import Recipe
from ..data.sanity import dropped_note  # issue 12
from ..data.task import TaskData
from ..metrics import count_params, cpu_latency_ms, gflops
from .checkpoint import load_teacher_weights, writing
from .distributed import Dist, barrier, cleanup, init_distributed
from .dryrun import dry_run
from .loop import Phase, as_stage
from .stage import PhaseTrainer

KEPT = ("Every checkpoint.pt and model.pt written so far is intact: rerunning loads the finished phases without "
        "training them again, resumes the unfinished one from its last checkpoint and writes the summary and report.")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def run_recipe(recipe: Recipe, log=print) -> dict:
    """Run every phase of a recipe; returns the summary (also written as summary.md / summary.json)."""
    d, device = init_distributed(recipe.device)
    try:
        with writing(f"the run's outputs in {recipe.run_dir()} (summary, report, logs)", KEPT):  # issue 12
            return _run(recipe, d, device, log)
    finally:
        cleanup(d)


def _run(recipe: Recipe, d: Dist, device: torch.device, log) -> dict:
    run_dir = recipe.run_dir()
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
        log(f"run folder: {run_dir}  device: {device}  processes: {d.world}")
    data = build_data(recipe)
    rows = []
    # before any teacher trains: a student that cannot be built or predicts the wrong classes fails now
    student = check_model_fits_data(instantiate(model_spec(recipe.student, data.model_defaults)), data, "student",
                                    recipe.data.name)  # issue 12: channels and class counts
    check_num_classes(student, data, "student")
    dry_run(recipe, data)  # issue 12: every stage's layers, shapes and adapters on one batch, before any training

    teachers = []
    for i, tcfg in enumerate(recipe.teachers):
        name = "teacher" if len(recipe.teachers) == 1 else f"teacher_{i}"
        spec = model_spec(tcfg, data.model_defaults)
        seed_everything(recipe.seed + 1000 * (i + 1))
        model = instantiate(spec)
        check_model_fits_data(model, data, name, recipe.data.name, student)  # issue 12
        check_num_classes(model, data, name)
        if tcfg.checkpoint:
            load_teacher_weights(model, tcfg.checkpoint)
            model.to(device)
            result = {**data.evaluate(model, device), "train_s": 0.0}
            if d.main:
                log(f"[{name}] loaded {tcfg.checkpoint}")
        else:
            result = PhaseTrainer(Phase(name, model, spec, [as_stage(tcfg.train, "train")]), data, run_dir,
                                  device, d, recipe.seed + i, recipe.amp, log).train()
        teachers.append(model)
        rows.append(summary_row(name, model, spec, result, data, recipe))
    barrier(d)

    student_spec = model_spec(recipe.student, data.model_defaults)
    if recipe.baseline is not None:
        seed_everything(recipe.seed)  # the baseline and distilled students start from the same weights
        baseline = instantiate(student_spec)
        result = PhaseTrainer(Phase("baseline", baseline, student_spec, [as_stage(recipe.baseline, "train")]),
                              data, run_dir, device, d, recipe.seed, recipe.amp, log).train()
        rows.append(summary_row("baseline", baseline, student_spec, result, data, recipe))

    seed_everything(recipe.seed)
    student = instantiate(student_spec)
    result = PhaseTrainer(Phase("distilled", student, student_spec, recipe.distill, teachers), data, run_dir,
                          device, d, recipe.seed, recipe.amp, log).train()
    rows.append(summary_row("distilled", student, student_spec, result, data, recipe))

    summary = {"recipe": recipe.name, "task": recipe.task, "device": str(device), "rows": rows}
    if d.main:
        report.write_summary(summary, run_dir, data.kind, dropped_note(data.test_loader))  # issue 12
        log("\n" + report.markdown_table(rows, data.kind))
        log(f"\nwritten: {run_dir / 'summary.md'}")
        try:
            path = report.write_report(run_dir)  # looked up at call time: tests replace it with a stub
            log(f"written: {path}")
        except ImportError:  # matplotlib (the figures) missing
            pass
    return summary


def summary_row(name: str, model, spec: dict, result: dict, data: TaskData, recipe: Recipe) -> dict:
    model = model.cpu()
    row = {"model": name, "arch": spec["name"], **result, "params": count_params(model),
           "gflops": gflops(model, data.input_shape),
           "cpu_ms_per_image": cpu_latency_ms(model, data.input_shape, recipe.latency_batch)}
    return row
