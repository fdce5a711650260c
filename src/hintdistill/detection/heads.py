"""The head contract every detector states: per level (ordered by stride) its stride, anchors and box decoding.

A detector model exposes ``head_specs`` (a list of ``HeadSpec``, stride ascending, one per raw map ``head:i``
``[B, A, H, W, 5+C]``); the loss, the distillation terms, evaluation and the overlays read it from the model,
so a new detector family only has to describe its heads. Box decodings (σ the logistic, (i, j) the cell,
s = ``scale_x_y``; the box parameters are the centre offset from the cell's corner in cells and the size in
units of the anchor):

    yolov5              offset = 2σ(t_xy) − 0.5              size = (2σ(t_wh))²     (the built-in yolo family)
    darknet             offset = s·σ(t_xy) − (s − 1)/2       size = exp(t_wh)       (Darknet's [yolo])
    darknet_new_coords  offset = s·σ(t_xy) − (s − 1)/2       size = (2σ(t_wh))²     (Darknet's new_coords=1)

Objectness and class probabilities are σ(t) in all three.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ShapeError
from .boxes import box_params as yolov5_box_params
from .boxes import xywh_to_xyxy

DECODINGS = ("yolov5", "darknet", "darknet_new_coords")
# each decoding in words, for deployment metadata (export.py)
DECODING_FORMULAS = {
    "yolov5": "xy = (2 sigmoid(t_xy) - 0.5 + cell) * stride, wh = (2 sigmoid(t_wh))^2 * anchor; objectness and "
              "classes: sigmoid",
    "darknet": "xy = (scale_x_y sigmoid(t_xy) - (scale_x_y - 1) / 2 + cell) * stride, wh = exp(t_wh) * anchor; "
               "objectness and classes: sigmoid",
    "darknet_new_coords": "xy = (scale_x_y sigmoid(t_xy) - (scale_x_y - 1) / 2 + cell) * stride, "
                          "wh = (2 sigmoid(t_wh))^2 * anchor; objectness and classes: sigmoid",
}
# exp(t) beyond e^10 ≈ 22000 anchors is no box; the cap keeps a diverging logit from making the CIoU NaN
MAX_LOG_SIZE = 10.0


@dataclass(frozen=True)
class HeadSpec:
    """One detection level: its stride, anchors ((w, h) input pixels), box decoding and ``scale_x_y``;
    ``layer`` (Darknet's layer index of the head) and ``num_classes`` when the model knows them."""

    stride: float
    anchors: tuple[tuple[float, float], ...]
    decoding: str = "yolov5"
    scale_x_y: float = 1.0
    layer: int | None = None
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if self.decoding not in DECODINGS:
            raise ShapeError(f"unknown box decoding '{self.decoding}'; known: {', '.join(DECODINGS)}")

    @property
    def neighbours(self) -> bool:
        """Whether a cell can place a centre half a cell outside itself, so that the target assignment may
        also give a box to the two nearest neighbour cells (YOLOv5's offset range (−0.5, 1.5))."""
        return self.decoding == "yolov5" or self.scale_x_y >= 2.0

    def anchor_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The anchors as ``[A, 2]`` float32."""
        return torch.tensor(self.anchors, dtype=torch.float32, device=device)


def yolov5_heads(anchors: Any, strides: Sequence[float]) -> list[HeadSpec]:
    """YOLOv5-decoded heads from anchors (``[L, A, 2]``, or L·A pairs split evenly) and one stride per level."""
    t = torch.as_tensor(anchors, dtype=torch.float32).detach().cpu().reshape(len(strides), -1, 2)
    return [HeadSpec(float(s), tuple((float(w), float(h)) for w, h in level.tolist()))
            for s, level in zip(strides, t, strict=True)]


def model_heads(model: Any) -> list[HeadSpec] | None:
    """The ``head_specs`` a detector model states, or None for a model that is not a detector."""
    specs = getattr(model, "head_specs", None)
    return list(specs) if specs else None


def box_params(raw: torch.Tensor, spec: HeadSpec, cap: bool = True) -> torch.Tensor:
    """``[..., 4]`` box logits → centre offset from the cell's corner (cells) and size (anchors), as ``spec``
    decodes them. ``cap`` bounds ``exp`` (losses); decoding for deployment passes False, as Darknet does."""
    if spec.decoding == "yolov5":
        return yolov5_box_params(raw)
    s = raw[..., :4].sigmoid()
    k = spec.scale_x_y
    xy = s[..., :2] * k - (k - 1) / 2
    if spec.decoding == "darknet_new_coords":
        return torch.cat([xy, (s[..., 2:] * 2) ** 2], dim=-1)
    t = raw[..., 2:4].clamp(max=MAX_LOG_SIZE) if cap else raw[..., 2:4]
    return torch.cat([xy, t.exp()], dim=-1)


def decode_boxes(raw: torch.Tensor, spec: HeadSpec) -> torch.Tensor:
    """One level's raw map ``[B, A, H, W, 5+C]`` → its boxes ``[B, A, H, W, 4]``: x1, y1, x2, y2 (input pixels)."""
    _, _, h, w, _ = raw.shape
    p = box_params(raw, spec, cap=False)
    jj, ii = torch.meshgrid(torch.arange(h, device=raw.device), torch.arange(w, device=raw.device), indexing="ij")
    grid = torch.stack([ii, jj], dim=-1).to(p.dtype)
    xy = (p[..., :2] + grid) * spec.stride
    wh = p[..., 2:4] * spec.anchor_tensor(raw.device).to(p.dtype).view(1, -1, 1, 1, 2)
    return xywh_to_xyxy(torch.cat([xy, wh], dim=-1))


def decode_level(raw: torch.Tensor, spec: HeadSpec) -> torch.Tensor:
    """One level's raw map ``[B, A, H, W, 5+C]`` → ``[B, A, H, W, 5+C]``: x1, y1, x2, y2 (input pixels),
    objectness, class probabilities."""
    return torch.cat([decode_boxes(raw, spec), raw[..., 4:].sigmoid()], dim=-1)


def decode(raw_maps: Sequence[torch.Tensor], specs: Sequence[HeadSpec]) -> torch.Tensor:
    """All levels → ``[B, N, 5+C]`` (the convention of every detector's ``decode``)."""
    if len(raw_maps) != len(specs):
        raise ShapeError(f"{len(raw_maps)} raw head maps but the model states {len(specs)} heads")
    return torch.cat([decode_level(raw, spec).flatten(1, 3) for raw, spec in zip(raw_maps, specs, strict=True)], 1)


def describe(specs: Sequence[HeadSpec]) -> str:
    """Levels as ``stride 8: 3 anchors (10x13, ...), yolov5`` for error messages."""
    return "; ".join(f"stride {s.stride:g}: {len(s.anchors)} anchors ("
                     + ", ".join(f"{w:g}x{h:g}" for w, h in s.anchors) + f"), {s.decoding}" for s in specs)


def head_differences(student: Sequence[HeadSpec], teacher: Sequence[HeadSpec]) -> list[str]:
    """What keeps two detectors' heads from being compared anchor by anchor, cell by cell (empty if nothing):
    the number of levels, their strides, the anchors per level and their sizes. Decodings may differ: each
    side's raw maps are read with its own."""
    if len(student) != len(teacher):
        return [f"levels: student {len(student)}, teacher {len(teacher)}"]
    out = []
    strides_s, strides_t = [s.stride for s in student], [t.stride for t in teacher]
    if strides_s != strides_t:
        out.append(f"strides: student {strides_s}, teacher {strides_t}")
    counts_s, counts_t = [len(s.anchors) for s in student], [len(t.anchors) for t in teacher]
    if counts_s != counts_t:
        out.append(f"anchors per level: student {counts_s}, teacher {counts_t}")
    elif any(not math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-3) for s, t in zip(student, teacher, strict=True)
             for pa, pb in zip(s.anchors, t.anchors, strict=True) for a, b in zip(pa, pb, strict=True)):
        out.append(f"anchor sizes: student {describe(student)}; teacher {describe(teacher)}")
    return out


def heads_context(context: dict, student: Any, teachers: Sequence[Any]) -> dict:
    """A term context with the actual models' heads (``heads``: the student's, ``teacher_heads``: one entry per
    teacher, None for a non-detector), which the detection terms prefer to the task's ``anchors``/``strides``."""
    heads = model_heads(student)
    if heads is None:
        return context
    return {**context, "heads": heads, "teacher_heads": [model_heads(t) for t in teachers]}
