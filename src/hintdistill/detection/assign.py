"""YOLOv4/v5-style target assignment.

For every ground-truth box and level l (stride s_l, anchors a_l1..a_l3):

1. Shape matching: the box goes to every anchor whose width and height ratios are within ``anchor_t``
   (4.0): ``max(w/a_w, a_w/w, h/a_h, a_h/h) < anchor_t``. Several anchors (on several levels) may match.
2. Cells: the cell containing the centre (``floor(x/s), floor(y/s)``) plus, when ``neighbours`` is on,
   the horizontally nearest neighbour cell (left if the centre is in the left half of its cell, right if
   in the right half) and the vertically nearest one, when inside the grid: up to three cells per match.
   The box parametrisation (centre offset in (−0.5, 1.5) cells) lets those neighbours reach the centre.

Each positive is one (image, anchor, cell) with the box and class it must predict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class LevelTargets:
    """Positives of one level: index tensors ``batch, anchor, gj (row), gi (column)``, and per positive the
    GT ``boxes`` [P, 4] (xyxy input pixels), ``labels`` [P] and ``gt_index`` [P] (position in its image)."""

    batch: torch.Tensor
    anchor: torch.Tensor
    gj: torch.Tensor
    gi: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    gt_index: torch.Tensor

    def __len__(self) -> int:
        return len(self.batch)


def _flatten_targets(targets: list[dict], device: torch.device) -> tuple[torch.Tensor, ...]:
    batch, boxes, labels, gt_index = [], [], [], []
    for b, t in enumerate(targets):
        n = len(t["boxes"])
        batch.append(torch.full((n,), b, dtype=torch.long))
        boxes.append(torch.as_tensor(t["boxes"], dtype=torch.float32).reshape(-1, 4).cpu())
        labels.append(torch.as_tensor(t["labels"], dtype=torch.long).reshape(-1).cpu())
        gt_index.append(torch.arange(n))
    cat = (torch.cat(x).to(device) for x in (batch, boxes, labels, gt_index))
    return tuple(cat)


def assign_targets(targets: list[dict], anchors: torch.Tensor | Sequence[torch.Tensor],
                   strides: Sequence[float], grid_shapes: list[tuple[int, int]], anchor_t: float = 4.0,
                   neighbours: bool | Sequence[bool] = True) -> list[LevelTargets]:
    """Positives per level. ``targets``: one dict per image with ``boxes`` [N, 4] xyxy pixels and ``labels``;
    ``anchors``: per level an ``[A_l, 2]`` (w, h) pixel tensor (any number of levels and anchors per level,
    e.g. an ``[L, A, 2]`` tensor); ``grid_shapes``: ``(H, W)`` of each level's map; ``neighbours``: one flag,
    or one per level (a head whose centres cannot leave their cell gets no neighbour cells)."""
    device = anchors[0].device
    batch, boxes, labels, gt_index = _flatten_targets(targets, device)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    wh = boxes[:, 2:] - boxes[:, :2]
    flags = [neighbours] * len(strides) if isinstance(neighbours, bool) else list(neighbours)
    out = []
    for level_anchors, stride, (h, w), near in zip(anchors, strides, grid_shapes, flags, strict=True):
        ratio = wh[:, None, :] / level_anchors[None, :, :]  # [N, A, 2]
        match = torch.max(ratio, 1 / ratio).amax(-1) < anchor_t
        gt, anc = match.nonzero(as_tuple=True)
        g = centre[gt] / stride
        cell = g.floor().long()
        candidates = [cell]
        if near:
            frac = g - cell
            step = torch.where(frac < 0.5, -1, 1) * (frac != 0.5)
            candidates.append(cell + torch.stack([step[:, 0], torch.zeros_like(step[:, 0])], 1))
            candidates.append(cell + torch.stack([torch.zeros_like(step[:, 1]), step[:, 1]], 1))
        idx = torch.arange(len(gt), device=device).repeat(len(candidates))
        cells = torch.cat(candidates)
        inside = (cells[:, 0] >= 0) & (cells[:, 0] < w) & (cells[:, 1] >= 0) & (cells[:, 1] < h)
        idx, cells = idx[inside], cells[inside]
        # a centre exactly mid-cell has step 0: its "neighbour" is the centre cell again, counted once
        unique = torch.unique(torch.cat([idx[:, None], cells], 1), dim=0)
        idx, cells = unique[:, 0], unique[:, 1:]
        sel = gt[idx]
        out.append(LevelTargets(batch[sel], anc[idx], cells[:, 1], cells[:, 0], boxes[sel], labels[sel],
                                gt_index[sel]))
    return out


def target_box_params(targets: LevelTargets, level_anchors: torch.Tensor, stride: float) -> torch.Tensor:
    """The GT boxes of the positives in the head's own units (see ``boxes.box_params``): centre offset from
    the assigned cell's corner in cells, width and height in units of the assigned anchor. ``[P, 4]``."""
    centre = (targets.boxes[:, :2] + targets.boxes[:, 2:]) / 2 / stride
    cell = torch.stack([targets.gi, targets.gj], 1).to(centre.dtype)
    wh = (targets.boxes[:, 2:] - targets.boxes[:, :2]) / level_anchors[targets.anchor]
    return torch.cat([centre - cell, wh], 1)
