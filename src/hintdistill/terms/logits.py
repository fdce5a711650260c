"""Loss terms on classification logits.

Hard-label cross-entropy:    L_CE = -1/B Σ_b log p_S(y_b),  p_S = softmax(z_S)

Soft-target distillation, Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network":
    q^T = softmax(z / T)
    L_KD = T² · KL(q_teacher^T ‖ q_student^T), averaged over the batch ("batchmean")
The soft-target gradient scales as 1/T², so multiplying by T² keeps its size as T changes (§2).
With an ensemble the teacher distribution is the average of the teachers' softened probabilities.

The usual mix is ``alpha · L_KD + (1 - alpha) · L_CE``: in hintdistill ``alpha`` is the weight of the
soft term (Hinton: "a considerably lower weight on the second [hard] objective").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ..errors import ShapeError
from ..taps import Outputs
from .base import Term
from .registry import TermConfig, register_term


def soft_targets(teacher_logits: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """Average of the teachers' softmax(z / T): the ensemble's soft targets."""
    probs = [F.softmax(z.float() / temperature, dim=1) for z in teacher_logits]
    return probs[0] if len(probs) == 1 else torch.stack(probs).mean(0)  # the mean of one is itself, exactly


def kd_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(teacher ‖ student) at temperature T, summed over classes and averaged over the batch."""
    if student_logits.shape != teacher_probs.shape:
        raise ShapeError(
            f"student logits {tuple(student_logits.shape)} and teacher outputs {tuple(teacher_probs.shape)} "
            f"differ: teacher and student must predict the same number of classes."
        )
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    # kl_div(input=log q_student, target=q_teacher) = Σ q_t (log q_t - log q_s): the teacher is the target.
    return F.kl_div(log_p_student, teacher_probs, reduction="batchmean") * temperature**2


@register_term("ce")
class CrossEntropy(Term):
    """Hard-label cross-entropy of the student's logits (optionally label-smoothed)."""

    uses_teacher = False

    class Config(TermConfig):
        """Hard-label cross-entropy."""

        label_smoothing: float = Field(0.0, ge=0, lt=1)

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, student: Outputs, teachers: list[Outputs], targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(student["logits"].float(), targets, label_smoothing=self.label_smoothing)


@register_term("kd")
class SoftTargetKD(Term):
    """Hinton et al. 2015 soft-target loss, T² · KL(teacher_T ‖ student_T); one teacher or an ensemble."""

    class Config(TermConfig):
        """Soft-target KD, T² · KL(teacher_T ‖ student_T) (Hinton et al. 2015). ``weight`` is alpha, the weight
        of the soft term; give the ``ce`` term 1 - alpha for the usual mix."""

        temperature: float = Field(4.0, gt=0)

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def setup(self, student: Outputs, teachers: list[Outputs]) -> None:
        for i, t in enumerate(teachers):
            if t["logits"].shape[1] != student["logits"].shape[1]:
                raise ShapeError(
                    f"teacher {i} predicts {t['logits'].shape[1]} classes but the student predicts "
                    f"{student['logits'].shape[1]}: give both models the same num_classes."
                )

    def forward(self, student: Outputs, teachers: list[Outputs], targets=None) -> torch.Tensor:
        probs = soft_targets([t["logits"] for t in teachers], self.temperature)
        return kd_loss(student["logits"], probs, self.temperature)
