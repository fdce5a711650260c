"""The uniform shape of a loss term.

A term is an ``nn.Module`` called as ``term(student, teachers, targets)``:

- ``student``: the student's Outputs (``logits``, ``head:i``, ``feat:<name>``);
- ``teachers``: one Outputs per teacher (a list, so ensembles need no special case);
- ``targets``: the batch's ground truth (class labels, or a detector's boxes).

It returns a scalar, or named parts as a dict ``{"loss": total, "box": ..., "obj": ...}`` (only
``loss`` is weighted and summed; every part is logged as ``<term>.<part>``). A term whose call must stay
one tensor (``YoloLoss`` is called directly in users' loops) may leave its parts in ``self.last``
instead. A term that needs a trainable adaptation layer owns it and builds it in
``setup`` from the shapes of one dry-run batch, so the trainable set is the student plus the terms.

A term usable in recipes declares its schema as a nested ``Config(TermConfig)`` and registers itself
with ``@register_term("<type>")`` (``hintdistill.terms.registry``); ``from_config`` builds it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import HintDistillError
from ..taps import Outputs
from .registry import TermConfig


class Term(nn.Module):
    """Base class: declares taps, builds adapters from probed shapes, computes one scalar loss."""

    uses_teacher: bool = True
    # Whether the term reads a model's final output (``logits``, ``head:i``). A term that reads only
    # ``feat:<name>`` sets it False, so a stage made of such terms stops each forward pass once the last
    # tapped module has run (``Taps.run(stop_early=True)``) instead of paying for the layers above it.
    reads_final_output: bool = True
    type_name: str = ""  # the recipe ``type``, set by ``register_term``

    @classmethod
    def from_config(cls, cfg: TermConfig, context: dict) -> Term:
        """The term a recipe entry describes; ``context`` carries task facts (a detector's anchors, strides)."""
        return cls(**cfg.term_args())

    def student_taps(self) -> list[str]:
        """Student modules (dotted names) whose outputs this term reads as ``feat:<name>``."""
        return []

    def teacher_taps(self) -> list[str]:
        """Teacher modules (dotted names) whose outputs this term reads as ``feat:<name>``."""
        return []

    def setup(self, student: Outputs, teachers: list[Outputs]) -> None:
        """Build adapters from the probed Outputs of one dry-run batch (before the optimizer exists)."""

    def forward(self, student: Outputs, teachers: list[Outputs], targets: Any
                ) -> torch.Tensor | dict[str, torch.Tensor]:  # noqa: D401
        raise NotImplementedError


def loss_and_parts(term: Term, value: torch.Tensor | dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """A term's result as (the loss to weight, its named parts to log)."""
    if isinstance(value, dict):
        if "loss" not in value:
            raise HintDistillError(f"term {type(term).__name__} returned parts {sorted(value)} without 'loss', "
                                   f"the total that the Distiller weights")
        return value["loss"], {k: v for k, v in value.items() if k != "loss"}
    return value, dict(getattr(term, "last", None) or {})
