"""Hint learning, Romero et al. 2015, "FitNets: Hints for Thin Deep Nets" (Eq. 3):

    L_HT(W_guided, W_r) = ½ ‖ u_h(x; W_hint) - r(v_g(x; W_guided); W_r) ‖²

u_h is the teacher's hint feature, v_g the student's guided feature, r the adaptation layer (see
``hintdistill.adapters``). Distances, per example then averaged over the batch:

- ``l2``  (default): mean over elements of (u - r)²   (``reduction: sum`` gives FitNets' ½‖u - r‖²)
- ``l1``: mean over elements of |u - r|               (``reduction: sum``: ‖u - r‖₁, Chen et al. 2017)
- ``smooth_l1``: Huber with beta = 1, mean over elements

When the spatial sizes differ and the adapter keeps the guided size, ``resize: interpolate`` resizes
the adapted map bilinearly to the hint's size, ``resize: pool`` average-pools both to the smaller
size; with ``resize: none`` a mismatch is an error that says which of these to pick.

``tokens_to_map: true`` first reshapes a ViT's token map ``[B, 1 + H*W, C]`` (either side) to ``[B, C, H, W]``,
dropping the class token (``adapters.tokens_to_map``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ..adapters import build_adapter, tokens_to_map
from ..errors import ShapeError
from ..taps import Outputs, feature_key
from .base import Term
from .registry import HintPair, TermConfig, register_term, weight_text

DISTANCES = ("l2", "l1", "smooth_l1")
RESIZES = ("none", "interpolate", "pool")


def feature_distance(a: torch.Tensor, b: torch.Tensor, distance: str = "l2", reduction: str = "mean",
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """Distance between feature tensors of equal shape; ``mask`` ([B,1,H,W] or broadcastable) selects
    locations, and the mean is then taken over the selected locations only."""
    if distance == "l2":
        diff = (a - b) ** 2
    elif distance == "l1":
        diff = (a - b).abs()
    elif distance == "smooth_l1":
        diff = F.smooth_l1_loss(a, b, reduction="none", beta=1.0)
    else:
        raise ShapeError(f"unknown distance '{distance}'; choose one of {', '.join(DISTANCES)}")
    if mask is not None:
        mask = mask.to(diff.dtype).expand_as(diff)
        diff = diff * mask
        if reduction == "mean":
            return diff.sum() / mask.sum().clamp(min=1.0)
    if reduction == "mean":
        return diff.mean()
    if reduction == "sum":
        per_example = diff.flatten(1).sum(1)
        return (0.5 * per_example if distance == "l2" else per_example).mean()
    raise ShapeError(f"unknown reduction '{reduction}'; choose 'mean' or 'sum'")


@register_term("hint")
class HintLoss(Term):
    """FitNets hint: the teacher's ``hint`` layer guides the student's ``guided`` layer via an adapter."""

    reads_final_output = False  # only feat: outputs: forward passes stop at the last tapped layer

    class Config(TermConfig):
        """FitNets hint (Romero et al. 2015): teacher layer ``hint`` guides student layer ``guided``."""

        hint: str
        guided: str
        adapter: Literal["conv1x1", "conv3x3", "regressor", "linear", "identity"] = "conv1x1"
        adapter_activation: Literal["none", "relu"] = "none"
        distance: Literal["l2", "l1", "smooth_l1"] = "l2"
        reduction: Literal["mean", "sum"] = "mean"
        resize: Literal["none", "interpolate", "pool"] = "none"
        teacher_index: int = Field(0, ge=0)
        tokens_to_map: bool = Field(False, description="reshape ViT token maps [B, 1+H*W, C] to [B, C, H, W], "
                                                       "dropping the class token")

        def describe(self) -> str:
            return f"hint {self.hint} ← {self.guided} via {self.adapter} ({weight_text(self.weight)})"

        def hint_pairs(self) -> list[HintPair]:
            return [HintPair(self.hint, self.guided, self.adapter, self.adapter_activation, self.resize,
                             self.teacher_index)]

        def guided_layer(self) -> str | None:
            return self.guided

    def __init__(self, hint: str, guided: str, adapter: str = "conv1x1", distance: str = "l2",
                 resize: str = "none", reduction: str = "mean", adapter_activation: str = "none",
                 teacher_index: int = 0, tokens_to_map: bool = False):
        super().__init__()
        if distance not in DISTANCES:
            raise ShapeError(f"unknown distance '{distance}'; choose one of {', '.join(DISTANCES)}")
        if resize not in RESIZES:
            raise ShapeError(f"unknown resize '{resize}'; choose one of {', '.join(RESIZES)}")
        self.hint, self.guided = hint, guided
        self.adapter_kind, self.distance, self.resize = adapter, distance, resize
        self.reduction, self.adapter_activation = reduction, adapter_activation
        self.teacher_index, self.tokens_to_map = teacher_index, tokens_to_map
        self.adapter: torch.nn.Module | None = None

    def student_taps(self) -> list[str]:
        return [self.guided]

    def teacher_taps(self) -> list[str]:
        return [self.hint]

    def features(self, student: Outputs, teachers: list[Outputs]) -> tuple[torch.Tensor, torch.Tensor]:
        """(guided, hint), token maps reshaped to [B, C, H, W] when ``tokens_to_map`` is set."""
        guided = student[feature_key(self.guided)]
        hint = teachers[self.teacher_index][feature_key(self.hint)]
        if self.tokens_to_map:
            return tokens_to_map(guided, self.guided), tokens_to_map(hint, self.hint)
        return guided, hint

    def setup(self, student: Outputs, teachers: list[Outputs]) -> None:
        guided, hint = self.features(student, teachers)
        self.adapter = build_adapter(self.adapter_kind, tuple(guided.shape), tuple(hint.shape),
                                     self.adapter_activation).to(guided.device)
        with torch.no_grad():
            adapted = self.adapter(guided.float())
        if adapted.shape[2:] != hint.shape[2:] and self.resize == "none":
            raise ShapeError(
                f"hint '{self.hint}' is {tuple(hint.shape[1:])} but the adapted guided layer '{self.guided}' is "
                f"{tuple(adapted.shape[1:])}: the spatial sizes differ. Use adapter: regressor (guided map "
                f"larger than the hint), or resize: interpolate, or resize: pool."
            )

    def adapt(self, guided: torch.Tensor, hint_shape: torch.Size) -> torch.Tensor:
        """The student's guided feature mapped into the hint's space (and size)."""
        assert self.adapter is not None, "call setup() first (the Distiller does this on a dry-run batch)"
        out = self.adapter(guided)
        if out.dim() == 4 and out.shape[2:] != hint_shape[2:] and self.resize == "interpolate":
            out = F.interpolate(out, size=hint_shape[2:], mode="bilinear", align_corners=False)
        return out

    def forward(self, student: Outputs, teachers: list[Outputs], targets=None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        guided, hint = self.features(student, teachers)
        hint = hint.float()
        adapted = self.adapt(guided.float(), hint.shape)
        if adapted.dim() == 4 and adapted.shape[2:] != hint.shape[2:] and self.resize == "pool":
            size = (min(adapted.shape[2], hint.shape[2]), min(adapted.shape[3], hint.shape[3]))
            adapted, hint = F.adaptive_avg_pool2d(adapted, size), F.adaptive_avg_pool2d(hint, size)
        return feature_distance(hint, adapted, self.distance, self.reduction, mask)
