"""The dry run (issue 12): every stage of every phase is built once, on one batch of two training images, with
fresh untrained instances of the recipe's models, before the first training step. A hint layer with a typo, an
adapter that cannot be built or a term that cannot compare its two sides is then a ConfigError naming the stage,
the term and the layer (exit 2), found in seconds instead of after the teacher and the baseline have trained."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
from torch import nn

from ..build import build_terms, instantiate, model_spec
from ..checks import check_model_fits_data, check_num_classes
from ..config import Recipe, StageConfig
from ..data.task import TaskData
from ..distiller import Distiller
from ..errors import ConfigError, DataError, HintDistillError
from ..finite import nonfinite_part
from .loop import as_stage, set_trainable

DRY_RUN_BATCH = 2  # two images: batch norm in train mode needs more than one value per channel


def dry_run(recipe: Recipe, data: TaskData, student_spec: Callable[[list], dict] | None = None) -> None:
    """Build every stage's terms and Distiller on one batch (and take one loss), then discard them; leaves the
    random state as it found it, so the run's numbers do not depend on whether it ran. ``student_spec(teachers)``
    gives the student's spec as the run will build it (e.g. with the teacher's anchors)."""
    with torch.random.fork_rng(devices=[]):
        state = random.getstate()
        try:
            x, y = data.example_batch(DRY_RUN_BATCH)  # a loader may flip images with the global generator
            bad = nonfinite_part(x)
            if bad is not None:
                raise DataError(f"the first training batch of data '{recipe.data.name}' holds {bad}: check the "
                                f"images and the normalization (a std of 0 divides by zero).")
            teachers = []
            for i, tcfg in enumerate(recipe.teachers):
                role = "teacher" if len(recipe.teachers) == 1 else f"teacher_{i}"
                model = check_model_fits_data(instantiate(model_spec(tcfg, data.model_defaults)), data, role,
                                              recipe.data.name)
                check_num_classes(model, data, role)
                teachers.append(model)
                if not tcfg.checkpoint:  # a teacher trains alone: it is the "student" of its own stage
                    where = "teacher.train" if len(recipe.teachers) == 1 else f"teachers[{i}].train"
                    try_stage(where, as_stage(tcfg.train, "train"), model, [], data, x, y)
            student = instantiate(student_spec(teachers) if student_spec is not None
                                  else model_spec(recipe.student, data.model_defaults))
            if recipe.baseline is not None:
                try_stage("baseline", as_stage(recipe.baseline, "train"), student, [], data, x, y)
            for i, cfg in enumerate(recipe.distill):
                try_stage(f"distill[{i}] (stage '{cfg.name}')", cfg, student, teachers, data, x, y)
        finally:
            random.setstate(state)


def try_stage(where: str, stage: StageConfig, student: nn.Module, teachers: list[nn.Module], data: TaskData,
              x, y) -> None:
    """One Distiller per term, so that an error names its term; then the stage's trainable set."""
    terms = build_terms(stage.terms, data.context)
    for name, pair in terms.items():
        distiller = None
        try:
            distiller = Distiller(student, teachers, {name: pair}, example_inputs=x, on_nonfinite="ignore")
            with torch.no_grad():
                distiller(x, y)
        except HintDistillError as e:
            raise ConfigError(f"recipe {where}, term '{name}'{layers(pair[0])}: {e}") from None
        finally:
            if distiller is not None:
                distiller.remove_taps()
    if stage.trainable == "up_to_guided":
        distiller = Distiller(student, teachers, terms, example_inputs=x, on_nonfinite="ignore")
        try:
            set_trainable(student, stage, distiller, x)
        except HintDistillError as e:
            raise ConfigError(f"recipe {where}, trainable: up_to_guided: {e}") from None
        finally:
            distiller.remove_taps()
            for p in student.parameters():
                p.requires_grad_(True)


def layers(term) -> str:
    """The layers a term taps, for the message."""
    sides = [(side, names) for side, names in (("student", term.student_taps()), ("teacher", term.teacher_taps()))
             if names]
    return "".join(f", {side} layer{'s' * (len(n) > 1)} {', '.join(map(repr, n))}" for side, n in sides)
