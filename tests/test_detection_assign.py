"""Target assignment, box decoding, CIoU and the YOLO loss on hand-worked numbers."""

import math

import pytest
import torch

from hintdistill.detection.assign import assign_targets, target_box_params
from hintdistill.detection.boxes import ciou, decode_level
from hintdistill.detection.loss import YoloLoss
from hintdistill.errors import DataError

ANCHORS = torch.tensor([[[8, 8], [16, 16], [32, 32]],
                        [[32, 32], [64, 64], [128, 128]],
                        [[128, 128], [256, 256], [512, 512]]], dtype=torch.float32)
STRIDES = (8, 16, 32)
GRIDS = [(8, 8), (4, 4), (2, 2)]  # a 64 × 64 input


def cells(level):
    return sorted(zip(level.anchor.tolist(), level.gj.tolist(), level.gi.tolist(), strict=True))


def test_shape_matching_and_neighbour_cells():
    # centre (19, 13), 16 × 16
    targets = [{"boxes": torch.tensor([[11.0, 5.0, 27.0, 21.0]]), "labels": torch.tensor([1])}]
    l0, l1, l2 = assign_targets(targets, ANCHORS, STRIDES, GRIDS)
    # stride 8: centre (2.375, 1.625) → cell (gi=2, gj=1), left neighbour (x frac < .5), lower one (y frac > .5);
    # w/h ratios to 8, 16, 32 are 2, 1, 2 (< 4): all three anchors
    assert cells(l0) == sorted((a, gj, gi) for a in range(3) for gj, gi in [(1, 2), (1, 1), (2, 2)])
    # stride 16: centre (1.1875, 0.8125) → cell (1, 0), left (0, 0), lower (1, 1); ratios 2, 4, 8: only anchor 0
    assert cells(l1) == sorted([(0, 0, 1), (0, 0, 0), (0, 1, 1)])
    assert len(l2) == 0  # ratio 8 to the smallest stride-32 anchor
    assert l0.labels.tolist() == [1] * 9 and l0.batch.tolist() == [0] * 9


def test_neighbours_stay_inside_the_grid_and_batch_index():
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    corner = {"boxes": torch.tensor([[0.0, 0.0, 6.0, 6.0]]), "labels": torch.tensor([0])}  # centre (3, 3)
    l0 = assign_targets([empty, corner], ANCHORS, STRIDES, GRIDS)[0]
    # anchors 8 and 16 match (ratios 1.33, 2.67; 32 gives 5.3); left/upper neighbours of cell (0, 0) are outside
    assert cells(l0) == [(0, 0, 0), (1, 0, 0)] and l0.batch.tolist() == [1, 1]
    middle = {"boxes": torch.tensor([[17.0, 17.0, 23.0, 23.0]]), "labels": torch.tensor([0])}  # centre (20, 20)
    assert cells(assign_targets([middle], ANCHORS, STRIDES, GRIDS)[0]) == [(0, 2, 2), (1, 2, 2)]  # mid-cell
    no_neighbours = assign_targets([corner], ANCHORS, STRIDES, GRIDS, neighbours=False)[0]
    assert cells(no_neighbours) == [(0, 0, 0), (1, 0, 0)]


def test_target_box_params_are_in_cells_and_anchors():
    targets = [{"boxes": torch.tensor([[11.0, 5.0, 27.0, 21.0]]), "labels": torch.tensor([0])}]
    l0 = assign_targets(targets, ANCHORS, STRIDES, GRIDS)[0]
    y = target_box_params(l0, ANCHORS[0], 8)
    i = [k for k in range(len(l0)) if (l0.anchor[k], l0.gj[k], l0.gi[k]) == (1, 1, 2)][0]
    torch.testing.assert_close(y[i], torch.tensor([0.375, 0.625, 1.0, 1.0]))
    j = [k for k in range(len(l0)) if (l0.anchor[k], l0.gj[k], l0.gi[k]) == (0, 1, 1)][0]
    torch.testing.assert_close(y[j], torch.tensor([1.375, 0.625, 2.0, 2.0]))  # left neighbour, 8 px anchor


def test_ciou_worked_numbers():
    # equal aspect: IoU 1/7, centre distance² 2, enclosing diagonal² 18, v = 0
    torch.testing.assert_close(ciou(torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[1.0, 1, 3, 3]])),
                               torch.tensor([1 / 7 - 1 / 9]))
    # IoU 0.5, ρ²/c² = 1/20, v = 4/π² (atan 2 − atan 1)², α = v / (0.5 + v)
    v = 4 / math.pi**2 * (math.atan(2) - math.atan(1)) ** 2
    expected = 0.5 - 1 / 20 - v / (0.5 + v) * v
    torch.testing.assert_close(ciou(torch.tensor([[0.0, 0, 4, 2]]), torch.tensor([[0.0, 0, 2, 2]])),
                               torch.tensor([expected]))
    assert ciou(torch.tensor([[0.0, 0, 4, 2]]), torch.tensor([[0.0, 0, 4, 2]])).item() == pytest.approx(1.0)


def test_decode_zero_logits_gives_anchor_boxes_at_cell_centres():
    raw = torch.zeros(1, 3, 2, 2, 7)
    boxes = decode_level(raw, ANCHORS[0], 8)
    # σ(0) = 0.5: centre offset 0.5 cell, size (2·0.5)² = 1 anchor
    torch.testing.assert_close(boxes[0, 1, 1, 0], torch.tensor([4.0 - 8, 12.0 - 8, 4.0 + 8, 12.0 + 8]))


def head_outputs(value=0.0, classes=2):
    return {f"head:{i}": torch.full((1, 3, h, w, 5 + classes), value, requires_grad=True)
            for i, (h, w) in enumerate(GRIDS)}


def test_yolo_loss_without_boxes_is_balanced_objectness_bce():
    loss = YoloLoss(ANCHORS)
    value = loss(head_outputs(), [], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])
    # every objectness logit 0 against target 0: BCE = log 2 per level, balance 4 + 1 + 0.4
    assert value.item() == pytest.approx(5.4 * math.log(2), rel=1e-6)
    assert loss.last["box"].item() == 0 and loss.last["cls"].item() == 0


def test_yolo_loss_with_a_box_and_bad_label():
    loss = YoloLoss(ANCHORS)
    outputs = head_outputs()
    targets = [{"boxes": torch.tensor([[11.0, 5.0, 27.0, 21.0]]), "labels": torch.tensor([1])}]
    value = loss(outputs, [], targets)
    value.backward()
    assert torch.isfinite(value) and loss.last["box"] > 0 and loss.last["cls"] > 0
    assert outputs["head:0"].grad.abs().sum() > 0
    with pytest.raises(DataError, match="num_classes"):
        loss(outputs, [], [{"boxes": targets[0]["boxes"], "labels": torch.tensor([5])}])
