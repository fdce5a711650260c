"""Attention transfer, Zagoruyko & Komodakis, ICLR 2017, "Paying More Attention to Attention" (arXiv:1612.03928).

Attention map of a feature ``A ∈ R^{C×H×W}`` (activation-based, p = 2), flattened and L2-normalised:

    Q = vec(Σ_c |A_c|^p),    Q̂ = Q / ‖Q‖₂

    L_AT = β/2 · Σ_j mean_{b, positions} (Q̂_S^j − Q̂_T^j)²        over the layer pairs j

The mean over the batch and the H·W positions is the paper's code (``(at(x) - at(y)).pow(2).mean()``);
β = 1000 / (number of pairs) by default (the code's β = 1000, shared by the pairs), added to the CE term
(and optionally KD: ``at_kd``). Channel counts may differ (the map sums over channels); when the spatial
sizes differ, the smaller map Σ_c |A_c|^p is resized bilinearly to the larger one before normalising.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ..errors import ShapeError
from ..taps import Outputs, feature_key
from .base import Term
from .registry import TermConfig, register_term, weight_text


def attention_map(feature: torch.Tensor, p: float = 2.0, size: tuple[int, int] | None = None) -> torch.Tensor:
    """``[B, C, H, W]`` → the L2-normalised ``vec(Σ_c |A_c|^p)``, ``[B, H·W]`` (resized to ``size`` first)."""
    if feature.dim() != 4:
        raise ShapeError(f"attention transfer needs [B, C, H, W] feature maps, got {tuple(feature.shape)}")
    summed = feature.float().abs().pow(p).sum(1, keepdim=True)
    if size is not None and tuple(summed.shape[2:]) != tuple(size):
        summed = F.interpolate(summed, size=size, mode="bilinear", align_corners=False)
    return F.normalize(summed.flatten(1), dim=1)


@register_term("at")
class AttentionTransfer(Term):
    """Zagoruyko & Komodakis 2017: the student's spatial attention maps match the teacher's, pair by pair."""

    reads_final_output = False  # only feat: outputs: forward passes stop at the last tapped layer

    class Config(TermConfig):
        """Attention transfer on (teacher_layer, student_layer) pairs; beta defaults to 1000 / len(pairs)."""

        pairs: list[tuple[str, str]] = Field(min_length=1)
        p: float = Field(2.0, gt=0)
        beta: float | None = Field(None, gt=0)
        teacher_index: int = Field(0, ge=0)

        def describe(self) -> str:
            pairs = ", ".join(f"{t}←{s}" for t, s in self.pairs)
            return f"at {pairs} ({weight_text(self.weight)})"

    def __init__(self, pairs: list[tuple[str, str]], p: float = 2.0, beta: float | None = None,
                 teacher_index: int = 0):
        super().__init__()
        if not pairs:
            raise ShapeError("attention transfer needs at least one (teacher_layer, student_layer) pair")
        self.pairs = [tuple(pair) for pair in pairs]
        self.p, self.teacher_index = p, teacher_index
        self.beta = 1000.0 / len(self.pairs) if beta is None else beta

    def student_taps(self) -> list[str]:
        return [s for _, s in self.pairs]

    def teacher_taps(self) -> list[str]:
        return [t for t, _ in self.pairs]

    def setup(self, student: Outputs, teachers: list[Outputs]) -> None:
        for t_name, s_name in self.pairs:
            for role, name, out in (("teacher", t_name, teachers[self.teacher_index]), ("student", s_name, student)):
                if out[feature_key(name)].dim() != 4:
                    raise ShapeError(f"attention transfer pair ({t_name} ← {s_name}): the {role}'s '{name}' is "
                                     f"{tuple(out[feature_key(name)].shape)}, not a [B, C, H, W] feature map")

    def forward(self, student: Outputs, teachers: list[Outputs], targets=None) -> dict[str, torch.Tensor]:
        parts = {}
        for j, (t_name, s_name) in enumerate(self.pairs):
            s, t = student[feature_key(s_name)], teachers[self.teacher_index][feature_key(t_name)].detach()
            size = tuple(max(a, b) for a, b in zip(s.shape[2:], t.shape[2:], strict=True))
            parts[f"pair{j}"] = (attention_map(s, self.p, size) - attention_map(t, self.p, size)).pow(2).mean()
        return {"loss": self.beta / 2 * torch.stack(list(parts.values())).sum(), **parts}
