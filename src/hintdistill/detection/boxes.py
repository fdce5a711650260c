"""Box arithmetic shared by the YOLO model, its loss and the detection distillation terms.

Raw head maps are ``[B, A, H, W, 5 + C]``: per anchor ``a`` and cell ``(j, i)`` the channels are
``t_x, t_y, t_w, t_h, t_obj, t_cls_1 .. t_cls_C`` (logits). The box parametrisation is YOLOv5's:

    x = (2·σ(t_x) − 0.5 + i) · stride        w = (2·σ(t_w))² · anchor_w
    y = (2·σ(t_y) − 0.5 + j) · stride        h = (2·σ(t_h))² · anchor_h

so a cell can place a centre within (−0.5, 1.5) cells of its corner (this is what lets the neighbouring
cells of the target assignment predict a box) and a width up to 4× its anchor (the 4.0 shape-ratio
threshold of the assignment).
"""

from __future__ import annotations

import torch
from torchvision.ops import complete_box_iou_loss


def box_params(raw: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` box logits → ``(2σ(t_xy) − 0.5, (2σ(t_wh))²)``: centre offset in cells, size in anchors."""
    s = raw[..., :4].sigmoid()
    return torch.cat([s[..., :2] * 2 - 0.5, (s[..., 2:] * 2) ** 2], dim=-1)


def xywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    """Centre/size boxes to corner boxes."""
    half = b[..., 2:4] / 2
    return torch.cat([b[..., :2] - half, b[..., :2] + half], dim=-1)


def xyxy_to_xywh(b: torch.Tensor) -> torch.Tensor:
    """Corner boxes to centre/size boxes."""
    return torch.cat([(b[..., :2] + b[..., 2:4]) / 2, b[..., 2:4] - b[..., :2]], dim=-1)


def decode_level(raw: torch.Tensor, anchors: torch.Tensor, stride: float) -> torch.Tensor:
    """One level's raw map ``[B, A, H, W, 5+C]`` → boxes ``[B, A, H, W, 4]`` (xyxy, input pixels).

    ``anchors`` is ``[A, 2]`` (w, h) in input pixels.
    """
    _, _, h, w, _ = raw.shape
    p = box_params(raw)
    jj, ii = torch.meshgrid(torch.arange(h, device=raw.device), torch.arange(w, device=raw.device), indexing="ij")
    grid = torch.stack([ii, jj], dim=-1).to(p.dtype)  # [H, W, 2] as (x, y)
    xy = (p[..., :2] + grid) * stride
    wh = p[..., 2:4] * anchors.to(p.dtype).view(1, -1, 1, 1, 2)
    return xywh_to_xyxy(torch.cat([xy, wh], dim=-1))


def ciou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Complete IoU of paired xyxy boxes (Zheng et al. 2020), elementwise:

        CIoU = IoU − ρ²(centres) / c² − α·v,   v = 4/π² (atan(w_g/h_g) − atan(w/h))²,   α = v / (1 − IoU + v)

    where c is the diagonal of the smallest box enclosing both; α is treated as a constant for gradients.
    Boxes are given at least ``MIN_SIZE`` pixels of width and height first: a predicted size that rounds to
    0 in xyxy (a tiny (2σ(t))² next to a large centre) makes torchvision's atan(w/h) backward 0·∞ = NaN.
    """
    return 1.0 - complete_box_iou_loss(min_size(boxes1), min_size(boxes2), reduction="none")


def paired_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Plain IoU of paired xyxy boxes ``[..., 4]``, elementwise (0 where they do not overlap or both are empty)."""
    lt, rb = torch.maximum(boxes1[..., :2], boxes2[..., :2]), torch.minimum(boxes1[..., 2:4], boxes2[..., 2:4])
    inter = (rb - lt).clamp(min=0).prod(-1)

    def area(b: torch.Tensor) -> torch.Tensor:
        return (b[..., 2:4] - b[..., :2]).clamp(min=0).prod(-1)

    union = area(boxes1) + area(boxes2) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


MIN_SIZE = 1e-3


def min_size(b: torch.Tensor, size: float = MIN_SIZE) -> torch.Tensor:
    """xyxy boxes with ``x2 ≥ x1 + size`` and ``y2 ≥ y1 + size``."""
    return torch.cat([b[..., :2], torch.maximum(b[..., 2:4], b[..., :2] + size)], dim=-1)
