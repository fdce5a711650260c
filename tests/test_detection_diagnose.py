"""The detection diagnostic's student calibration: confident positives whose own box misses the GT
(benchmarks/detection_diagnose.py; what chen_kd's paper-form soft targets taught the raccoon students that lost)."""

import math

import pytest
import torch
from conftest import load_script

ANCHORS = torch.tensor([[[8, 8], [12, 12], [16, 16]], [[32, 32], [40, 40], [48, 48]],
                        [[64, 64], [80, 80], [96, 96]]], dtype=torch.float32)
STRIDES = [8.0, 16.0, 32.0]
GRIDS = [(8, 8), (4, 4), (2, 2)]
# a 32 x 32 box centred at (32, 32): on a cell corner of every level, so its cell is (4, 4) at stride 8 and
# (2, 2) at stride 16 (with neighbours up and left); it matches every anchor within 4x of its size
TARGETS = [{"boxes": torch.tensor([[16.0, 16.0, 48.0, 48.0]]), "labels": torch.tensor([0])}]


def diagnose():
    return load_script("benchmarks/detection_diagnose.py")


def test_student_calibration_counts_confident_positives_whose_box_misses():
    maps = [torch.zeros(1, 3, h, w, 6) for h, w in GRIDS]
    for m in maps:
        m[..., 4] = -5.0  # unsure everywhere
    # level 1, anchor 0 (32 x 32) at cell (2, 2), centre offset 2 σ(ln 1/3) - 0.5 = 0: exactly the GT, IoU 1
    maps[1][0, 0, 2, 2, :2] = math.log(1 / 3)
    maps[1][0, 0, 2, 2, 4] = math.log(9)  # objectness 0.9: confident and right
    # level 0, anchor 1 (12 x 12; the 8 x 8 is 4x off) at cell (4, 4): [30, 30, 42, 42] inside the GT, IoU 0.14
    maps[0][0, 1, 4, 4, 4] = math.log(9)
    out = diagnose().student_calibration(maps, TARGETS, ANCHORS, STRIDES)
    assert out["student_confident_misses"] == 1.0
    unsure = torch.sigmoid(torch.tensor(-5.0)).item()
    assert unsure < out["student_obj_where_box_misses"] < 0.9  # the confident miss among unsure ones
    assert out["student_obj_iou_correlation"] > 0  # the exact box is the most confident positive
    maps[0][0, 1, 4, 4, 4] = -5.0  # unsure there too: no confident miss
    out = diagnose().student_calibration(maps, TARGETS, ANCHORS, STRIDES)
    assert out["student_confident_misses"] == 0.0
    assert out["student_obj_where_box_misses"] == pytest.approx(unsure)
