"""Pearson-correlation feature distillation, Cao et al., NeurIPS 2022, "PKD: General Distillation Framework
for Object Detectors via Pearson Correlation Coefficient" (arXiv:2207.02039).

Each channel of each level's feature map is standardised per image to zero mean and unit variance over
its H·W positions (population variance, ε = 1e-6), then compared with half the mean squared error:

    F̂_c = (F_c − mean_HW F_c) / (std_HW F_c + ε)
    L_PKD = Σ_levels ½ · mean_{b, c, h, w} (F̂_S − F̂_T)²

For standardised vectors ½ · mean (û − v̂)² = 1 − r (Pearson's r), so each level's loss is the mean of
1 − r over images and channels: magnitude differences between teacher and student no longer matter.
The ½ and the sum over levels are the paper's released code (mmrazor's ``PKDLoss``); its detector configs
weight the loss 6–10 (default weight here: 6). ``levels`` are (teacher_layer, student_layer) pairs, the
YOLO family's neck levels by default. Standardisation does not reconcile different channel counts, so
when they differ the student's map goes through a 1×1 conv adaptation layer first (as mmrazor's PKD
setups do with a conv connector); equal channels need none. A student map of another spatial size is
resized bilinearly to the teacher's (mmrazor's ``resize_stu``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..adapters import build_adapter
from ..errors import ShapeError
from ..schema import Weight
from ..taps import Outputs, feature_key
from .base import Term
from .detection import NECK_LEVELS
from .registry import HintPair, TermConfig, register_term, weight_text

EPS = 1e-6


def standardize(feature: torch.Tensor) -> torch.Tensor:
    """Each channel of each image to zero mean, unit (population) variance over its positions."""
    flat = feature.float().flatten(2)
    mean, std = flat.mean(2, keepdim=True), flat.std(2, unbiased=False, keepdim=True)
    return ((flat - mean) / (std + EPS)).view_as(feature)


@register_term("pkd")
class PearsonKD(Term):
    """Cao et al. 2022: MSE between per-channel standardised teacher and student feature maps, per level."""

    reads_final_output = False  # only feat: outputs: forward passes stop at the last tapped layer

    class Config(TermConfig):
        """PKD on (teacher_layer, student_layer) pairs (default: the YOLO neck levels)."""

        weight: Weight = 6.0
        levels: list[tuple[str, str]] = Field(default_factory=lambda: list(NECK_LEVELS), min_length=1)
        teacher_index: int = Field(0, ge=0)

        def describe(self) -> str:
            pairs = ", ".join(f"{t}←{s}" for t, s in self.levels)
            return f"pkd {pairs} ({weight_text(self.weight)})"

        def hint_pairs(self) -> list[HintPair]:
            # adapter None: 1x1 conv or identity, decided from the shapes as in setup()
            return [HintPair(t, s, None, "none", "interpolate", self.teacher_index, f"adapters.{i}.")
                    for i, (t, s) in enumerate(self.levels)]

    def __init__(self, levels: list[tuple[str, str]] = NECK_LEVELS, teacher_index: int = 0):
        super().__init__()
        if not levels:
            raise ShapeError("PKD needs at least one (teacher_layer, student_layer) pair")
        self.levels = [tuple(pair) for pair in levels]
        self.teacher_index = teacher_index
        self.adapters = nn.ModuleList()

    def student_taps(self) -> list[str]:
        return [s for _, s in self.levels]

    def teacher_taps(self) -> list[str]:
        return [t for t, _ in self.levels]

    def setup(self, student: Outputs, teachers: list[Outputs]) -> None:
        """A 1×1 conv adapter for each level whose channel counts differ (identity otherwise)."""
        self.adapters = nn.ModuleList()
        for t_name, s_name in self.levels:
            s, t = student[feature_key(s_name)], teachers[self.teacher_index][feature_key(t_name)]
            if s.dim() != 4 or t.dim() != 4:
                raise ShapeError(f"PKD level ({t_name} ← {s_name}) needs [B, C, H, W] maps; got teacher "
                                 f"{tuple(t.shape)}, student {tuple(s.shape)}")
            same = s.shape[1] == t.shape[1]
            adapter = nn.Identity() if same else build_adapter("conv1x1", tuple(s.shape), tuple(t.shape))
            # under "adapter", as a hint term keeps it: viz loads it by the prefix hint_pairs() names
            self.adapters.append(nn.ModuleDict({"adapter": adapter.to(s.device)}))

    def forward(self, student: Outputs, teachers: list[Outputs], targets=None) -> dict[str, torch.Tensor]:
        parts = {}
        for i, ((t_name, s_name), level) in enumerate(zip(self.levels, self.adapters, strict=True)):
            t = teachers[self.teacher_index][feature_key(t_name)].detach().float()
            s = level["adapter"](student[feature_key(s_name)].float())
            if s.shape[2:] != t.shape[2:]:
                s = F.interpolate(s, size=t.shape[2:], mode="bilinear", align_corners=False)
            parts[f"level{i}"] = 0.5 * (standardize(s) - standardize(t)).pow(2).mean()
        return {"loss": torch.stack(list(parts.values())).sum(), **parts}
