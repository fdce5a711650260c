"""mAP@0.5 from per-image matches equals pycocotools' COCOeval; the bootstrap interval brackets it."""

import contextlib
import io

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchmetrics.detection import MeanAveragePrecision

from hintdistill.detection.bootstrap import ImageMatches, bootstrap_map50, map50, match_at_50


def scene(g: torch.Generator, classes: int = 3):
    """Ground truth of 0-4 boxes and predictions: jittered copies of them (some far off) plus random boxes."""
    n = int(torch.randint(0, 5, (1,), generator=g))
    xy = torch.rand(n, 2, generator=g) * 150
    wh = 10 + torch.rand(n, 2, generator=g) * 60
    gt = {"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, classes, (n,), generator=g)}
    jitter = torch.randn(n, 4, generator=g) * wh.repeat(1, 2) * 0.2
    extra = int(torch.randint(0, 4, (1,), generator=g))
    exy = torch.rand(extra, 2, generator=g) * 150
    boxes = torch.cat([gt["boxes"] + jitter, torch.cat([exy, exy + 30], 1)])
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)  # valid boxes, as a detector gives
    labels = torch.cat([gt["labels"], torch.randint(0, classes, (extra,), generator=g)])
    wrong = torch.rand(n + extra, generator=g) < 0.15  # some detections of the wrong class
    labels = torch.where(wrong, (labels + 1) % classes, labels)
    pred = {"boxes": boxes, "labels": labels, "scores": torch.rand(n + extra, generator=g)}
    return pred, gt


def cocoeval_map50(scenes, classes: int = 3) -> float:
    """AP@0.5 from pycocotools' COCOeval itself (boxes as xywh, area w*h)."""
    anns, dets = [], []
    for i, (p, t) in enumerate(scenes):
        for b, c in zip(t["boxes"].tolist(), t["labels"].tolist(), strict=True):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "iscrowd": 0,
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1])})
        for b, c, s in zip(p["boxes"].tolist(), p["labels"].tolist(), p["scores"].tolist(), strict=True):
            dets.append({"image_id": i, "category_id": c, "score": s, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": [{"id": i} for i in range(len(scenes))], "annotations": anns,
                      "categories": [{"id": c} for c in range(classes)]}
        gt.createIndex()
        e = COCOeval(gt, gt.loadRes(dets), "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return float(e.stats[1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map50_from_matches_equals_cocoeval(seed):
    g = torch.Generator().manual_seed(seed)
    scenes = [scene(g) for _ in range(40)]
    mine = map50([match_at_50(p, t) for p, t in scenes])
    assert mine == pytest.approx(cocoeval_map50(scenes), abs=1e-9)
    # torchmetrics (which evaluate_detector uses) hands COCOeval its own converted boxes: a borderline IoU can
    # fall the other side of 0.5 (seed 0: 0.2033 vs COCOeval's 0.2045), so it agrees to about a point
    metric = MeanAveragePrecision(iou_type="bbox")
    metric.update([p for p, _ in scenes], [t for _, t in scenes])
    assert mine == pytest.approx(float(metric.compute()["map_50"]), abs=0.01)


def test_matching_by_hand_and_a_duplicate_is_a_false_positive():
    gt = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([0])}
    pred = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 9.0], [0.0, 0.0, 10.0, 4.0]]),
            "labels": torch.tensor([0, 0, 0]), "scores": torch.tensor([0.5, 0.9, 0.8])}
    m = match_at_50(pred, gt)
    assert m.tp.tolist() == [False, True, False]  # the top-scored takes the box; the others are false positives
    # one class, recall 1 reached at the first detection (precision 1): AP 1
    assert map50([m]) == pytest.approx(1.0)
    low = ImageMatches(m.scores, m.labels, m.tp[[1, 0, 2]], m.gt_labels)
    # now only the 0.5-scored detection hits: two false positives above it, precision 1/3 at recall 1
    assert map50([low]) == pytest.approx(1 / 3)


def test_bootstrap_interval_brackets_the_score_and_narrows_with_more_images():
    g = torch.Generator().manual_seed(5)
    few = [match_at_50(*scene(g)) for _ in range(30)]
    many = few + [match_at_50(*scene(g)) for _ in range(270)]
    lo, hi = bootstrap_map50(few, n=300)
    assert lo <= map50(few) <= hi
    lo2, hi2 = bootstrap_map50(many, n=300)
    assert lo2 <= map50(many) <= hi2 and hi2 - lo2 < hi - lo
    assert bootstrap_map50(few, n=300) == (lo, hi)  # seeded



class Replay(torch.nn.Module):
    """A detector that returns the given predictions batch after batch (the ``postprocess`` contract of YOLO)."""

    def __init__(self, preds):
        super().__init__()
        self.preds, self.calls = preds, 0

    def forward(self, x):
        return x

    def postprocess(self, raw, conf_thresh, iou_thresh, max_det=100):
        self.calls += 1
        return self.preds[self.calls - 1]


def test_image_matches_score_what_evaluate_detector_scores():
    """The same predictions through evaluate_detector (torchmetrics) and image_matches + map50."""
    from hintdistill.detection.bootstrap import image_matches
    from hintdistill.detection.evaluate import evaluate_detector

    g = torch.Generator().manual_seed(3)
    scenes = [scene(g) for _ in range(24)]
    batches = [(torch.zeros(4, 3, 8, 8), [{**t, "difficult": 0} for _, t in scenes[i:i + 4]]) for i in range(0, 24, 4)]
    preds = [[p for p, _ in scenes[i:i + 4]] for i in range(0, 24, 4)]
    matches = image_matches(Replay(preds), batches)
    assert len(matches) == 24
    score = map50(matches)
    assert score == pytest.approx(cocoeval_map50(scenes), abs=1e-9) and score > 0.2
    assert score == pytest.approx(evaluate_detector(Replay(preds), batches)["map50"], abs=0.01)
