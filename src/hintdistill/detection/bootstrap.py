"""A bootstrap interval for mAP@0.5 over the test images: how much a score on 50 images can be trusted.

COCO matches detections to ground truth image by image (per class, best unmatched IoU >= 0.5, in score order),
so the matches are computed once (``match_at_50``) and a resampled test set only re-aggregates them:
``map50`` is COCO's AP@0.5 (101 recall points, area "all", the model's at most 100 boxes per image), equal to
``evaluate_detector``'s ``map50`` on the same predictions (tests/test_detection_bootstrap.py checks it), and
``bootstrap_map50`` draws the images with replacement ``n`` times and returns the percentile interval.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_iou

RECALLS = np.linspace(0.0, 1.0, 101)


@dataclass
class ImageMatches:
    """One image's detections (score, class, matched?) and its ground-truth count per class."""

    scores: np.ndarray
    labels: np.ndarray
    tp: np.ndarray
    gt_labels: np.ndarray


def match_at_50(pred: dict, target: dict, iou_thresh: float = 0.5) -> ImageMatches:
    """COCO's per-image matching at one IoU threshold: per class, detections in score order take the unmatched
    ground-truth box of highest IoU (at least ``iou_thresh``)."""
    scores, labels, boxes = pred["scores"].float(), pred["labels"], pred["boxes"].float()
    gt_boxes, gt_labels = target["boxes"].float(), target["labels"]
    tp = torch.zeros(len(scores), dtype=torch.bool)
    for c in labels.unique().tolist():
        det = torch.nonzero(labels == c).flatten()
        det = det[torch.argsort(-scores[det], stable=True)]
        gts = torch.nonzero(gt_labels == c).flatten()
        if len(gts) == 0:
            continue
        iou = box_iou(boxes[det], gt_boxes[gts])
        taken = torch.zeros(len(gts), dtype=torch.bool)
        for i, d in enumerate(det.tolist()):
            cand = iou[i].masked_fill(taken, -1.0)
            best = int(torch.argmax(cand))
            if cand[best] >= min(iou_thresh, 1 - 1e-10):
                taken[best] = True
                tp[d] = True
    return ImageMatches(scores.numpy(), labels.numpy(), tp.numpy(), gt_labels.numpy())


def map50(images: Sequence[ImageMatches]) -> float:
    """COCO AP@0.5 averaged over the classes that have ground truth in ``images``."""
    if not images:
        return float("nan")
    scores, labels = np.concatenate([m.scores for m in images]), np.concatenate([m.labels for m in images])
    tp, gt = np.concatenate([m.tp for m in images]), np.concatenate([m.gt_labels for m in images])
    aps = []
    for c in np.unique(gt):
        n_gt = int((gt == c).sum())
        keep = labels == c
        order = np.argsort(-scores[keep], kind="mergesort")
        hits = tp[keep][order]
        tps, fps = np.cumsum(hits), np.cumsum(~hits)
        recall = tps / n_gt
        precision = tps / np.maximum(tps + fps, np.spacing(1))
        precision = np.maximum.accumulate(precision[::-1])[::-1]  # the envelope (empty stays empty)
        at = np.searchsorted(recall, RECALLS, side="left")
        q = np.zeros(len(RECALLS))
        reached = at < len(precision)
        q[reached] = precision[at[reached]]
        aps.append(float(np.mean(q)))
    return float(np.mean(aps)) if aps else float("nan")


def bootstrap_map50(images: Sequence[ImageMatches], n: int = 1000, level: float = 0.9,
                    seed: int = 0) -> tuple[float, float]:
    """The ``level`` percentile interval of mAP@0.5 over ``n`` resamples of the images (with replacement)."""
    rng = np.random.default_rng(seed)
    values = [map50([images[i] for i in rng.integers(0, len(images), len(images))]) for _ in range(n)]
    values = np.asarray([v for v in values if not np.isnan(v)])
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


@torch.no_grad()
def image_matches(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu",
                  conf_thresh: float = 0.001, iou_thresh: float = 0.6, max_det: int = 100) -> list[ImageMatches]:
    """Every test image's matches at IoU 0.5, from the same predictions ``evaluate_detector`` scores."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for images, targets in loader:
            preds = model.postprocess(model(images.to(device)), conf_thresh, iou_thresh, max_det=max_det)
            out += [match_at_50({k: v.cpu() for k, v in p.items()}, {k: t[k].cpu() for k in ("boxes", "labels")})
                    for p, t in zip(preds, targets, strict=True)]
    finally:
        model.train(was_training)
    return out
