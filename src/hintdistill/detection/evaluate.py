"""mAP of a detector with torchmetrics' ``MeanAveragePrecision`` (COCO protocol, pycocotools backend).

Reports ``map50`` (AP at IoU 0.5), ``map`` (AP averaged over IoU 0.5:0.05:0.95), and per class both
``ap50_per_class`` and ``ap_per_class`` (taken from the precision table of the extended summary).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torchmetrics.detection import MeanAveragePrecision


def per_class_ap(precision: torch.Tensor, iou_index: int | None = None) -> torch.Tensor:
    """AP per class from COCOeval's precision table ``[T, R, K, A, M]`` (−1 = no GT): the mean over the 101
    recall points (and the IoU thresholds, or only ``iou_index``: 0 is IoU 0.5), area 'all', the largest
    max-detections setting, as COCO's summary computes it. ``[K]``, −1 where the class has no GT."""
    p = precision[:, :, :, 0, -1] if iou_index is None else precision[iou_index:iou_index + 1, :, :, 0, -1]
    p = p.flatten(0, 1)
    valid = p > -1
    ap = (p * valid).sum(0) / valid.sum(0).clamp(min=1)
    return torch.where(valid.any(0), ap, torch.full_like(ap, -1.0))


def per_class_ap50(precision: torch.Tensor) -> torch.Tensor:
    """AP at IoU 0.5 per class (see ``per_class_ap``)."""
    return per_class_ap(precision, 0)


@torch.no_grad()
def evaluate_detector(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu",
                      conf_thresh: float = 0.001, iou_thresh: float = 0.6, max_det: int = 100,
                      class_names: Sequence[str] | None = None) -> dict:
    """Run ``model`` (which has ``postprocess``, like ``YOLO``) over ``loader`` of ``(images, targets)``.

    Returns ``{"map50": float, "map": float, "ap50_per_class": {name: float}, "ap_per_class": {name: float}}``;
    classes are named by ``class_names`` (or the loader's ``dataset.classes``), else by index; a class
    without ground truth in the data is left out of the per-class dicts.
    """
    was_training = model.training
    model.eval()
    # COCO's summary reads AP at 100 detections per image, so the metric keeps its default [1, 10, 100] and
    # the model keeps its 100 best boxes per image: the same mAP as 300 (torchmetrics drops the lowest-scored
    # beyond 100 itself), without its "more than 100 detections" warning on every evaluation.
    # Per-class APs are read from the one precision table: class_metrics=True would rerun COCOeval once
    # per class (pure Python, most of an epoch's evaluation time on CPU) for the same numbers.
    metric = MeanAveragePrecision(iou_type="bbox", class_metrics=False, extended_summary=True)
    try:
        for images, targets in loader:
            raw = model(images.to(device))
            preds = model.postprocess(raw, conf_thresh, iou_thresh, max_det=max_det)
            metric.update([{k: v.cpu() for k, v in p.items()} for p in preds],
                          [{"boxes": t["boxes"].cpu().float(), "labels": t["labels"].cpu()} for t in targets])
        result = metric.compute()
    finally:
        model.train(was_training)
    names = class_names or getattr(getattr(loader, "dataset", None), "classes", None)
    classes = result["classes"].reshape(-1).tolist()
    ap50 = per_class_ap50(result["precision"])
    ap = per_class_ap(result["precision"]).tolist()

    def name(c: int) -> str | int:
        return names[c] if names is not None and c < len(names) else c

    # the precision table's class axis follows the sorted class ids, as ``classes`` does
    return {
        "map50": float(result["map_50"]),
        "map": float(result["map"]),
        "ap50_per_class": {name(c): float(ap50[i]) for i, c in enumerate(classes) if ap50[i] >= 0},
        "ap_per_class": {name(c): float(ap[i]) for i, c in enumerate(classes) if ap[i] >= 0},
    }
