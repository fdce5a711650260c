"""The whole recipe: train (or load) the teacher(s), train the baseline student, distill, summarize."""

from __future__ import annotations

import random

import torch
import yaml

from .. import report
from ..atomic import atomic_write
from ..build import build_data, instantiate, model_spec, portable_spec, with_teacher_anchors
from ..checks import check_model_fits_data, check_num_classes  # issue 12
from ..config import ModelConfig, Recipe
from ..data.sanity import dropped_note  # issue 12
from ..data.task import TaskData
from ..metrics import count_params, cpu_latency_ms, cpu_model, gflops
from ..models.darknet_weights import save_cfg, save_weights
from ..models.ensemble import ProbabilityAverage
from .checkpoint import load_teacher, writing
from .distributed import Dist, barrier, cleanup, init_distributed
from .dryrun import dry_run
from .loop import Phase, as_stage
from .memory import keep_freed_memory
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


def record_recipe(run_dir, text: str, at_start: bool) -> None:
    """The run folder's ``recipe.yaml``: written at the start into a new folder or over the same recipe, but over
    another recipe only at the end, once every phase has accepted the folder. A rerun refused for changed settings
    then leaves the record of the run the folder holds (which tools read to tell whether a run is finished)."""
    path = run_dir / "recipe.yaml"
    if at_start and path.is_file() and path.read_text() != text:
        return
    atomic_write(path, lambda f: f.write(text.encode()))


def _run(recipe: Recipe, d: Dist, device: torch.device, log) -> dict:
    run_dir = recipe.run_dir()
    recipe_text = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        record_recipe(run_dir, recipe_text, at_start=True)
        log(f"run folder: {run_dir}  device: {device}  processes: {d.world}")
    if recipe.speed.keep_freed_memory:
        said = keep_freed_memory()
        if d.main:
            log(said)
    data = build_data(recipe)
    # before any teacher trains: a student that cannot be built or predicts the wrong classes fails now
    student_cfg, wants_teacher_anchors = student_config(recipe)
    student = check_model_fits_data(instantiate(model_spec(student_cfg, data.model_defaults)), data, "student",
                                    recipe.data.name)  # issue 12: channels and class counts
    check_num_classes(student, data, "student")
    dry_run(recipe, data, lambda teachers: student_specs(student_cfg, wants_teacher_anchors, student, teachers,
                                                         data)[0])  # issue 12: every stage's layers, shapes and adapters on one batch, before any training

    teachers, rows = train_or_load_teachers(recipe, data, student, run_dir, device, d, log)
    barrier(d)

    student_spec, saved_spec = student_specs(student_cfg, wants_teacher_anchors, student, teachers, data)
    if recipe.baseline is not None:
        seed_everything(recipe.seed)  # the baseline and distilled students start from the same weights
        baseline = instantiate(student_spec)
        result = PhaseTrainer(Phase("baseline", baseline, saved_spec, [as_stage(recipe.baseline, "train")]),
                              data, run_dir, device, d, recipe.seed, recipe.amp, log, recipe.speed).train()
        rows.append(summary_row("baseline", baseline, student_spec, result, data, recipe))

    seed_everything(recipe.seed)
    student = instantiate(student_spec)
    result = PhaseTrainer(Phase("distilled", student, saved_spec, recipe.distill, teachers), data, run_dir,
                          device, d, recipe.seed, recipe.amp, log, recipe.speed).train()
    if d.main:
        ship_darknet(student, run_dir, log)
    rows.append(summary_row("distilled", student, student_spec, result, data, recipe))

    # the CPU kernels (AVX2, AVX512, ...) and the CPU family decide the float rounding, so which numbers a rerun repeats
    summary = {"recipe": recipe.name, "task": recipe.task, "device": str(device),
               "cpu_kernels": torch.backends.cpu.get_cpu_capability(), "cpu": cpu_model(), "rows": rows}
    if d.main:
        record_recipe(run_dir, recipe_text, at_start=False)
        report.write_summary(summary, run_dir, data.kind, dropped_note(data.test_loader))  # issue 12
        log("\n" + report.markdown_table(rows, data.kind))
        log(f"\nwritten: {run_dir / 'summary.md'}")
        try:
            path = report.write_report(run_dir)  # looked up at call time: tests replace it with a stub
            log(f"written: {path}")
        except ImportError:  # matplotlib (the figures) missing
            pass
    return summary


def train_or_load_teachers(recipe: Recipe, data, student: torch.nn.Module, run_dir, device: torch.device, d: Dist,
                           log) -> tuple[list[torch.nn.Module], list[dict]]:
    """Each teacher trained (or loaded from its checkpoint) and its summary row; an ``ensemble`` row for several
    classification teachers (what ``kd`` distils from)."""
    teachers, rows = [], []
    for i, tcfg in enumerate(recipe.teachers):
        name = "teacher" if len(recipe.teachers) == 1 else f"teacher_{i}"
        spec = model_spec(tcfg, data.model_defaults)
        seed_everything(recipe.seed + 1000 * (i + 1))
        model = instantiate(spec)
        check_model_fits_data(model, data, name, recipe.data.name, student)  # issue 12
        check_num_classes(model, data, name)
        if tcfg.checkpoint:
            model = load_teacher(model, tcfg.checkpoint)  # keeps its own anchors
            model.to(device)
            result = {**data.evaluate(model, device), "train_s": 0.0}
            if d.main:
                log(f"[{name}] loaded {tcfg.checkpoint}")
        else:
            result = PhaseTrainer(Phase(name, model, portable_spec(spec, model), [as_stage(tcfg.train, "train")]),
                                  data, run_dir, device, d, recipe.seed + i, recipe.amp, log, recipe.speed).train()
        teachers.append(model)
        rows.append(summary_row(name, model, spec, result, data, recipe))
    if len(teachers) > 1 and data.kind == "classification":  # what the student is distilled from
        ensemble = ProbabilityAverage(teachers).to(device)
        rows.append(summary_row("ensemble", ensemble, {"name": "ensemble"},
                                {**data.evaluate(ensemble, device), "train_s": sum(r["train_s"] for r in rows)},
                                data, recipe))
    return teachers, rows


def student_config(recipe: Recipe) -> tuple[ModelConfig, bool]:
    """The student's model config without ``anchors: teacher`` (resolved once the teacher exists), and
    whether the recipe asked for the teacher's anchors."""
    cfg = recipe.student
    if cfg.args.get("anchors") != "teacher":
        return cfg, False
    return cfg.model_copy(update={"args": {k: v for k, v in cfg.args.items() if k != "anchors"}}), True


def student_specs(cfg: ModelConfig, wants_teacher_anchors: bool, student: torch.nn.Module, teachers: list,
                  data: TaskData) -> tuple[dict, dict]:
    """(the spec the students are built from, the one their files store): with the teacher's anchors when the
    recipe asks or gives none and the heads line up; a Darknet student's saved spec holds its cfg text."""
    spec = model_spec(cfg, data.model_defaults)
    if wants_teacher_anchors or (teachers and "anchors" not in cfg.args):
        spec = with_teacher_anchors(spec, student, teachers[0] if teachers else None, wants_teacher_anchors)
    return spec, portable_spec(spec, instantiate(spec))


def ship_darknet(model: torch.nn.Module, run_dir, log) -> None:
    """A Darknet student also ships as ``student.cfg`` + ``student.weights`` (Darknet and OpenCV run them)."""
    if not callable(getattr(model, "cfg_text", None)):
        return
    save_cfg(model, run_dir / "student.cfg")
    save_weights(model, run_dir / "student.weights")
    log(f"written: {run_dir / 'student.cfg'} and student.weights (Darknet format)")


def summary_row(name: str, model, spec: dict, result: dict, data: TaskData, recipe: Recipe) -> dict:
    model = model.cpu()
    row = {"model": name, "arch": spec["name"], **result, "params": count_params(model),
           "gflops": gflops(model, data.input_shape),
           "cpu_ms_per_image": cpu_latency_ms(model, data.input_shape, recipe.latency_batch)}
    return row
