"""Distillation terms for one-stage anchor-based detectors (raw head maps ``head:i`` = ``[B, A, H, W, 5+C]``,
see ``hintdistill.detection.boxes``). Objective, as in Chen et al. 2017:
``L = YoloLoss + ObjectnessScaledKD or ChenDetectionKD + γ · NeckHints`` with γ = 0.5 (the Distiller weights).

**ObjectnessScaledKD** — Mehta & Ozturk 2018, "Object detection at 200 Frames Per Second":

    f_obj^Comb = f_obj(o^gt, ô) + λ_D · f_obj(o^T, ô)
    f_cl^Comb  = f_cl(p^gt, p̂)  + ô^T · λ_D · f_cl(p^T, p̂)
    f_bb^Comb  = f_bb(b^gt, b̂)  + ô^T · λ_D · f_bb(b^T, b̂)          λ_D = 1

The ground-truth parts are ``YoloLoss``; this term is the teacher parts, per level and summed over levels, each
with the detection loss's own function and gain (``units="detection"``, the default: the paper pairs the same f
for the ground truth and the teacher, and our f are YOLOv5's):

    obj:  1.0  · Σ_l balance_l · mean_cells KL(σ(o^T) ‖ σ(ô))                  (balance 4, 1, 0.4: the hard loss's)
    cls:  0.5  · Σ_l Σ_cells σ(o^T) · mean_c KL(σ(p^T_c) ‖ σ(p̂_c)) / max(Σ_cells σ(o^T), 1)
    box:  0.05 · Σ_l Σ_cells σ(o^T) · (1 − CIoU(b̂, b^T))            / max(Σ_cells σ(o^T), 1)

times λ_D, with Bernoulli KLs (the BCE's gradients, 0 when student == teacher); the class and box parts are
averaged over the teacher's (soft) positives where the hard loss averages over its assigned ones, and each box is
decoded by its own head. The gains and balance are the ``detection`` term's defaults (YOLOv5's); a recipe that
changes that term's gains scales these with ``lambda_d`` or the term's weight. ``units="paper"`` keeps the
paper's YOLOv2 forms beside our YOLOv5 hard loss, equal level weights and means over all cells:
λ_D · [ mean_cells KL(σ(o^T) ‖ σ(ô))  +  mean_cells σ(o^T) · mean_c KL(σ(p^T_c) ‖ σ(p̂_c))
        +  mean_cells σ(o^T) · Σ_4 (β̂ − β^T)² ], β = ``box_params`` (centre offset in cells, size in anchors).
On raccoon its box part cost 4 points where the detection units gain 4.5 (benchmarks/RESULTS.md, point 10).
FM-NMS (on by default): in every 3×3 neighbourhood of cells, among the teacher's
candidates (all anchors) whose arg-max class is the same, only the one with the highest objectness keeps
it; the others get teacher objectness 0 (ties are all kept). ``quality="iou"`` (off by default: the paper's
form) makes the objectness target σ(o^T) · IoU(student box, teacher box) at each anchor and cell, as
``chen_kd``'s ``quality`` does for its soft foreground (the weights of the class and box parts stay σ(o^T)).
``box_weight`` scales the teacher-box part (1, the paper's; 0 drops it).

**ChenDetectionKD** — Chen et al. 2017, "Learning Efficient Object Detection Models with Knowledge
Distillation", adapted to a one-stage head. Per anchor and cell the class distribution is
``P = softmax(Z / T)`` over [background, class_1..C] with ``Z = [0, o + log softmax(z)]`` (at T = 1,
``P = [1 − σ(o), σ(o) · softmax(z)]``: objectness is the background/foreground split), and

    L      = μ · L_hard + (1 − μ) · L_soft + L_box + ν · L_b
    L_soft = −Σ_c w_c · P_t,c · log P_s,c,   w_0 = 1.5 (background), w_c = 1
    L_b    = e_s  if e_s + m > e_t, else 0                     (teacher-bounded regression)

The term contains the hard loss (a YoloLoss with its objectness and class gains times μ; its box loss
L_box untouched), so a stage uses ``chen_kd`` *instead of* ``detection``. L_soft is averaged per level and
summed with the hard objectness loss's level balance and gain, so μ and 1 − μ weigh like with like. It is
reported as Σ_c w_c P_t,c (log P_t,c − log P_s,c), the cross-entropy minus a term that does not depend on
the student: the gradients are the paper's, and the value is 0 when student == teacher.

``quality="iou"`` (the default; ``"none"`` is the paper's form) moves part of the teacher's foreground mass to
background at each anchor and cell: ``P'_t = [1 − q (1 − P_t,0), q P_t,1..C]`` with ``q = IoU(student box, teacher box)``
there, without gradient. In Chen's two-stage detector teacher and student classify the same proposal; in a
one-stage head each has its own box at the cell, the teacher's confidence is about its box, and YOLO's own
objectness target is the IoU of the predicted box. Without it a student can learn the teacher's confidence
for boxes that miss (see ``benchmarks/detection_diagnose.py``: confident positives whose box misses); with it,
chen_kd went from 6.5 points below its baseline to 4.1 above on raccoon (9 seeds) and from +1.5 to +2.8 on
BCCD (3 seeds, every seed better): benchmarks/RESULTS.md.

The regression error e at the GT positives of ``assign_targets``: by default (``bounded_iou``) e = 1 − CIoU,
the hard box loss's own error, scaled by its gain, so ν weighs L_b against L_box in the same units (YOLO's
CIoU takes the place of Faster R-CNN's smooth L1). ``bounded`` is the paper's form on the head's box
parameters R (centre offset in cells, size in anchors), e = ‖R − y‖², unscaled: on large objects the size
targets approach the (2σ)² ≤ 4 ceiling where its gradient vanishes, and at ν = 0.5 it outweighs the hard box
loss (gain 0.05) tens of times; ``benchmarks/detection_diagnose.py`` measures both. ``l2`` is Table 4's
unbounded ``‖R_s − R_t‖²`` (the teacher's box as the target, whatever its error).

**NeckHints** — Chen et al. 2017 hints (``‖V − Z‖₂²`` or ``‖V − Z‖₁`` through a 1×1 conv adaptation
layer) on the neck levels, optionally masked by Wang et al. 2019's fine-grained imitation mask: per GT
box the IoU with every anchor at every location of the level; locations where some anchor's IoU exceeds
ψ · (that box's max IoU), ψ = 0.5; union over the boxes. ``reduction="mean"`` (default) averages the
distance over channels and (masked) locations, so γ does not depend on the feature size; ``reduction="paper"``
is the papers' form: Chen's ‖V − Z‖² summed over channels and locations per image (batch mean), and with
the mask Wang's ``1/(2 N_p) Σ_ij I_ij Σ_c (f_ij,c − t_ij,c)²``, N_p the masked locations of the batch.
The levels' losses are averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torchvision.ops import box_iou

from ..detection.assign import assign_targets, target_box_params
from ..detection.boxes import box_params, ciou, paired_iou
from ..detection.heads import HeadSpec, decode_boxes, describe, head_differences
from ..detection.heads import box_params as head_box_params
from ..detection.loss import (
    DEFAULT_GAINS,
    YoloLoss,
    anchor_buffer,
    as_heads,
    context_heads,
    default_balance,
    detector_context,
    gain_scales,
    head_maps,
    predicted_boxes,
)
from ..errors import ConfigError, ShapeError
from ..schema import Weight
from ..taps import Outputs, feature_key
from .base import Term
from .hints import HintLoss
from .registry import HintPair, TermConfig, register_term, weight_text


def _check_same_heads(student: Outputs, teacher: Outputs, term: str, s_heads: Sequence[HeadSpec] | None = None,
                      t_heads: Sequence[HeadSpec] | None = None) -> tuple[list, list]:
    """The two detectors' raw maps, if they can be compared anchor by anchor and cell by cell: same levels
    (strides), anchors per level and anchor sizes (when both heads are known) and classes; else what differs."""
    s_maps, t_maps = head_maps(student), head_maps(teacher, "teacher")
    s_shapes, t_shapes = [tuple(m.shape) for m in s_maps], [tuple(m.shape) for m in t_maps]
    differs = head_differences(s_heads, t_heads) if s_heads and t_heads else []
    if s_shapes != t_shapes or differs:
        s_cls, t_cls = s_maps[0].shape[-1] - 5, t_maps[0].shape[-1] - 5
        if s_cls != t_cls:
            differs.append(f"classes: student {s_cls}, teacher {t_cls} (a class map is not supported: train "
                           f"both on the same data.classes)")
        what = "; ".join(differs) or f"student heads are {s_shapes}, teacher heads {t_shapes}"
        raise ShapeError(
            f"{term} compares the raw head maps cell by cell, so teacher and student need the same levels, "
            f"anchors and classes; {what}. Build the student with the teacher's num_classes and anchors "
            f"(student args anchors: teacher), or use NeckHints / pkd, which compare neck features.")
    return s_maps, t_maps


def _level_params(raw: torch.Tensor, heads: Sequence[HeadSpec] | None, level: int) -> torch.Tensor:
    """The box parameters of a raw map (or its picked rows) as its own head decodes them (YOLOv5's without)."""
    return box_params(raw) if not heads else head_box_params(raw, heads[level])


def _teacher_heads(context: dict, teacher_index: int) -> list[HeadSpec] | None:
    teachers = context.get("teacher_heads") or []
    return list(teachers[teacher_index]) if teacher_index < len(teachers) and teachers[teacher_index] else None


def bernoulli_kl(student_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(target ‖ σ(student_logits)) = BCE(student, target) − H(target)."""
    entropy = -(torch.special.xlogy(target, target) + torch.special.xlogy(1 - target, 1 - target))
    return F.binary_cross_entropy_with_logits(student_logits, target, reduction="none") - entropy


def fm_nms(objectness: torch.Tensor, class_scores: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """Feature-map NMS (Mehta & Ozturk 2018): ``objectness`` [B, A, H, W], ``class_scores`` [B, A, H, W, C] →
    bool mask [B, A, H, W], True where the candidate has the highest objectness among all candidates of
    its (arg-max) class in the ``kernel`` × ``kernel`` cell neighbourhood."""
    labels = class_scores.argmax(-1)
    one_hot = F.one_hot(labels, class_scores.shape[-1]).to(objectness.dtype)
    per_class = (objectness.unsqueeze(-1) * one_hot).amax(1).permute(0, 3, 1, 2)  # [B, C, H, W]
    neighbourhood = F.max_pool2d(per_class, kernel, stride=1, padding=kernel // 2).permute(0, 2, 3, 1)
    best = neighbourhood.unsqueeze(1).expand(*one_hot.shape).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return objectness >= best


def teacher_objectness(t: torch.Tensor, nms: bool) -> torch.Tensor:
    """σ(o_t) of a raw teacher map, zero where feature-map NMS suppresses the cell (``nms``)."""
    t_obj = t[..., 4].sigmoid()
    return t_obj * fm_nms(t_obj, t[..., 5:].sigmoid()) if nms else t_obj


def boxes_to_teacher(s: torch.Tensor, t: torch.Tensor, weight: torch.Tensor, level: int,
                     heads: Sequence[HeadSpec] | None, teacher_heads: Sequence[HeadSpec] | None) -> torch.Tensor:
    """Mean over cells of ``weight`` ‖R_s − R_t‖², each side's box parameters as its own head decodes them."""
    r_s, r_t = _level_params(s, heads, level), _level_params(t, teacher_heads, level)
    return (weight * ((r_s - r_t) ** 2).sum(-1)).mean()


@register_term("objectness_kd")
class ObjectnessScaledKD(Term):
    """Mehta & Ozturk 2018: teacher objectness as target, teacher class and box weighted by it."""

    class Config(TermConfig):
        """Objectness-scaled distillation (Mehta & Ozturk 2018)."""

        lambda_d: float = 1.0
        fm_nms: bool = True
        quality: Literal["none", "iou"] = Field("none", description="'iou': the student's objectness target at "
                                                "each anchor and cell is the teacher's objectness times the IoU "
                                                "of the student's box with the teacher's box there (no gradient "
                                                "through it), as chen_kd's quality; 'none' is the paper's form")
        box_weight: float = Field(1.0, ge=0, description="weight of the part that pulls the student's boxes to "
                                  "the teacher's at the cells the teacher is confident at (the paper's 1; 0 drops "
                                  "it, as chen_kd's nu: 0 drops its teacher-bounded regression)")
        units: Literal["detection", "paper"] = Field("detection", description="'detection' (default): each "
                                                     "teacher part the detection loss's own function and gain "
                                                     "(objectness level balance, class and CIoU box losses averaged "
                                                     "over the teacher's objectness mass), as the paper pairs the "
                                                     "same f for ground truth and teacher; 'paper': the paper's "
                                                     "YOLOv2 forms (equal level weights, means over all cells, "
                                                     "squared error of the box parameters)")

    def __init__(self, lambda_d: float = 1.0, fm_nms: bool = True, teacher_index: int = 0,
                 heads: Sequence[HeadSpec] | None = None, teacher_heads: Sequence[HeadSpec] | None = None,
                 quality: str = "none", box_weight: float = 1.0, units: str = "detection"):
        super().__init__()
        self.box_weight = box_weight
        if units not in ("paper", "detection"):
            raise ConfigError(f"ObjectnessScaledKD units='{units}': choose 'paper' or 'detection' (the detection "
                              "loss's own functions and gains)")
        if units == "detection" and box_weight and not heads:
            raise ConfigError("ObjectnessScaledKD units='detection' (the default) decodes boxes for its CIoU and "
                              "needs the student's anchors: use it in a detection recipe (the heads come from the "
                              "model), pass heads=model_heads(student) (hintdistill.detection.heads), or choose "
                              "units='paper' (squared error of the box parameters, no anchors needed)")
        self.units = units
        if quality not in ("none", "iou"):
            raise ConfigError(f"ObjectnessScaledKD quality='{quality}': choose 'none' (the paper's target) or 'iou'")
        if quality == "iou" and not heads:
            raise ConfigError("ObjectnessScaledKD quality='iou' decodes boxes and needs the student's anchors: "
                              "use it in a detection recipe (the heads come from the model) or pass heads=...")
        self.lambda_d, self.fm_nms, self.teacher_index, self.quality = lambda_d, fm_nms, teacher_index, quality
        # each side's box parameters as its own head decodes them (YOLOv5's when not given)
        self.heads, self.teacher_heads = heads, teacher_heads

    @classmethod
    def from_config(cls, cfg: TermConfig, context: dict) -> ObjectnessScaledKD:
        args = cfg.term_args()
        decodes = args.get("quality") == "iou" or args.get("units") == "detection"
        heads = context_heads(cfg.type, context) if decodes else context.get("heads")
        return cls(**args, heads=heads, teacher_heads=_teacher_heads(context, 0))

    def setup(self, student: Outputs, teachers: list[Outputs]) -> None:
        _check_same_heads(student, teachers[self.teacher_index], type(self).__name__, self.heads, self.teacher_heads)

    def levels(self, student: Outputs, teachers: list[Outputs]):
        """Per level, its (objectness, class, teacher-box) parts with gradients, before λ_D (box None at weight 0)."""
        s_maps, t_maps = _check_same_heads(student, teachers[self.teacher_index], type(self).__name__)
        ciou_box = self.units == "detection" and bool(self.box_weight)
        balance = default_balance(len(s_maps))
        for level, (s, t) in enumerate(zip(s_maps, t_maps, strict=True)):
            s, t = s.float(), t.detach().float()
            t_obj = teacher_objectness(t, self.fm_nms)
            target = t_obj
            if self.quality == "iou" or ciou_box:  # each side's boxes decoded once, by its own head
                s_boxes = decode_boxes(s, self.heads[level])
                t_boxes = decode_boxes(t, (self.teacher_heads or self.heads)[level])
            if self.quality == "iou":  # the teacher's confidence is about its own box: scale by the boxes' IoU
                target = t_obj * paired_iou(s_boxes.detach(), t_boxes)
            obj = bernoulli_kl(s[..., 4], target).mean()
            cls_kl = bernoulli_kl(s[..., 5:], t[..., 5:].sigmoid()).mean(-1)
            if self.units == "paper":
                cls = (t_obj * cls_kl).mean()
                box = (self.box_weight * boxes_to_teacher(s, t, t_obj, level, self.heads, self.teacher_heads)
                       if self.box_weight else None)
            else:  # the detection loss's functions: its level balance, gains, means over (soft) positives
                mass = t_obj.sum().clamp(min=1.0)
                obj = DEFAULT_GAINS["obj"] * balance[level] * obj
                cls = DEFAULT_GAINS["cls"] * (t_obj * cls_kl).sum() / mass
                box = (self.box_weight * DEFAULT_GAINS["box"] * (t_obj * (1.0 - ciou(s_boxes, t_boxes))).sum() / mass
                       if ciou_box else None)
            yield s, obj, cls, box

    def loss_parts(self, student: Outputs, teachers: list[Outputs], targets: Any = None) -> dict[str, torch.Tensor]:
        """The weighted parts (with gradients, λ_D included): obj, cls, box."""
        parts: dict[str, torch.Tensor] = {}
        for s, obj, cls, box in self.levels(student, teachers):
            for name, value in (("obj", obj), ("cls", cls), ("box", s.sum() * 0 if box is None else box)):
                parts[name] = parts[name] + value if name in parts else value
        return {k: self.lambda_d * v for k, v in parts.items()}

    def forward(self, student: Outputs, teachers: list[Outputs], targets: Any = None) -> torch.Tensor:
        total, parts = None, {"obj": 0.0, "cls": 0.0, "box": 0.0}  # parts logged as objectness_kd.obj, .cls, .box
        for s, obj, cls, box in self.levels(student, teachers):
            total = (s.sum() * 0 if total is None else total) + obj + cls  # the sum in the order it always had
            parts["obj"], parts["cls"] = parts["obj"] + obj.detach(), parts["cls"] + cls.detach()
            if box is not None:
                total = total + box
                parts["box"] = parts["box"] + box.detach()
        self.last = {k: self.lambda_d * torch.as_tensor(v, device=total.device) for k, v in parts.items()}
        return self.lambda_d * total


def log_class_distribution(raw: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log softmax(Z / T)`` over [background, classes] → ``[..., C+1]``, where the logits ``Z = [0, o + log
    softmax(z)]`` are those whose softmax at T = 1 is ``[1 − σ(o), σ(o) · softmax(z)]`` (objectness as the
    background/foreground split). At T ≠ 1 this is the paper's ``softmax(Z/T)``, not σ(o/T) · softmax(z/T)."""
    logits = torch.cat([torch.zeros_like(raw[..., 4:5]), raw[..., 4:5] + F.log_softmax(raw[..., 5:], -1)], -1)
    return F.log_softmax(logits / temperature, -1)


REGRESSIONS = ("bounded_iou", "bounded", "l2", "teacher_weighted")
HARD_GAINS = ("box_weight", "obj_weight", "cls_weight")


@register_term("chen_kd")
class ChenDetectionKD(Term):
    """Chen et al. 2017 on a one-stage head, hard loss included: μ scales the hard objectness/class loss,
    1 − μ the weighted soft class loss, ν the teacher-bounded regression. Use it instead of ``detection``."""

    class Config(TermConfig):
        """Chen et al. 2017 class-weighted soft targets and teacher-bounded regression, one-stage form."""

        mu: float = Field(0.5, ge=0, le=1)
        temperature: float = Field(1.0, gt=0)
        background_weight: float = 1.5
        margin: float = 0.0
        nu: float = 0.5
        regression: Literal["bounded_iou", "bounded", "l2", "teacher_weighted"] = Field(
            "bounded_iou", description="teacher-bounded 1 - CIoU (the box loss's units), the paper's teacher-"
            "bounded L2 on the box parameters, plain L2 to the teacher at the GT positives, or L2 to the "
            "teacher's box at every cell weighted by the teacher's objectness (after fm_nms where on): the boxes "
            "of the cells the soft term teaches confidence at")
        box_weight: float | None = Field(None, ge=0, description="the hard loss's gains (see the detection term)")
        obj_weight: float | None = Field(None, ge=0)
        cls_weight: float | None = Field(None, ge=0)
        normalise: Literal["none", "yolov5"] = "none"
        fm_nms: bool = Field(False, description="feature-map NMS on the teacher's soft targets (Mehta & Ozturk "
                             "2018): a cell that is not its class's most confident in its 3x3 neighbourhood teaches "
                             "background; false is the paper's form")
        quality: Literal["none", "iou"] = Field("iou", description="'iou': at each anchor and cell the teacher's "
                                                "foreground mass is scaled by the IoU of the student's box with the "
                                                "teacher's box there (no gradient through it); the rest goes to "
                                                "background. 'none' is the paper's form")

    def __init__(self, anchors: Any, strides: Sequence[float] = (8, 16, 32), mu: float = 0.5,
                 temperature: float = 1.0, background_weight: float = 1.5, margin: float = 0.0, nu: float = 0.5,
                 anchor_t: float = 4.0, teacher_index: int = 0, regression: str = "bounded_iou",
                 hard: dict | None = None, teacher_heads: Sequence[HeadSpec] | None = None, fm_nms: bool = False,
                 quality: str = "iou"):
        super().__init__()
        if not 0.0 <= mu <= 1.0:
            raise ConfigError(f"ChenDetectionKD mu={mu}: mu is the hard-loss share and must be in [0, 1]")
        if regression not in REGRESSIONS:
            raise ConfigError(f"ChenDetectionKD regression='{regression}': choose one of {', '.join(REGRESSIONS)}")
        self.regression = regression
        self.heads = as_heads(anchors, strides)  # the student's; the teacher's must line up with them
        self.teacher_heads = list(teacher_heads) if teacher_heads else self.heads
        self.register_buffer("anchors", anchor_buffer(self.heads))
        self.strides = [h.stride for h in self.heads]
        self.mu, self.temperature, self.background_weight = mu, temperature, background_weight
        self.margin, self.nu, self.anchor_t, self.teacher_index = margin, nu, anchor_t, teacher_index
        if quality not in ("none", "iou"):
            raise ConfigError(f"ChenDetectionKD quality='{quality}': choose 'none' (the paper's soft targets) or 'iou'")
        self.fm_nms, self.quality = fm_nms, quality
        self.obj_weight = (hard or {}).get("obj_weight", 1.0)  # the soft loss's gain (the hard one's is μ × it)
        self.hard = self.yolo_loss(**(hard or {}))
        self.last: dict[str, torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg: TermConfig, context: dict) -> ChenDetectionKD:
        heads, strides = detector_context(cfg.type, context)
        args = cfg.term_args()
        hard = {k: args.pop(k) for k in HARD_GAINS if args.get(k) is not None}
        hard["normalise"] = args.pop("normalise")
        for k in HARD_GAINS:
            args.pop(k, None)
        return cls(heads, strides, hard=hard, teacher_heads=_teacher_heads(context, 0), **args)

    def yolo_loss(self, **kwargs: Any) -> YoloLoss:
        """The hard part μ · L_hard: a YoloLoss with objectness and class weights scaled by μ."""
        kwargs["obj_weight"] = self.mu * kwargs.get("obj_weight", 1.0)
        kwargs["cls_weight"] = self.mu * kwargs.get("cls_weight", 0.5)
        return YoloLoss(self.heads, self.strides, anchor_t=self.anchor_t, **kwargs)

    def setup(self, student: Outputs, teachers: list[Outputs]) -> None:
        _check_same_heads(student, teachers[self.teacher_index], type(self).__name__, self.heads, self.teacher_heads)

    def soft_loss(self, s_maps: list[torch.Tensor], t_maps: list[torch.Tensor]) -> torch.Tensor:
        """Σ_c w_c P_t,c (log P_t,c − log P_s,c) per anchor and cell, averaged per level and summed over levels
        with the hard objectness loss's level balance and gain, so that μ and 1 − μ mix like with like."""
        _, obj_scale, _ = gain_scales(s_maps, self.strides, self.hard.normalise)
        total = s_maps[0].sum() * 0
        for level, (s, t) in enumerate(zip(s_maps, t_maps, strict=True)):
            t = t.detach().float()
            log_ps = log_class_distribution(s.float(), self.temperature)
            log_pt = log_class_distribution(t, self.temperature)
            if self.fm_nms:  # suppressed cells teach pure background (log 0 as -1e4: 0 · (-1e4 - log P_s) = 0)
                keep = fm_nms(t[..., 4].sigmoid(), t[..., 5:].sigmoid())
                background = torch.full_like(log_pt, -1e4)
                background[..., 0] = 0.0
                log_pt = torch.where(keep.unsqueeze(-1), log_pt, background)
            if self.quality == "iou":
                log_pt = self.quality_weighted(log_pt, s.detach().float(), t, level)
            weights = torch.ones(log_ps.shape[-1], device=s.device)
            weights[0] = self.background_weight
            per_cell = (weights * log_pt.exp() * (log_pt - log_ps)).sum(-1)
            total = total + self.hard.balance[level] * per_cell.mean()
        return self.obj_weight * obj_scale * total

    def quality_weighted(self, log_pt: torch.Tensor, s: torch.Tensor, t: torch.Tensor, level: int) -> torch.Tensor:
        """``log P'_t`` with ``P'_t = [1 − q (1 − P_t,0), q P_t,1..C]``, ``q = IoU(student box, teacher box)`` per
        anchor and cell. The teacher's confidence is a statement about its own box; a one-stage student has its
        own box at the cell (in Chen's two-stage detector both classify the same proposal), and YOLO's hard
        objectness target is that box's IoU. Taught the teacher's confidence whatever its box, a student
        becomes sure of boxes that miss (raccoon: confident thin boxes inside the animal)."""
        q = paired_iou(decode_boxes(s, self.heads[level]), decode_boxes(t, self.teacher_heads[level]))
        log_q = torch.log(q).clamp(min=-1e4).unsqueeze(-1)  # log 0 as -1e4, as fm_nms does: exp gives 0
        foreground = log_pt[..., 1:] + log_q
        background = torch.log1p(-(q * -torch.expm1(log_pt[..., 0]))).clamp(min=-1e4)
        return torch.cat([background.unsqueeze(-1), foreground], -1)

    def bounded_regression(self, s_maps: list[torch.Tensor], t_maps: list[torch.Tensor], targets: list[dict]):
        """Teacher-bounded regression averaged over the GT positives (0 without any):

        - ``bounded_iou``: (1 − CIoU_s) where (1 − CIoU_s) + m > (1 − CIoU_t), times the hard box gain, i.e. in
          the units of the hard box loss (CIoU replaces the smooth-L1 of Faster R-CNN's regression);
        - ``bounded``: the paper's ‖R_s − y‖² where ‖R_s − y‖² + m > ‖R_t − y‖², with R the head's box
          parameters (centre offset in cells, size in anchors), unscaled;
        - ``l2``: ‖R_s − R_t‖², the teacher's box as the target whatever its error (Table 4's L2)."""
        if self.regression == "teacher_weighted":
            return self.teacher_weighted_regression(s_maps, t_maps)
        anchors = self.hard.level_anchors(s_maps[0].device)
        positives = assign_targets(targets, anchors, self.strides, [tuple(m.shape[2:4]) for m in s_maps],
                                   self.anchor_t, [h.neighbours for h in self.heads])
        losses = []
        for level, (s, t, pos) in enumerate(zip(s_maps, t_maps, positives, strict=True)):
            if not len(pos):
                continue
            if self.regression == "bounded_iou":
                stride, s_head, t_head = self.strides[level], self.heads[level], self.teacher_heads[level]
                e_s = 1 - ciou(predicted_boxes(s.float(), pos, anchors[level], stride, s_head), pos.boxes)
                with torch.no_grad():
                    e_t = 1 - ciou(predicted_boxes(t.float(), pos, anchors[level], stride, t_head), pos.boxes)
                losses.append(e_s * (e_s + self.margin > e_t))
                continue
            r_s = head_box_params(s[pos.batch, pos.anchor, pos.gj, pos.gi].float(), self.heads[level])
            r_t = head_box_params(t[pos.batch, pos.anchor, pos.gj, pos.gi].detach().float(), self.teacher_heads[level])
            if self.regression == "l2":
                losses.append(((r_s - r_t) ** 2).sum(-1))
                continue
            y = target_box_params(pos, anchors[level], self.strides[level])
            d_s, d_t = ((r_s - y) ** 2).sum(-1), ((r_t - y) ** 2).sum(-1)
            losses.append(d_s * (d_s + self.margin > d_t))
        if not losses:
            return s_maps[0].sum() * 0
        if self.regression != "bounded_iou":
            return torch.cat(losses).mean()
        box_scale, _, _ = gain_scales(s_maps, self.strides, self.hard.normalise)
        return self.hard.box_weight * box_scale * torch.cat(losses).mean()

    def teacher_weighted_regression(self, s_maps: list[torch.Tensor], t_maps: list[torch.Tensor]) -> torch.Tensor:
        """Σ_levels mean over cells of σ(o_t) ‖R_s − R_t‖² (Mehta & Ozturk's box term): wherever the teacher is
        confident (and, with fm_nms, locally the most confident), the student learns the teacher's box."""
        total = s_maps[0].sum() * 0
        for level, (s, t) in enumerate(zip(s_maps, t_maps, strict=True)):
            s, t = s.float(), t.detach().float()
            total = total + boxes_to_teacher(s, t, teacher_objectness(t, self.fm_nms), level, self.heads,
                                             self.teacher_heads)
        return total

    def loss_parts(self, student: Outputs, teachers: list[Outputs], targets: list[dict]) -> dict[str, torch.Tensor]:
        """The objective's weighted parts (with gradients): hard_box, hard_obj, hard_cls, soft, bounded."""
        s_maps, t_maps = _check_same_heads(student, teachers[self.teacher_index], type(self).__name__)
        parts = {f"hard_{k}": v for k, v in self.hard.loss_parts(student, teachers, targets).items()}
        parts["soft"] = (1 - self.mu) * self.soft_loss(s_maps, t_maps)
        # nu = 0 (the recipes' setting): no second target assignment and CIoU pass per step for a zero term
        parts["bounded"] = (self.nu * self.bounded_regression(s_maps, t_maps, targets) if self.nu
                            else s_maps[0].sum() * 0)
        return parts

    def forward(self, student: Outputs, teachers: list[Outputs], targets: list[dict]) -> torch.Tensor:
        parts = self.loss_parts(student, teachers, targets)
        self.last = {k: v.detach() for k, v in parts.items()}  # logged as chen_kd.soft, chen_kd.hard_obj, ...
        return sum(parts.values())


def imitation_mask(boxes: Sequence[torch.Tensor], anchors: torch.Tensor, stride: float, grid: tuple[int, int],
                   psi: float = 0.5) -> torch.Tensor:
    """Wang et al. 2019's fine-grained imitation mask ``[B, 1, H, W]`` for one level: ``boxes`` one
    ``[N, 4]`` xyxy pixel tensor per image, ``anchors`` ``[A, 2]`` pixels centred on each cell centre."""
    h, w = grid
    device = anchors.device
    jj, ii = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    centres = (torch.stack([ii, jj], -1).float() + 0.5) * stride  # [H, W, 2]
    half = anchors.float().view(1, 1, -1, 2) / 2
    anchor_boxes = torch.cat([centres.unsqueeze(2) - half, centres.unsqueeze(2) + half], -1).view(-1, 4)
    masks = []
    for gt in boxes:
        gt = torch.as_tensor(gt, dtype=torch.float32, device=device).reshape(-1, 4)
        if not len(gt):
            masks.append(torch.zeros(h, w, device=device))
            continue
        iou = box_iou(gt, anchor_boxes)  # [N, H*W*A]
        hit = (iou > psi * iou.amax(1, keepdim=True)) & (iou > 0)
        masks.append(hit.view(len(gt), h, w, -1).any(-1).any(0).float())
    return torch.stack(masks).unsqueeze(1)


NECK_LEVELS = [("neck.p3", "neck.p3"), ("neck.p4", "neck.p4"), ("neck.p5", "neck.p5")]


@register_term("neck_hints")
class NeckHints(Term):
    """Hints on neck levels (e.g. ``neck.p3/p4/p5``) through adaptation layers, optionally imitation-masked.

    ``levels``: ``(teacher_layer, student_layer)`` pairs in stride order (8, 16, 32); with
    ``imitation_mask`` the i-th pair uses ``anchors[i]`` and ``strides[i]``."""

    class Config(TermConfig):
        """Hints on the detector's neck levels through adaptation layers (Chen et al.; Wang et al. mask)."""

        # γ 0.05: with the mean reduction the hints then start near the detection loss's size on raccoon; at 0.5
        # they started at 10x it and put every raccoon seed below its baseline (benchmarks/RESULTS.md, issue 13)
        weight: Weight = 0.05
        levels: list[tuple[str, str]] = NECK_LEVELS
        distance: Literal["l2", "l1"] = "l2"
        adapter: Literal["conv1x1", "identity"] = "conv1x1"
        imitation_mask: bool = False
        psi: float = Field(0.5, gt=0, le=1)
        reduction: Literal["mean", "paper"] = Field("mean", description="mean over channels and locations, or "
                                                    "the papers' sums (Chen: per image; Wang: over the mask / 2 N_p)")

        def describe(self) -> str:
            pairs = ", ".join(f"{t}←{s}" for t, s in self.levels)
            return f"neck_hints {pairs} via {self.adapter} ({weight_text(self.weight)})"

        def hint_pairs(self) -> list[HintPair]:
            return [HintPair(t, s, self.adapter, "none", "none", 0, f"hints.{i}.")
                    for i, (t, s) in enumerate(self.levels)]

    @classmethod
    def from_config(cls, cfg: TermConfig, context: dict) -> NeckHints:
        # the mask is drawn on the teacher's feature grid, so with the teacher's anchors (the task's without one)
        heads = _teacher_heads(context, 0) or context.get("heads")
        if heads:
            return cls(**cfg.term_args(), anchors=heads)
        return cls(**cfg.term_args(), anchors=context.get("anchors"), strides=context.get("strides", (8, 16, 32)))

    def __init__(self, levels: Sequence[tuple[str, str]], distance: str = "l2", adapter: str = "conv1x1",
                 imitation_mask: bool = False, psi: float = 0.5, anchors: Any = None,
                 strides: Sequence[float] = (8, 16, 32), teacher_index: int = 0, reduction: str = "mean"):
        super().__init__()
        if reduction not in ("mean", "paper"):
            raise ConfigError(f"NeckHints reduction='{reduction}': choose 'mean' or 'paper'")
        self.reduction, self.distance = reduction, distance
        if not levels:
            raise ConfigError("NeckHints needs at least one (teacher_layer, student_layer) pair, e.g. "
                              "[('neck.p3', 'neck.p3'), ('neck.p4', 'neck.p4'), ('neck.p5', 'neck.p5')]")
        if imitation_mask and anchors is None:
            raise ConfigError("NeckHints(imitation_mask=True) needs the anchors (anchors=teacher.anchors): the "
                              "mask is built from the IoU of the GT boxes with the anchors")
        self.levels = [tuple(pair) for pair in levels]
        self.hints = nn.ModuleList(HintLoss(hint=t, guided=s, adapter=adapter, distance=distance,
                                            teacher_index=teacher_index) for t, s in self.levels)
        self.use_mask, self.psi = imitation_mask, psi
        self.strides, self.anchor_counts = [float(s) for s in strides], None
        if anchors is not None:
            heads = as_heads(anchors, strides)
            if imitation_mask and len(heads) < len(self.levels):
                raise ConfigError(f"NeckHints: {len(self.levels)} levels but the detector has {len(heads)} heads "
                                  f"({describe(heads)}); the i-th level's mask uses the i-th head's anchors")
            self.strides = [h.stride for h in heads]
            self.register_buffer("anchors", anchor_buffer(heads))
            self.anchor_counts = [len(h.anchors) for h in heads]
        else:
            self.anchors = None

    def student_taps(self) -> list[str]:
        return [s for _, s in self.levels]

    def teacher_taps(self) -> list[str]:
        return [t for t, _ in self.levels]

    def setup(self, student: Outputs, teachers: list[Outputs]) -> None:
        for (t, s), hint in zip(self.levels, self.hints, strict=True):
            try:
                hint.setup(student, teachers)
            except ShapeError as e:
                raise ShapeError(f"NeckHints level ({t} ← {s}): {e}") from e

    def forward(self, student: Outputs, teachers: list[Outputs], targets: list[dict] | None = None) -> torch.Tensor:
        losses = []
        for level, hint in enumerate(self.hints):
            mask = None
            if self.use_mask:
                grid = tuple(teachers[hint.teacher_index][feature_key(hint.hint)].shape[2:4])
                anchors = self.anchors.view(-1, 2).split(self.anchor_counts)[level]
                mask = imitation_mask([t["boxes"] for t in targets], anchors, self.strides[level], grid, self.psi)
            if self.reduction == "paper":
                losses.append(self.paper_distance(hint, student, teachers, mask))
            else:
                losses.append(hint(student, teachers, targets, mask=mask))
        return torch.stack(losses).mean()

    def paper_distance(self, hint: HintLoss, student: Outputs, teachers: list[Outputs],
                       mask: torch.Tensor | None) -> torch.Tensor:
        """Chen's ‖V − Z‖² per image (batch mean), or with a mask Wang's Σ I Σ_c (·)² / (2 N_p)."""
        target = teachers[hint.teacher_index][feature_key(hint.hint)].float()
        adapted = hint.adapt(student[feature_key(hint.guided)].float(), target.shape)
        diff = (adapted - target) ** 2 if self.distance == "l2" else (adapted - target).abs()
        if mask is None:
            return diff.flatten(1).sum(1).mean()
        mask = mask.to(diff.dtype)
        return (diff * mask).sum() / (2 * mask.sum()).clamp(min=1.0)
