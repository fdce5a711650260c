"""The uniform shape of a loss term.

A term is an ``nn.Module`` called as ``term(student, teachers, targets)``:

- ``student``: the student's Outputs (``logits``, ``head:i``, ``feat:<name>``);
- ``teachers``: one Outputs per teacher (a list, so ensembles need no special case);
- ``targets``: the batch's ground truth (class labels, or a detector's boxes).

It returns a scalar. A term that needs a trainable adaptation layer owns it and builds it in
``setup`` from the shapes of one dry-run batch, so the trainable set is the student plus the terms.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..taps import Outputs


class Term(nn.Module):
    """Base class: declares taps, builds adapters from probed shapes, computes one scalar loss."""

    uses_teacher: bool = True

    def student_taps(self) -> list[str]:
        """Student modules (dotted names) whose outputs this term reads as ``feat:<name>``."""
        return []

    def teacher_taps(self) -> list[str]:
        """Teacher modules (dotted names) whose outputs this term reads as ``feat:<name>``."""
        return []

    def setup(self, student: Outputs, teachers: list[Outputs]) -> None:
        """Build adapters from the probed Outputs of one dry-run batch (before the optimizer exists)."""

    def forward(self, student: Outputs, teachers: list[Outputs], targets: Any) -> torch.Tensor:  # noqa: D401
        raise NotImplementedError
