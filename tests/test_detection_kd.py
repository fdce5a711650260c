"""Detection distillation terms against hand-worked numbers on tiny maps."""

import math

import pytest
import torch

from hintdistill.detection.heads import HeadSpec
from hintdistill.errors import ConfigError, ShapeError
from hintdistill.terms.detection import (
    ChenDetectionKD,
    NeckHints,
    ObjectnessScaledKD,
    bernoulli_kl,
    fm_nms,
    imitation_mask,
    log_class_distribution,
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
    term = ObjectnessScaledKD(fm_nms=False, units="paper")
    expected = kl(0.75, 0.5) + 0.75 * kl(0.5, 0.75) + 0.75 * (1.0 - 0.5) ** 2
    assert term(student, [teacher], None).item() == pytest.approx(expected, rel=1e-5)
    double = ObjectnessScaledKD(lambda_d=2.0, fm_nms=False, units="paper")
    assert double(student, [teacher], None).item() == pytest.approx(2 * expected, rel=1e-5)
    assert term(teacher, [teacher], None).item() == pytest.approx(0.0, abs=1e-6)
    no_box = ObjectnessScaledKD(fm_nms=False, box_weight=0.0, units="paper")  # the teacher-box part dropped
    assert no_box(student, [teacher], None).item() == pytest.approx(kl(0.75, 0.5) + 0.75 * kl(0.5, 0.75), rel=1e-5)
    half = ObjectnessScaledKD(fm_nms=False, box_weight=0.5, units="paper")
    assert half(student, [teacher], None).item() == pytest.approx(expected - 0.75 * 0.25 / 2, rel=1e-5)
    # its parts are logged (objectness_kd.obj / .cls / .box), λ_D included, and sum to the loss
    two = ObjectnessScaledKD(lambda_d=2.0, fm_nms=False, units="paper")
    two(student, [teacher], None)
    assert {k: v.item() for k, v in two.last.items()} == pytest.approx(
        {"obj": 2 * kl(0.75, 0.5), "cls": 2 * 0.75 * kl(0.5, 0.75), "box": 2 * 0.75 * 0.25}, rel=1e-5)
    no_box(student, [teacher], None)
    assert no_box.last["box"].item() == 0.0
    # the same parts with gradients, for benchmarks/detection_diagnose.py
    with_grad = two.loss_parts(student, [teacher])
    assert {k: v.item() for k, v in with_grad.items()} == pytest.approx({k: v.item() for k, v in two.last.items()})


def test_objectness_scaled_kd_with_iou_quality_scales_the_objectness_target_by_box_agreement():
    teacher = one_cell([0, 0, 0, 0, LN3, 0])  # objectness 0.75, class 0.5, box (0.5, 0.5, 1, 1): one anchor
    # student: objectness 0.5, class 0.75, width (2 σ(ln 3))² = 2.25 anchors, same centre and height → IoU 1 / 2.25
    student = one_cell([0, 0, LN3, 0, 0, LN3])
    heads = [HeadSpec(8, ((10.0, 10.0),))]
    q = 1 / 2.25
    term = ObjectnessScaledKD(fm_nms=False, heads=heads, quality="iou", units="paper")
    expected = kl(0.75 * q, 0.5) + 0.75 * kl(0.5, 0.75) + 0.75 * (2.25 - 1.0) ** 2
    assert term(student, [teacher], None).item() == pytest.approx(expected, rel=1e-5)
    # the paper's form: the target is the teacher's objectness whatever the boxes
    paper = ObjectnessScaledKD(fm_nms=False, heads=heads, units="paper")
    assert paper(student, [teacher], None).item() == pytest.approx(
        kl(0.75, 0.5) + 0.75 * kl(0.5, 0.75) + 0.75 * (2.25 - 1.0) ** 2, rel=1e-5)
    assert term(teacher, [teacher], None).item() == pytest.approx(0.0, abs=1e-6)  # same box: q = 1
    with pytest.raises(ConfigError, match="quality"):
        ObjectnessScaledKD(quality="gt", units="paper")
    with pytest.raises(ConfigError, match="anchors"):
        ObjectnessScaledKD(quality="iou", units="paper")


def test_objectness_scaled_kd_in_detection_units_uses_the_detection_loss_functions_and_gains():
    heads = [HeadSpec(8, ((10.0, 10.0),))]
    # two cells; the teacher is sure of the first (σ(1e4) = 1) and not of the second (σ(-1e4) = 0), class 0.5,
    # box params (0.5, 0.5, 1, 1) at both. The student matches it but for its width at the first cell:
    # (2 σ(ln 3))² = 2.25 anchors, same centre and height: IoU 1 / 2.25, aspect term v = 4/π² (atan 2.25 − atan 1)²
    t = torch.tensor([[0, 0, 0, 0, 1e4, 0], [0, 0, 0, 0, -1e4, 0]], dtype=torch.float32).view(1, 1, 1, 2, 6)
    s = t.clone()
    s[0, 0, 0, 0, 2] = LN3
    teacher, student = {"head:0": t}, {"head:0": s}
    iou = 1 / 2.25
    v = 4 / math.pi ** 2 * (math.atan(2.25) - math.atan(1.0)) ** 2
    miss = 1 - (iou - v / (1 - iou + v) * v)  # 1 − CIoU; the centres coincide
    term = ObjectnessScaledKD(fm_nms=False, heads=heads, units="detection")
    term(student, [teacher], None)
    # objectness mass 1 + 0 = 1: the miss at the first cell, times the box loss's gain 0.05
    assert term.last["box"].item() == pytest.approx(0.05 * miss, rel=1e-4)
    assert term.last["obj"].item() == pytest.approx(0.0, abs=1e-6)
    assert term.last["cls"].item() == pytest.approx(0.0, abs=1e-6)
    # objectness: the hard loss's gain 1 and level balance (4 for a single level) times the mean over the cells;
    # class: its gain 0.5 times the σ(o^T)-weighted mean over the teacher's mass (the second cell weighs 0)
    s[0, 0, 0, 1, 4] = LN3
    s[0, 0, 0, :, 5] = LN3
    term(student, [teacher], None)
    assert term.last["obj"].item() == pytest.approx(4.0 * math.log(4) / 2, rel=1e-4)
    assert term.last["cls"].item() == pytest.approx(0.5 * kl(0.5, 0.75), rel=1e-4)
    # a mass under 1 is not divided up to 1: a teacher at σ = 0.75 gives 0.75 of the miss
    t[0, 0, 0, 0, 4] = LN3
    s[0, 0, 0, 0, 4] = LN3
    term(student, [teacher], None)
    assert term.last["box"].item() == pytest.approx(0.05 * 0.75 * miss, rel=1e-4)
    # a mass over 1 averages: both cells confident, the second one's boxes agree
    t[0, 0, 0, :, 4] = 1e4
    s[0, 0, 0, :, 4] = 1e4
    term(student, [teacher], None)
    assert term.last["box"].item() == pytest.approx(0.05 * miss / 2, rel=1e-4)
    assert ObjectnessScaledKD(fm_nms=False, heads=heads, units="detection")(teacher, [teacher], None).item() == (
        pytest.approx(0.0, abs=1e-6))
    with pytest.raises(ConfigError, match="units"):
        ObjectnessScaledKD(units="yolo")
    with pytest.raises(ConfigError, match="anchors.*model_heads.*units='paper'"):
        ObjectnessScaledKD()  # the default decodes boxes: without heads the error names both ways out
    assert ObjectnessScaledKD(box_weight=0.0).units == "detection"  # no box part, nothing to decode


def test_objectness_scaled_kd_needs_equal_heads():
    with pytest.raises(ShapeError, match="same levels, anchors and classes"):
        ObjectnessScaledKD(units="paper")(one_cell([0] * 6), [one_cell([0] * 7, classes=2)], None)


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
    value = ObjectnessScaledKD(units="paper")(student, [teacher], None).item()
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


def head_list(outputs):
    return [outputs[f"head:{i}"] for i in range(len(GRIDS))]


def test_chen_soft_class_loss_hand_worked():
    # teacher: objectness 0.5, classes [0, 0] → P_t = [0.5, 0.25, 0.25]
    # student: objectness 0.75, classes [ln 3, 0] → softmax [0.75, 0.25] → P_s = [0.25, 0.5625, 0.1875]
    teacher, student = maps(fill=[0, 0, 0, 0, 0, 0, 0]), maps(fill=[0, 0, 0, 0, LN3, LN3, 0])
    pt, ps, w = [0.5, 0.25, 0.25], [0.25, 0.5625, 0.1875], [1.5, 1.0, 1.0]
    cross_entropy = -sum(wc * p * math.log(q) for wc, p, q in zip(w, pt, ps, strict=True))
    teacher_term = -sum(wc * p * math.log(p) for wc, p in zip(w, pt, strict=True))
    term = ChenDetectionKD(ANCHORS, mu=0.5, nu=0.0, quality="none")
    # every cell alike: each level's mean is the per-cell value, summed with the objectness balance 4 + 1 + 0.4
    per_cell = cross_entropy - teacher_term
    assert term.soft_loss(head_list(student), head_list(teacher)).item() == pytest.approx(5.4 * per_cell, rel=1e-5)
    term(student, [teacher], TARGETS)
    assert term.last["soft"].item() == pytest.approx(0.5 * 5.4 * per_cell, rel=1e-5)
    term(teacher, [teacher], TARGETS)
    assert term.last["soft"].item() == pytest.approx(0.0, abs=1e-6)


def test_chen_soft_loss_with_fm_nms_teaches_background_at_suppressed_cells():
    # every cell and anchor of the teacher alike: objectness 0.5, classes [0, 0]; then one anchor of one cell
    # of level 0 is made more confident (0.75): it alone keeps its soft target in its 3x3 neighbourhood
    teacher, student = maps(fill=[0, 0, 0, 0, 0, 0, 0]), maps(fill=[0, 0, 0, 0, 0, 0, 0])
    teacher["head:0"][0, 0, 3, 3, 4] = LN3
    plain = ChenDetectionKD(ANCHORS, mu=0.5, nu=0.0, quality="none")
    nms = ChenDetectionKD(ANCHORS, mu=0.5, nu=0.0, fm_nms=True, quality="none")
    s_maps, t_maps = head_list(student), head_list(teacher)
    # the student says P = [0.5, 0.25, 0.25] everywhere; a suppressed cell's target [1, 0, 0] costs 1.5 ln 2
    suppressed = 1.5 * math.log(2)
    kept = sum(w * p * math.log(p / q) for w, p, q in zip([1.5, 1, 1], [0.25, 0.375, 0.375], [0.5, 0.25, 0.25],
                                                          strict=True))
    # level 0 (8 x 8 cells, 3 anchors; the best of a class is taken over a cell's anchors, then over 3 x 3
    # cells): the 0.75 candidate suppresses the other 26 candidates of the 9 cells around it and is kept; every
    # other candidate has only 0.5 around it and is kept (ties keep both), with a zero KL to the student
    n0 = 3 * 64
    assert nms.soft_loss(s_maps, t_maps).item() == pytest.approx(4 * (kept + 26 * suppressed) / n0, rel=1e-5)
    assert plain.soft_loss(s_maps, t_maps).item() == pytest.approx(4 * kept / n0, rel=1e-5)  # levels 1, 2: 0


def test_chen_soft_loss_with_iou_quality_scales_the_teachers_foreground_by_box_agreement():
    # teacher everywhere: objectness 0.5, classes [0, 0], box one anchor square at the cell centre;
    # student: objectness 0.75, classes [ln 3, 0], width (2 σ(ln 3))² = 2.25 anchors, same centre and height
    # → q = IoU = 1 / 2.25 and P'_t = [1 − q · 0.5, q · 0.25, q · 0.25]
    teacher, student = maps(fill=[0, 0, 0, 0, 0, 0, 0]), maps(fill=[0, 0, LN3, 0, LN3, LN3, 0])
    q = 1 / 2.25
    pt, ps, w = [1 - q * 0.5, q * 0.25, q * 0.25], [0.25, 0.5625, 0.1875], [1.5, 1.0, 1.0]
    per_cell = sum(wc * p * math.log(p / r) for wc, p, r in zip(w, pt, ps, strict=True))
    term = ChenDetectionKD(ANCHORS, mu=0.5, nu=0.0, quality="iou")
    s_maps, t_maps = head_list(student), head_list(teacher)
    assert term.soft_loss(s_maps, t_maps).item() == pytest.approx(5.4 * per_cell, rel=1e-5)
    # the student's box gets no gradient from the soft term; its objectness and classes do
    s_maps = [m.clone().requires_grad_() for m in s_maps]
    term.soft_loss(s_maps, t_maps).backward()
    assert s_maps[0].grad[..., :4].abs().max() == 0 and s_maps[0].grad[..., 4].abs().min() > 0
    # boxes that agree (q = 1): the paper's form exactly
    same_box = maps(fill=[0, 0, 0, 0, LN3, LN3, 0])
    paper = ChenDetectionKD(ANCHORS, mu=0.5, nu=0.0, quality="none")
    assert term.soft_loss(head_list(same_box), t_maps).item() == pytest.approx(
        paper.soft_loss(head_list(same_box), t_maps).item(), rel=1e-6)
    # disjoint boxes (q = 0): the teacher teaches pure background, 1.5 · (−log P_s,0) per cell
    far = maps(fill=[-20, -20, -20, -20, LN3, LN3, 0])
    far_cell = 1.5 * -math.log(0.25)
    assert term.soft_loss(head_list(far), t_maps).item() == pytest.approx(5.4 * far_cell, rel=1e-4)
    # an exp-decoded (Darknet) size that overflows: no agreement, and a finite loss
    inf = maps(fill=[0, 0, 1e4, 1e4, LN3, LN3, 0])
    darknet = [HeadSpec(h.stride, h.anchors, "darknet") for h in term.heads]
    exp_term = ChenDetectionKD(ANCHORS, mu=0.5, nu=0.0, quality="iou", teacher_heads=term.heads)
    exp_term.heads = darknet
    assert torch.isfinite(exp_term.soft_loss(head_list(inf), t_maps))
    with pytest.raises(ConfigError, match="quality"):
        ChenDetectionKD(ANCHORS, quality="gt")


def test_chen_soft_distribution_at_a_temperature_is_softmax_of_scaled_logits():
    # o = 0, z = [0, 0]: Z = [0, ln ½, ln ½]; at T = 2, exp(Z/2) = [1, √½, √½] → P = [1, √½, √½] / (1 + √2)
    raw = torch.zeros(1, 7)
    p = log_class_distribution(raw, temperature=2.0).exp()[0]
    r = math.sqrt(0.5)
    torch.testing.assert_close(p, torch.tensor([1, r, r]) / (1 + 2 * r))
    # (not σ(o/T) · softmax(z/T) = [0.5, 0.25, 0.25], which ignores T here)
    assert log_class_distribution(raw, 1.0).exp()[0].tolist() == pytest.approx([0.5, 0.25, 0.25])


def test_chen_bounded_regression_hand_worked():
    term = ChenDetectionKD(ANCHORS, mu=1.0, nu=0.5, regression="bounded")
    student, perfect_teacher = maps(x_logit=LN3), maps()  # student x offset 1.0 vs y 0.5: d_s = 0.25; d_t = 0
    def bounded(s, t, m=term):
        return m.bounded_regression(head_list(s), head_list(t), TARGETS).item()
    assert bounded(student, perfect_teacher) == pytest.approx(0.25, rel=1e-5)
    term(student, [perfect_teacher], TARGETS)
    assert term.last["bounded"].item() == pytest.approx(0.5 * 0.25, rel=1e-5)  # times ν
    # the student beats the teacher: zero
    assert bounded(perfect_teacher, student) == 0.0
    # teacher x offset 2·0.8 − 0.5 = 1.1: d_t = 0.36 > d_s = 0.25 → 0 with m = 0, counted with m = 0.2
    worse_teacher = maps(x_logit=math.log(4))
    assert bounded(student, worse_teacher) == 0.0
    with_margin = ChenDetectionKD(ANCHORS, mu=1.0, nu=0.5, margin=0.2, regression="bounded")
    assert bounded(student, worse_teacher, with_margin) == pytest.approx(0.25, rel=1e-5)


def test_chen_bounded_iou_regression_hand_worked():
    """The default form: e = 1 − CIoU in the hard box loss's units (gain 0.05). The GT is the 16 × 16 box at
    (24, 24); logits 0 predict centre offset 0.5 and size 1 anchor (16 px): exactly the GT, e = 0."""
    term = ChenDetectionKD(ANCHORS, mu=1.0, nu=1.0)
    exact, shifted = maps(), maps(x_logit=LN3)  # shifted: centre x at (1 + 1) · 16 = 32 instead of 24
    # shifted by 8 px: IoU = 8·16 / (24·16) = 1/3; enclosing box 24 × 16, ρ² = 64, c² = 832; same aspect: v = 0
    e = 1 - (1 / 3 - 64 / 832)

    def bounded(s, t):
        return term.bounded_regression(head_list(s), head_list(t), TARGETS).item()
    assert bounded(shifted, exact) == pytest.approx(0.05 * e, rel=1e-4)
    assert bounded(exact, shifted) == 0.0  # the student beats the teacher
    assert bounded(shifted, shifted) == 0.0  # a tie (e_s + 0 > e_t is false) is not worse than the teacher


def test_chen_yolo_loss_scales_the_hard_classification_by_mu():
    hard = ChenDetectionKD(ANCHORS, mu=0.8).yolo_loss()
    assert (hard.obj_weight, hard.cls_weight, hard.box_weight) == pytest.approx((0.8, 0.4, 0.05))


def test_chen_total_is_mu_hard_plus_soft_plus_bounded():
    """The term holds the whole objective: its value is the μ-scaled YoloLoss + (1 − μ) L_soft + ν L_b."""
    from hintdistill.detection.loss import YoloLoss

    teacher, student = maps(fill=[0, 0, 0, 0, 0, 0, 0]), maps(0.3, fill=[0, 0, 0, 0, LN3, LN3, 0])
    term = ChenDetectionKD(ANCHORS, mu=0.25, nu=0.5, quality="none")
    total = term(student, [teacher], TARGETS).item()
    hard = YoloLoss(ANCHORS, obj_weight=0.25, cls_weight=0.125)(student, [], TARGETS).item()
    soft = 0.75 * term.soft_loss(head_list(student), head_list(teacher)).item()
    bounded = 0.5 * term.bounded_regression(head_list(student), head_list(teacher), TARGETS).item()
    assert bounded > 0 and total == pytest.approx(hard + soft + bounded, rel=1e-5)
    parts = term.last
    assert sum(float(v) for v in parts.values()) == pytest.approx(total, rel=1e-5)
    assert set(parts) == {"hard_box", "hard_obj", "hard_cls", "soft", "bounded"}
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


def test_neck_hints_paper_reduction_sums_as_chen_and_wang():
    t = torch.zeros(1, 2, 4, 4)
    t[:, :, 0, 0] = 5.0  # outside the mask: 25 in each of 2 channels
    t[:, 0, 1, 1] = 2.0  # inside: 4
    student, teacher = feats(t)
    chen = NeckHints([("neck.p3", "neck.p3")], adapter="identity", reduction="paper")
    chen.setup(student, [teacher])
    assert chen(student, [teacher], None).item() == pytest.approx(2 * 25 + 4)  # ‖V − Z‖² of the one image
    anchors = torch.tensor([[16.0, 16.0]] * 9)
    wang = NeckHints([("neck.p3", "neck.p3")], adapter="identity", imitation_mask=True, anchors=anchors,
                     reduction="paper")
    wang.setup(student, [teacher])
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 24.0, 24.0]]), "labels": torch.tensor([0])}]
    assert wang(student, [teacher], targets).item() == pytest.approx(4 / (2 * 4))  # N_p = 4 masked cells


def test_chen_teacher_weighted_regression_hand_worked():
    # one level-0 cell differs: the student's x logit 0 -> 1 gives an x offset (2σ(1) − 0.5) − (2σ(0) − 0.5);
    # the teacher's objectness everywhere σ(0) = 0.5, so the level-0 mean is 0.5 · d² / (3 · 64), other levels 0
    teacher, student = maps(fill=[0, 0, 0, 0, 0, 0, 0]), maps(fill=[0, 0, 0, 0, 0, 0, 0])
    student["head:0"][0, 1, 2, 2, 0] = 1.0
    d = 2 * torch.sigmoid(torch.tensor(1.0)).item() - 1.0
    term = ChenDetectionKD(ANCHORS, mu=0.5, nu=1.0, regression="teacher_weighted")
    value = term.bounded_regression(head_list(student), head_list(teacher), TARGETS).item()
    assert value == pytest.approx(0.5 * d * d / (3 * 64), rel=1e-5)
    term(student, [teacher], TARGETS)
    assert term.last["bounded"].item() == pytest.approx(value, rel=1e-5)
