"""YOLOv4/v5 detection loss (the plain, teacher-free term):

    L = λ_box · Σ_l mean_pos(1 − CIoU(b̂, b))
      + λ_obj · Σ_l balance_l · mean_cells BCE(ô, IoU-target)
      + λ_cls · Σ_l mean_pos Σ_c BCE(p̂_c, 1[c = y]) / C

Positives come from ``assign.assign_targets`` (anchor shape ratio < 4, plus the two nearest neighbour
cells); CIoU as in Zheng et al. 2020. The objectness target of a positive is its (detached, clamped ≥ 0)
CIoU with its GT box, 0 everywhere else. ``balance`` weighs the stride-8/16/32 objectness losses
(4.0, 1.0, 0.4), since small levels have many more cells. Defaults for λ are YOLOv5's (0.05, 1.0, 0.5);
unlike YOLOv5 the total is not multiplied by the batch size.

``normalise="yolov5"`` scales the gains as YOLOv5's ``train.py`` does, so that one set of gains means the same
on every data set: λ_box · 3/L, λ_obj · (S/640)² · 3/L, λ_cls · (C/80) · 3/L for L levels, input size S
(read off the maps) and C classes. The objectness BCE is a mean over all cells, so it shrinks as 1/S² at a
fixed number of objects; the class BCE is a mean over C classes. ``normalise="none"`` keeps the raw gains.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..errors import ConfigError, DataError, ShapeError
from ..taps import Outputs
from ..terms.base import Term
from ..terms.registry import TermConfig, register_term
from .assign import LevelTargets, assign_targets
from .boxes import box_params, ciou, xywh_to_xyxy

NORMALISE = ("none", "yolov5")


def gain_scales(maps: Sequence[torch.Tensor], strides: Sequence[float], normalise: str) -> tuple[float, float, float]:
    """(box, obj, cls) multipliers of the gains: 1s, or YOLOv5's per-level, image-size and class-count scaling."""
    if normalise == "none":
        return 1.0, 1.0, 1.0
    levels, size = len(maps), float(maps[0].shape[2]) * float(strides[0])
    classes = maps[0].shape[-1] - 5
    return 3.0 / levels, (size / 640.0) ** 2 * 3.0 / levels, classes / 80.0 * 3.0 / levels


def as_anchor_tensor(anchors: Any) -> torch.Tensor:
    """9 (w, h) pixel pairs, a ``[3, 3, 2]`` tensor, or a model with an ``anchors`` buffer → ``[3, 3, 2]``."""
    anchors = getattr(anchors, "anchors", anchors)
    t = torch.as_tensor(anchors, dtype=torch.float32).detach().cpu()
    if t.numel() != 18:
        raise ShapeError(f"expected 9 anchors as (w, h) pixel pairs, 3 per level; got shape {tuple(t.shape)}")
    return t.reshape(3, 3, 2).clone()


def detector_context(kind: str, context: dict) -> tuple[Any, Sequence[float]]:
    """The task's anchors and strides, which a term on a detector's head maps cannot do without."""
    if "anchors" not in context:
        raise ConfigError(f"the '{kind}' term needs a detector's anchors: use it in a recipe with task: detection")
    return context["anchors"], context.get("strides", (8, 16, 32))


def head_maps(outputs: Outputs, role: str = "student") -> list[torch.Tensor]:
    """The raw per-level maps ``head:0, head:1, ...`` of one Outputs, each ``[B, A, H, W, 5+C]``."""
    maps = []
    while f"head:{len(maps)}" in outputs:
        maps.append(outputs[f"head:{len(maps)}"])
    if not maps or any(m.dim() != 5 for m in maps):
        raise ShapeError(f"the {role} Outputs have no detector head maps 'head:i' shaped [B, A, H, W, 5+C] "
                         f"(keys: {', '.join(outputs)}); use the 'yolo' model or a model returning such a list.")
    return maps


def predicted_boxes(raw: torch.Tensor, pos: LevelTargets, level_anchors: torch.Tensor, stride: float) -> torch.Tensor:
    """xyxy pixel boxes that one level's raw map predicts at the positives ``pos``. ``[P, 4]``."""
    p = box_params(raw[pos.batch, pos.anchor, pos.gj, pos.gi])
    cell = torch.stack([pos.gi, pos.gj], 1).to(p.dtype)
    xy = (p[:, :2] + cell) * stride
    return xywh_to_xyxy(torch.cat([xy, p[:, 2:] * level_anchors[pos.anchor]], 1))


@register_term("detection")
class YoloLoss(Term):
    """CIoU box + IoU-targeted BCE objectness + BCE class loss over ``head:i``; needs no teacher."""

    uses_teacher = False

    class Config(TermConfig):
        """The detector's own loss (CIoU box, BCE objectness and classes); per-part weights override the defaults
        (e.g. Chen et al.'s mu on the hard part: obj_weight and cls_weight scaled by mu)."""

        box_weight: float | None = Field(None, ge=0)
        obj_weight: float | None = Field(None, ge=0)
        cls_weight: float | None = Field(None, ge=0)
        normalise: Literal["none", "yolov5"] = Field("none", description="scale the gains per level, image "
                                                     "size and class count as YOLOv5 does")

    def __init__(self, anchors: Any, strides: Sequence[float] = (8, 16, 32), box_weight: float = 0.05,
                 obj_weight: float = 1.0, cls_weight: float = 0.5, balance: Sequence[float] = (4.0, 1.0, 0.4),
                 anchor_t: float = 4.0, normalise: str = "none"):
        super().__init__()
        if normalise not in NORMALISE:
            raise ConfigError(f"YoloLoss normalise='{normalise}': choose one of {', '.join(NORMALISE)}")
        self.normalise = normalise
        self.register_buffer("anchors", as_anchor_tensor(anchors))
        self.strides = [float(s) for s in strides]
        self.box_weight, self.obj_weight, self.cls_weight = box_weight, obj_weight, cls_weight
        self.balance, self.anchor_t = list(balance), anchor_t
        self.last: dict[str, torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg: TermConfig, context: dict) -> YoloLoss:
        anchors, strides = detector_context(cfg.type, context)
        # only the per-part weights the recipe gives (e.g. Chen et al.'s μ on the hard objectness/class loss)
        return cls(anchors, strides, **{k: v for k, v in cfg.term_args().items() if v is not None})

    @classmethod
    def for_model(cls, model: nn.Module, **kwargs: Any) -> YoloLoss:
        """A loss with the model's anchors and strides."""
        return cls(model.anchors, [float(s) for s in model.strides], **kwargs)

    def assign(self, maps: list[torch.Tensor], targets: list[dict]) -> list[LevelTargets]:
        """GT positives per level for these maps."""
        if len(maps) != len(self.strides):
            raise ShapeError(f"{len(maps)} head maps but {len(self.strides)} strides; the loss expects one map "
                             f"per stride {self.strides}")
        return assign_targets(targets, self.anchors.to(maps[0].device), self.strides,
                              [tuple(m.shape[2:4]) for m in maps], self.anchor_t)

    def forward(self, student: Outputs, teachers: list[Outputs], targets: list[dict]) -> torch.Tensor:
        parts = self.loss_parts(student, teachers, targets)
        self.last = {k: v.detach() for k, v in parts.items()}
        return parts["box"] + parts["obj"] + parts["cls"]

    def loss_parts(self, student: Outputs, teachers: list[Outputs], targets: list[dict]) -> dict[str, torch.Tensor]:
        """The weighted box, objectness and class losses (with gradients)."""
        maps = head_maps(student)
        positives = self.assign(maps, targets)
        zero = maps[0].sum() * 0
        lbox, lobj, lcls = zero, zero, zero
        for level, (raw, pos) in enumerate(zip(maps, positives, strict=True)):
            raw = raw.float()
            tobj = torch.zeros_like(raw[..., 4])
            if len(pos):
                anchors = self.anchors[level].to(raw.device)
                iou = ciou(predicted_boxes(raw, pos, anchors, self.strides[level]), pos.boxes)
                lbox = lbox + (1 - iou).mean()
                tobj[pos.batch, pos.anchor, pos.gj, pos.gi] = iou.detach().clamp(min=0).to(tobj.dtype)
                logits = raw[pos.batch, pos.anchor, pos.gj, pos.gi, 5:]
                if int(pos.labels.max()) >= logits.shape[-1]:
                    raise DataError(f"a target label is {int(pos.labels.max())} but the head predicts "
                                    f"{logits.shape[-1]} classes: build the model with num_classes="
                                    f"{int(pos.labels.max()) + 1} or more (labels are 0-based).")
                lcls = lcls + F.binary_cross_entropy_with_logits(
                    logits, F.one_hot(pos.labels, logits.shape[-1]).to(logits.dtype))
            lobj = lobj + self.balance[level] * F.binary_cross_entropy_with_logits(raw[..., 4], tobj)
        box_scale, obj_scale, cls_scale = gain_scales(maps, self.strides, self.normalise)
        return {"box": self.box_weight * box_scale * lbox, "obj": self.obj_weight * obj_scale * lobj,
                "cls": self.cls_weight * cls_scale * lcls}
