"""yolo model, k-means anchors, mAP evaluation and a tiny end-to-end distillation."""

import pytest
import torch
import torch.nn.functional as F

from hintdistill.detection.anchors import kmeans_anchors, mean_best_iou
from hintdistill.detection.boxes import ciou
from hintdistill.detection.evaluate import evaluate_detector
from hintdistill.detection.heads import model_heads
from hintdistill.detection.loss import YoloLoss, predicted_boxes
from hintdistill.distiller import Distiller
from hintdistill.errors import DataError
from hintdistill.models import build_model
from hintdistill.models.yolo import YOLO
from hintdistill.terms.detection import NeckHints, ObjectnessScaledKD

# tiny tensors: more threads than one only fight the other jobs on a 2-core machine
torch.set_num_threads(1)

ANCHORS = [(4, 4), (8, 8), (12, 6), (16, 16), (20, 12), (24, 24), (32, 32), (40, 30), (56, 56)]


def tiny(width, seed=0):
    torch.manual_seed(seed)
    return YOLO(2, "n", ANCHORS, width=width, depth=0.33)


def test_kmeans_recovers_synthetic_clusters():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[10.0, 10.0], [40.0, 20.0], [100.0, 120.0]])
    wh = torch.cat([c * (1 + 0.05 * torch.randn(50, 2, generator=gen)) for c in centres])
    anchors = kmeans_anchors(wh, k=3)
    torch.testing.assert_close(anchors, centres, rtol=0.05, atol=0)  # sorted by area
    assert mean_best_iou(wh, anchors) > 0.85
    with pytest.raises(DataError, match="at least 9 boxes"):
        kmeans_anchors(wh[:5])


def test_yolo_outputs_anchors_and_sizes():
    model = build_model("yolo", {"num_classes": 2, "size": "n", "anchors": ANCHORS, "width": 0.0625})
    x = torch.rand(2, 3, 64, 64)
    for mode in (True, False):
        model.train(mode)
        shapes = [tuple(m.shape) for m in model(x)]
        assert shapes == [(2, 3, 8, 8, 7), (2, 3, 4, 4, 7), (2, 3, 2, 2, 7)]
    assert torch.equal(model.state_dict()["anchors"], torch.tensor(ANCHORS, dtype=torch.float32).view(3, 3, 2))
    assert model.decode(model(x)).shape == (2, 3 * (64 + 16 + 4), 7)
    dets = model.postprocess(model(x), conf_thresh=0.001)
    assert set(dets[0]) == {"boxes", "scores", "labels"} and dets[0]["boxes"].shape[1] == 4
    with torch.device("meta"):  # counting only: no memory, no init time
        params = {s: sum(p.numel() for p in YOLO(80, s).parameters()) for s in ("n", "m", "l")}
    assert params["m"] > 5 * params["n"] and params["l"] > 2 * params["m"]


def test_yolo_loss_takes_the_models_own_output_in_a_hand_loop():
    """``loss(model(x), [], targets)`` works as ``loss(outputs_from(model(x)), ...)`` does: a user's loop need
    not know the engine's Outputs dict; anything else is refused naming what was passed."""
    torch.manual_seed(0)
    model = build_model("yolo", {"num_classes": 2, "size": "n", "anchors": ANCHORS, "width": 0.0625})
    loss = YoloLoss.for_model(model)
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 30.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    out = model(torch.rand(2, 3, 64, 64))
    expected = loss({f"head:{i}": m for i, m in enumerate(out)}, [], targets)
    assert torch.equal(loss(out, [], targets), expected) and expected.item() > 0
    with pytest.raises(TypeError, match="only a detector's per-level head maps"):
        loss([torch.rand(2, 7)], [], targets)


class Perfect(torch.nn.Module):
    """Returns the ground truth as its detections."""

    def __init__(self, targets):
        super().__init__()
        self.targets = targets

    def forward(self, images):
        return images

    def postprocess(self, raw, conf_thresh, iou_thresh, max_det=300):
        return [{"boxes": t["boxes"], "scores": torch.ones(len(t["boxes"])), "labels": t["labels"]}
                for t in self.targets]


def test_objectness_target_mixes_one_and_the_ciou_by_iou_ratio():
    """A positive's objectness target is (1 - r) + r * CIoU: r = 1 the CIoU (default), r = 0 YOLOv3's 1."""
    torch.manual_seed(0)
    model = build_model("yolo", {"num_classes": 2, "size": "n", "anchors": ANCHORS, "width": 0.0625})
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 30.0]]), "labels": torch.tensor([1])}]
    out = {f"head:{i}": m for i, m in enumerate(model(torch.rand(1, 3, 64, 64)))}
    default = YoloLoss.for_model(model)
    assert default.iou_ratio == 1.0
    positives = default.assign(list(out.values()), targets)
    for r in (1.0, 0.5, 0.0):
        loss = YoloLoss.for_model(model, iou_ratio=r)
        expected = torch.zeros(())
        for level, (raw, pos) in enumerate(zip(out.values(), positives, strict=True)):
            tobj = torch.zeros_like(raw[..., 4])
            if len(pos):
                boxes = predicted_boxes(raw, pos, loss.level_anchors()[level], loss.strides[level], loss.heads[level])
                iou = ciou(boxes, pos.boxes).detach().clamp(min=0)
                tobj[pos.batch, pos.anchor, pos.gj, pos.gi] = (1 - r) + r * iou
            expected = expected + loss.balance[level] * F.binary_cross_entropy_with_logits(raw[..., 4], tobj)
        torch.testing.assert_close(loss.loss_parts(out, [], targets)["obj"], expected)  # obj_weight 1, no scaling
    assert sum(len(p) for p in positives) > 0


def test_evaluate_detector_perfect_predictions_give_map_1():
    targets = [{"boxes": torch.tensor([[10.0, 10, 30, 28], [40, 5, 60, 50]]), "labels": torch.tensor([0, 2])}]
    result = evaluate_detector(Perfect(targets), [(torch.zeros(1, 3, 8, 8), targets)], "cpu",
                               class_names=["a", "b", "c"])
    assert result["map50"] == pytest.approx(1.0) and result["map"] == pytest.approx(1.0)
    assert result["ap50_per_class"] == pytest.approx({"a": 1.0, "c": 1.0})
    assert result["ap_per_class"] == pytest.approx({"a": 1.0, "c": 1.0})


def synthetic_batch(n=2, size=64):
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(n, 3, size, size, generator=gen) * 0.2
    targets = []
    for i in range(n):
        x, y = 8 + 12 * i, 10 + 8 * i
        images[i, i % 3, y:y + 20, x:x + 24] = 1.0
        targets.append({"boxes": torch.tensor([[float(x), float(y), x + 24.0, y + 20.0]]),
                        "labels": torch.tensor([i % 2])})
    return images, targets


def test_tiny_distillation_runs_and_trains_adapters():
    student, teacher = tiny(0.0625), tiny(0.125, seed=1)
    images, targets = synthetic_batch()
    levels = [(f"neck.p{i}", f"neck.p{i}") for i in (3, 4, 5)]
    distiller = Distiller(student, teacher, {
        "det": (YoloLoss.for_model(student), 1.0),
        "osd": (ObjectnessScaledKD(heads=model_heads(student)), 1.0),
        "hint": (NeckHints(levels, imitation_mask=True, anchors=teacher.anchors), 0.5),
    }, example_inputs=images)
    optimizer = torch.optim.Adam(distiller.trainable_parameters(), lr=3e-3)
    for _ in range(3):
        _, losses = distiller(images, targets)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        assert all(torch.isfinite(v) for v in losses.values())
    for hint in distiller.terms["hint"].hints:
        assert hint.adapter.weight.grad is not None and hint.adapter.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
