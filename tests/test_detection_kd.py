"""Detection distillation terms against hand-worked numbers on tiny maps."""

import math

import pytest
import torch

from hintdistill.errors import ShapeError
from hintdistill.terms.detection import (
    ChenDetectionKD,
    NeckHints,
    ObjectnessScaledKD,
    bernoulli_kl,
    fm_nms,
    imitation_mask,
)

LN3 = math.log(3)  # σ(ln 3) = 0.75


def one_cell(values, classes=1):
    """A single-level head map [1, 1, 1, 1, 5 + C] with the given logits."""
    return {"head:0": torch.tensor(values, dtype=torch.float32).view(1, 1, 1, 1, 5 + classes)}


def kl(p, q):
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def test_bernoulli_kl_is_zero_at_equality_and_matches_formula():
    p = torch.tensor([0.2, 0.75])
    assert bernoulli_kl(torch.logit(p), p).abs().max() < 1e-6
    assert bernoulli_kl(torch.tensor([0.0]), torch.tensor([0.75])).item() == pytest.approx(kl(0.75, 0.5), rel=1e-5)


def test_objectness_scaled_kd_hand_worked():
    teacher = one_cell([0, 0, 0, 0, LN3, 0])  # objectness 0.75, class 0.5, box params (0.5, 0.5, 1, 1)
    student = one_cell([LN3, 0, 0, 0, 0, LN3])  # objectness 0.5, class 0.75, x offset 2·0.75 − 0.5 = 1.0
    term = ObjectnessScaledKD(fm_nms=False)
    expected = kl(0.75, 0.5) + 0.75 * kl(0.5, 0.75) + 0.75 * (1.0 - 0.5) ** 2
    assert term(student, [teacher], None).item() == pytest.approx(expected, rel=1e-5)
    assert ObjectnessScaledKD(lambda_d=2.0, fm_nms=False)(student, [teacher], None).item() == pytest.approx(
        2 * expected, rel=1e-5)
    assert term(teacher, [teacher], None).item() == pytest.approx(0.0, abs=1e-6)


def test_objectness_scaled_kd_needs_equal_heads():
    with pytest.raises(ShapeError, match="same levels, anchors and classes"):
        ObjectnessScaledKD()(one_cell([0] * 6), [one_cell([0] * 7, classes=2)], None)


def test_fm_nms_keeps_the_best_of_each_class_in_3x3():
    obj = torch.tensor([0.9, 0.5, 0.8, 0.3, 0.95]).view(1, 1, 1, 5)
    classes = torch.tensor([0, 0, 1, 1, 0])
    scores = torch.nn.functional.one_hot(classes, 2).float().view(1, 1, 1, 5, 2)
    keep = fm_nms(obj, scores)
    # 0.5 loses to its class-0 neighbour 0.9; 0.3 to its class-1 neighbour 0.8; 0.95 has no class-0 neighbour
    assert keep.view(-1).tolist() == [True, False, True, False, True]
    # two anchors of one cell: the same class competes, different classes do not
    obj2 = torch.tensor([0.6, 0.7]).view(1, 2, 1, 1)
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).view(1, 2, 1, 1, 2)
    other = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 1, 2)
    assert fm_nms(obj2, same).view(-1).tolist() == [False, True]
    assert fm_nms(obj2, other).view(-1).tolist() == [True, True]


def test_fm_nms_zeroes_the_suppressed_teacher_objectness():
    teacher = {"head:0": torch.zeros(1, 1, 1, 2, 6)}
    teacher["head:0"][0, 0, 0, :, 4] = torch.tensor([LN3, 0.0])  # 0.75 suppresses 0.5 (same class)
    student = {"head:0": teacher["head:0"].clone()}
    value = ObjectnessScaledKD()(student, [teacher], None).item()
    # cell 0 matches exactly; cell 1's target becomes 0, the student says 0.5: KL(0 ‖ 0.5) = ln 2, mean of 2 cells
    assert value == pytest.approx(math.log(2) / 2, rel=1e-5)


ANCHORS = torch.tensor([[[2, 2], [3, 3], [4, 4]], [[16, 16], [80, 80], [90, 90]],
                        [[200, 200], [210, 210], [220, 220]]], dtype=torch.float32)
GRIDS = [(8, 8), (4, 4), (2, 2)]
# a 16 × 16 box centred mid-cell (1, 1) of stride 16: one positive, level 1, anchor 0, y = (0.5, 0.5, 1, 1)
TARGETS = [{"boxes": torch.tensor([[16.0, 16.0, 32.0, 32.0]]), "labels": torch.tensor([0])}]


def maps(x_logit=0.0, fill=None):
    out = {f"head:{i}": torch.zeros(1, 3, h, w, 7) for i, (h, w) in enumerate(GRIDS)}
    if fill is not None:
        for m in out.values():
            m[...] = torch.tensor(fill)
    out["head:1"][0, 0, 1, 1, 0] = x_logit
    return out


def test_chen_soft_class_loss_hand_worked():
    # teacher: objectness 0.5, classes [0, 0] → P_t = [0.5, 0.25, 0.25]
    # student: objectness 0.75, classes [ln 3, 0] → softmax [0.75, 0.25] → P_s = [0.25, 0.5625, 0.1875]
    teacher, student = maps(fill=[0, 0, 0, 0, 0, 0, 0]), maps(fill=[0, 0, 0, 0, LN3, LN3, 0])
    pt, ps, w = [0.5, 0.25, 0.25], [0.25, 0.5625, 0.1875], [1.5, 1.0, 1.0]
    cross_entropy = -sum(wc * p * math.log(q) for wc, p, q in zip(w, pt, ps, strict=True))
    teacher_term = -sum(wc * p * math.log(p) for wc, p in zip(w, pt, strict=True))
    term = ChenDetectionKD(ANCHORS, mu=0.5, nu=0.0)
    assert term(student, [teacher], TARGETS).item() == pytest.approx(0.5 * (cross_entropy - teacher_term), rel=1e-5)
    assert term(teacher, [teacher], TARGETS).item() == pytest.approx(0.0, abs=1e-6)


def test_chen_bounded_regression_hand_worked():
    term = ChenDetectionKD(ANCHORS, mu=1.0, nu=0.5)  # mu = 1: the soft part has weight 0
    student, perfect_teacher = maps(x_logit=LN3), maps()  # student x offset 1.0 vs y 0.5: d_s = 0.25; d_t = 0
    assert term(student, [perfect_teacher], TARGETS).item() == pytest.approx(0.5 * 0.25, rel=1e-5)
    # the student beats the teacher: zero
    assert term(perfect_teacher, [student], TARGETS).item() == 0.0
    # teacher x offset 2·0.8 − 0.5 = 1.1: d_t = 0.36 > d_s = 0.25 → 0 with m = 0, counted with m = 0.2
    worse_teacher = maps(x_logit=math.log(4))
    assert term(student, [worse_teacher], TARGETS).item() == 0.0
    with_margin = ChenDetectionKD(ANCHORS, mu=1.0, nu=0.5, margin=0.2)
    assert with_margin(student, [worse_teacher], TARGETS).item() == pytest.approx(0.5 * 0.25, rel=1e-5)


def test_chen_yolo_loss_scales_the_hard_classification_by_mu():
    hard = ChenDetectionKD(ANCHORS, mu=0.8).yolo_loss()
    assert (hard.obj_weight, hard.cls_weight, hard.box_weight) == pytest.approx((0.8, 0.4, 0.05))


def test_imitation_mask_hand_worked():
    boxes = [torch.tensor([[8.0, 8.0, 24.0, 24.0]])]
    anchors = torch.tensor([[16.0, 16.0]])
    # the four cells centred at 12 or 20 have IoU 144/368; their side neighbours 48/464 < 0.5 · 144/368
    mask = imitation_mask(boxes, anchors, 8, (4, 4), psi=0.5)[0, 0]
    expected = torch.zeros(4, 4)
    expected[1:3, 1:3] = 1
    assert torch.equal(mask, expected)
    wide = imitation_mask(boxes, anchors, 8, (4, 4), psi=0.2)[0, 0]  # 48/464 > 0.2 · 144/368: corners stay out
    assert wide.sum() == 12 and wide[0, 0] == 0 and wide[0, 1] == 1
    assert imitation_mask([torch.zeros(0, 4)], anchors, 8, (4, 4)).sum() == 0


def feats(fill_teacher):
    student = {"feat:neck.p3": torch.zeros(1, 2, 4, 4)}
    teacher = {"feat:neck.p3": fill_teacher}
    return student, teacher


def test_neck_hints_masked_mean():
    t = torch.zeros(1, 2, 4, 4)
    t[:, :, 0, 0] = 5.0  # outside the mask
    student, teacher = feats(t)
    anchors = torch.tensor([[16.0, 16.0]] * 9)
    term = NeckHints([("neck.p3", "neck.p3")], adapter="identity", imitation_mask=True, anchors=anchors)
    term.setup(student, [teacher])
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 24.0, 24.0]]), "labels": torch.tensor([0])}]
    assert term(student, [teacher], targets).item() == 0.0
    t[:, 0, 1, 1] = 2.0  # inside: squared error 4 over 4 masked cells × 2 channels
    assert term(student, [teacher], targets).item() == pytest.approx(0.5)
    unmasked = NeckHints([("neck.p3", "neck.p3")], adapter="identity", distance="l1")
    unmasked.setup(student, [teacher])
    assert unmasked(student, [teacher], targets).item() == pytest.approx((2 * 5 + 2) / 32)


def test_neck_hints_identity_with_other_channels_says_conv1x1():
    student, teacher = {"feat:a": torch.zeros(1, 2, 4, 4)}, {"feat:b": torch.zeros(1, 3, 4, 4)}
    term = NeckHints([("b", "a")], adapter="identity")
    with pytest.raises(ShapeError, match="conv1x1"):
        term.setup(student, [teacher])
    adapted = NeckHints([("b", "a")])
    adapted.setup(student, [teacher])
    # a zero student through the 1×1 conv is its bias at every location
    bias = adapted.hints[0].adapter.bias.detach()
    assert adapted(student, [teacher], None).item() == pytest.approx((bias**2).mean().item(), rel=1e-5)
