"""Decoupled knowledge distillation, Zhao et al., CVPR 2022, "Decoupled Knowledge Distillation" (arXiv:2203.08679).

With p = softmax(z / T) for the teacher (T) and the student (S) and t the target class:

    b = [p_t, 1 − p_t]                          (target class vs all the others)
    p̂ = softmax over the non-target classes only
    TCKD = T² · KL(b^T ‖ b^S),   NCKD = T² · KL(p̂^T ‖ p̂^S)        (each averaged over the batch)
    L_DKD = α · TCKD + β · NCKD                 (classical KD is TCKD + (1 − p_t^T) · NCKD)

Paper defaults (CIFAR-100): α = 1, β = 8, T = 4, and the DKD weight ramped linearly from 0 over the first
20 epochs (``warmup_epochs``, applied as a ``LinearRamp`` of the term's weight). The target class is taken
out of p̂ by subtracting a large number (1000) from its logit before the softmax, so its probability is 0
and the others sum to 1; TCKD's b is computed in log space (log-sum-exp over the non-target classes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from ..errors import ShapeError
from ..schema import LinearRamp, Weight
from ..taps import Outputs
from .base import Term
from .registry import TermConfig, register_term

MASK = 1000.0  # subtracted from the target logit: exp(-1000) is 0 in float32, so p̂ has no target mass


def dkd_parts(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each T² · KL(teacher ‖ student) averaged over the batch."""
    if student_logits.shape != teacher_logits.shape:
        raise ShapeError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ: both must predict the same classes")
    z_s, z_t = student_logits.float() / temperature, teacher_logits.float() / temperature
    target = F.one_hot(targets, z_s.shape[1]).bool()
    binary = []
    for z in (z_s, z_t):
        log_p = F.log_softmax(z, 1)
        log_target = log_p.masked_select(target)
        log_others = torch.logsumexp(log_p.masked_fill(target, float("-inf")), 1)
        binary.append(torch.stack([log_target, log_others], 1))  # log b = log [p_t, 1 − p_t]
    log_b_s, log_b_t = binary
    tckd = (log_b_t.exp() * (log_b_t - log_b_s)).sum(1).mean()
    log_hat_s = F.log_softmax(z_s - MASK * target, 1)
    log_hat_t = F.log_softmax(z_t - MASK * target, 1)
    nckd = (log_hat_t.exp() * (log_hat_t - log_hat_s)).sum(1).mean()
    return tckd * temperature**2, nckd * temperature**2


@register_term("dkd")
class DecoupledKD(Term):
    """Zhao et al. 2022: target-class (TCKD) and non-target-class (NCKD) KD with their own weights α, β."""

    class Config(TermConfig):
        """Decoupled KD: alpha · TCKD + beta · NCKD at temperature T, the weight warmed up over warmup_epochs."""

        alpha: float = Field(1.0, ge=0)
        beta: float = Field(8.0, ge=0)
        temperature: float = Field(4.0, gt=0)
        warmup_epochs: float = Field(20.0, ge=0, description="ramp the weight linearly from 0 over these epochs")
        teacher_index: int = Field(0, ge=0)

        @model_validator(mode="after")
        def _one_schedule(self):
            if self.warmup_epochs > 0 and isinstance(self.weight, LinearRamp):
                raise ValueError("give either a scheduled weight or warmup_epochs (set warmup_epochs: 0), not both")
            return self

        def term_args(self) -> dict:
            return {k: v for k, v in super().term_args().items() if k != "warmup_epochs"}

        def schedule(self) -> Weight:
            if self.warmup_epochs > 0:
                return LinearRamp(0.0, float(self.weight), self.warmup_epochs)
            return self.weight

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, teacher_index: int = 0):
        super().__init__()
        self.alpha, self.beta, self.temperature, self.teacher_index = alpha, beta, temperature, teacher_index

    def forward(self, student: Outputs, teachers: list[Outputs], targets: torch.Tensor) -> dict[str, torch.Tensor]:
        tckd, nckd = dkd_parts(student["logits"], teachers[self.teacher_index]["logits"].detach(), targets,
                               self.temperature)
        return {"loss": self.alpha * tckd + self.beta * nckd, "tckd": tckd, "nckd": nckd}
