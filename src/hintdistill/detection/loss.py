"""YOLOv4/v5 detection loss (the plain, teacher-free term):

    L = λ_box · Σ_l mean_pos(1 − CIoU(b̂, b))
      + λ_obj · Σ_l balance_l · mean_cells BCE(ô, IoU-target)
      + λ_cls · Σ_l mean_pos Σ_c BCE(p̂_c, 1[c = y]) / C

Positives come from ``assign.assign_targets`` (anchor shape ratio < 4, plus the two nearest neighbour
cells); CIoU as in Zheng et al. 2020. The objectness target of a positive is its (detached, clamped ≥ 0)
CIoU with its GT box (with ``iou_ratio`` r < 1: (1 - r) + r·CIoU, YOLOv5's ``gr``), 0 everywhere else.
``balance`` weighs the stride-8/16/32 objectness losses
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
from ..taps import Outputs, outputs_from
from ..terms.base import Term
from ..terms.registry import TermConfig, register_term
from .assign import LevelTargets, assign_targets
from .boxes import box_params, ciou, xywh_to_xyxy
from .heads import HeadSpec, model_heads, yolov5_heads
from .heads import box_params as head_box_params

NORMALISE = ("none", "yolov5")
DEFAULT_GAINS = {"box": 0.05, "obj": 1.0, "cls": 0.5}  # YOLOv5's hyp.scratch box / obj / cls


def gain_scales(maps: Sequence[torch.Tensor], strides: Sequence[float], normalise: str) -> tuple[float, float, float]:
    """(box, obj, cls) multipliers of the gains: 1s, or YOLOv5's per-level, image-size and class-count scaling."""
    if normalise == "none":
        return 1.0, 1.0, 1.0
    levels, size = len(maps), float(maps[0].shape[2]) * float(strides[0])
    classes = maps[0].shape[-1] - 5
    return 3.0 / levels, (size / 640.0) ** 2 * 3.0 / levels, classes / 80.0 * 3.0 / levels


def default_balance(levels: int) -> list[float]:
    """YOLOv5's objectness weights per level, finest first: (4.0, 1.0, 0.4) for 3 levels, else
    (4.0, 1.0, 0.25, 0.06, 0.02) cut to the number of levels."""
    return [4.0, 1.0, 0.4] if levels == 3 else [4.0, 1.0, 0.25, 0.06, 0.02][:levels]


def anchor_buffer(heads: Sequence[HeadSpec]) -> torch.Tensor:
    """All anchors as one tensor: ``[L, A, 2]`` when every level has A anchors, else ``[N, 2]`` level by level."""
    flat = torch.tensor([a for h in heads for a in h.anchors], dtype=torch.float32)
    counts = {len(h.anchors) for h in heads}
    return flat.view(len(heads), -1, 2) if len(counts) == 1 else flat


def as_anchor_tensor(anchors: Any, levels: int = 3) -> torch.Tensor:
    """(w, h) pixel pairs, the same number per level, or a model with an ``anchors`` buffer → ``[L, A, 2]``."""
    anchors = getattr(anchors, "anchors", anchors)
    t = torch.as_tensor(anchors, dtype=torch.float32).detach().cpu()
    if t.numel() == 0 or t.numel() % (2 * levels):
        raise ShapeError(f"expected (w, h) pixel pairs, the same number for each of the {levels} levels (e.g. 9 "
                         f"anchors, 3 per level); got shape {tuple(t.shape)}")
    return t.reshape(levels, -1, 2).clone()


def as_heads(anchors: Any, strides: Sequence[float] = (8, 16, 32)) -> list[HeadSpec]:
    """The head contract a loss works with: a detector model's ``head_specs``, a list of ``HeadSpec``, or
    anchors (see ``as_anchor_tensor``) with ``strides``, decoded as the built-in yolo family (YOLOv5)."""
    specs = model_heads(anchors)
    if specs:
        return specs
    if isinstance(anchors, (list, tuple)) and anchors and all(isinstance(a, HeadSpec) for a in anchors):
        return list(anchors)
    return yolov5_heads(as_anchor_tensor(anchors, len(strides)), strides)


def context_heads(kind: str, context: dict, role: str = "student", teacher_index: int = 0) -> list[HeadSpec]:
    """A detector's heads from a term's context: the Stage puts the actual models' ``heads`` (student) and
    ``teacher_heads`` there; a hand-made context may give the task's ``anchors`` and ``strides`` instead."""
    if role == "student" and context.get("heads"):
        return list(context["heads"])
    teachers = context.get("teacher_heads") or []
    if role == "teacher" and teacher_index < len(teachers) and teachers[teacher_index]:
        return list(teachers[teacher_index])
    if "anchors" not in context:
        raise ConfigError(f"the '{kind}' term needs a detector's heads (anchors, strides): use it in a recipe "
                          f"with task: detection and detector models (yolo, darknet)")
    return as_heads(context["anchors"], context.get("strides", (8, 16, 32)))


def detector_context(kind: str, context: dict) -> tuple[Any, Sequence[float]]:
    """The student's heads and their strides from a term's context (see ``context_heads``)."""
    heads = context_heads(kind, context)
    return heads, [h.stride for h in heads]


def head_maps(outputs: Outputs, role: str = "student") -> list[torch.Tensor]:
    """The raw per-level maps ``head:0, head:1, ...`` of one Outputs (or of a detector's own output, the list of
    maps), each ``[B, A, H, W, 5+C]``."""
    if not isinstance(outputs, dict):
        outputs = outputs_from(outputs)
    maps = []
    while f"head:{len(maps)}" in outputs:
        maps.append(outputs[f"head:{len(maps)}"])
    if not maps or any(m.dim() != 5 for m in maps):
        raise ShapeError(f"the {role} Outputs have no detector head maps 'head:i' shaped [B, A, H, W, 5+C] "
                         f"(keys: {', '.join(outputs)}); use the 'yolo' model or a model returning such a list.")
    return maps


def predicted_boxes(raw: torch.Tensor, pos: LevelTargets, level_anchors: torch.Tensor, stride: float,
                    spec: HeadSpec | None = None) -> torch.Tensor:
    """xyxy pixel boxes that one level's raw map predicts at the positives ``pos``, decoded as ``spec`` says
    (YOLOv5's parametrisation without one). ``[P, 4]``."""
    picked = raw[pos.batch, pos.anchor, pos.gj, pos.gi]
    p = box_params(picked) if spec is None else head_box_params(picked, spec)
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
        iou_ratio: float | None = Field(None, ge=0, le=1, description="a positive's objectness target is "
                                        "(1 - r) + r * CIoU (YOLOv5's model.gr); 1 (default): the CIoU alone, "
                                        "0: YOLOv3's target 1")

    def __init__(self, anchors: Any, strides: Sequence[float] = (8, 16, 32),
                 box_weight: float = DEFAULT_GAINS["box"], obj_weight: float = DEFAULT_GAINS["obj"],
                 cls_weight: float = DEFAULT_GAINS["cls"], balance: Sequence[float] | None = None,
                 anchor_t: float = 4.0, normalise: str = "none", iou_ratio: float = 1.0):
        super().__init__()
        if normalise not in NORMALISE:
            raise ConfigError(f"YoloLoss normalise='{normalise}': choose one of {', '.join(NORMALISE)}")
        self.normalise, self.iou_ratio = normalise, iou_ratio
        self.heads = as_heads(anchors, strides)
        self.register_buffer("anchors", anchor_buffer(self.heads))
        self.strides = [h.stride for h in self.heads]
        self.box_weight, self.obj_weight, self.cls_weight = box_weight, obj_weight, cls_weight
        self.balance, self.anchor_t = list(balance or default_balance(len(self.heads))), anchor_t
        self.last: dict[str, torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg: TermConfig, context: dict) -> YoloLoss:
        heads, strides = detector_context(cfg.type, context)
        # only the per-part weights the recipe gives (e.g. Chen et al.'s μ on the hard objectness/class loss)
        return cls(heads, strides, **{k: v for k, v in cfg.term_args().items() if v is not None})

    @classmethod
    def for_model(cls, model: nn.Module, **kwargs: Any) -> YoloLoss:
        """A loss with the model's heads (strides, anchors, box decoding)."""
        return cls(model, **kwargs)

    def level_anchors(self, device: torch.device | None = None) -> list[torch.Tensor]:
        """Per level the anchors ``[A_l, 2]`` (from the buffer, so a loaded state_dict's values count)."""
        return list(self.anchors.to(device).view(-1, 2).split([len(h.anchors) for h in self.heads]))

    def assign(self, maps: list[torch.Tensor], targets: list[dict]) -> list[LevelTargets]:
        """GT positives per level for these maps."""
        if len(maps) != len(self.strides):
            raise ShapeError(f"{len(maps)} head maps but {len(self.strides)} strides; the loss expects one map "
                             f"per stride {self.strides}")
        for level, (m, h) in enumerate(zip(maps, self.heads, strict=True)):
            if m.shape[1] != len(h.anchors):
                raise ShapeError(f"head map {level} has {m.shape[1]} anchors but the loss's head at stride "
                                 f"{h.stride:g} has {len(h.anchors)}: build the loss from the model it trains")
        return assign_targets(targets, self.level_anchors(maps[0].device), self.strides,
                              [tuple(m.shape[2:4]) for m in maps], self.anchor_t, [h.neighbours for h in self.heads])

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
                anchors = self.level_anchors(raw.device)[level]
                iou = ciou(predicted_boxes(raw, pos, anchors, self.strides[level], self.heads[level]), pos.boxes)
                lbox = lbox + (1 - iou).mean()
                target = (1 - self.iou_ratio) + self.iou_ratio * iou.detach().clamp(min=0)
                tobj[pos.batch, pos.anchor, pos.gj, pos.gi] = target.to(tobj.dtype)
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
