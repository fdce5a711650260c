"""Distiller: weighted terms, a frozen teacher whatever the loop does, use in a user's own loop, stages."""

import copy
import math

import pytest
import torch
import torchvision
from torch import nn

from hintdistill import (
    CrossEntropy,
    Distiller,
    HintDistillError,
    HintLoss,
    LinearRamp,
    ShapeError,
    SoftTargetKD,
)
from hintdistill.config import StageConfig
from hintdistill.engine.loop import set_trainable

LN3 = math.log(3.0)


class FixedLogits(nn.Module):
    """Returns the same logits for every input (a trainable parameter for a student)."""

    def __init__(self, row, trainable=True):
        super().__init__()
        self.z = nn.Parameter(torch.tensor([row]), requires_grad=trainable)

    def forward(self, x):
        return self.z.expand(x.shape[0], -1)


def test_alpha_mix_equals_the_hand_computed_mix():
    # Student z = [0, 0], label 1: CE = ln 2 = 0.693147.
    # Teacher z = [0, 2 ln 3], T = 2: KD = T²·KL([1/4, 3/4] ‖ [1/2, 1/2]) = 0.523248 (see test_terms).
    # alpha = 0.9 is the soft term's weight: 0.9 · 0.523248 + 0.1 · 0.693147 = 0.540238
    kd = 4 * (0.25 * math.log(0.5) + 0.75 * math.log(1.5))
    distiller = Distiller(FixedLogits([0.0, 0.0]), FixedLogits([0.0, 2 * LN3], trainable=False),
                          {"ce": (CrossEntropy(), 0.1), "kd": (SoftTargetKD(2.0), 0.9)},
                          example_inputs=torch.zeros(2, 1))
    outputs, losses = distiller(torch.zeros(3, 1), torch.tensor([1, 1, 1]))
    assert losses["ce"].item() == pytest.approx(math.log(2), abs=1e-6)
    assert losses["kd"].item() == pytest.approx(kd, abs=1e-6)
    assert losses["loss"].item() == pytest.approx(0.9 * kd + 0.1 * math.log(2), abs=1e-6)
    assert losses["loss"].item() == pytest.approx(0.540238, abs=1e-6)
    assert outputs["logits"].shape == (3, 2)
    assert losses["loss"].requires_grad and not losses["kd"].requires_grad  # parts are for logging


def test_ensemble_of_two_teachers_through_the_distiller():
    # teachers [1/4, 3/4] and [1/2, 1/2] at T = 1 -> target [3/8, 5/8]; student [1/2, 1/2]
    teachers = [FixedLogits([0.0, LN3], False), FixedLogits([0.0, 0.0], False)]
    distiller = Distiller(FixedLogits([0.0, 0.0]), teachers, {"kd": (SoftTargetKD(1.0), 1.0)},
                          example_inputs=torch.zeros(1, 1))
    _, losses = distiller(torch.zeros(2, 1))
    assert losses["loss"].item() == pytest.approx(3 / 8 * math.log(3 / 4) + 5 / 8 * math.log(5 / 4), abs=1e-6)


def test_linear_weight_schedule():
    w = LinearRamp(4, 1, 10)
    assert [w(e) for e in (0, 5, 10, 15)] == [4.0, 2.5, 1.0, 1.0]
    assert w(2.5) == pytest.approx(3.25)  # fractional epochs (the engine passes epoch + step / steps)
    assert w(-1) == 4.0
    assert LinearRamp(4, 1, 0)(0) == 1.0
    # the Distiller applies the scheduled weight to the term
    distiller = Distiller(FixedLogits([0.0, 0.0]), None, {"ce": (CrossEntropy(), LinearRamp(4, 1, 10))},
                          example_inputs=torch.zeros(1, 1))
    for epoch, weight in ((0, 4.0), (5, 2.5), (10, 1.0), (12, 1.0)):
        distiller.set_epoch(epoch)
        _, losses = distiller(torch.zeros(2, 1), torch.tensor([0, 1]))
        assert losses["loss"].item() == pytest.approx(weight * math.log(2), abs=1e-6)


def test_distiller_errors():
    student = FixedLogits([0.0, 0.0])
    with pytest.raises(HintDistillError, match="at least one loss term"):
        Distiller(student, None, {})
    with pytest.raises(HintDistillError, match="needs a teacher"):
        Distiller(student, None, {"kd": (SoftTargetKD(), 1.0)})
    distiller = Distiller(student, None, {"ce": (CrossEntropy(), 1.0)})
    with pytest.raises(HintDistillError, match="example_inputs"):
        distiller(torch.zeros(1, 1), torch.tensor([0]))


def test_teacher_class_count_differs_is_a_shape_error_at_setup(small_cnn):
    with pytest.raises(ShapeError, match="teacher 0 predicts 5 classes but the student predicts 10"):
        Distiller(small_cnn(num_classes=10), small_cnn((8, 16), num_classes=5),
                  {"kd": (SoftTargetKD(4.0), 1.0)}, example_inputs=torch.zeros(2, 1, 16, 16))


def snapshot(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_identical(model: nn.Module, before: dict) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"teacher {k} changed"


def test_teacher_frozen_whatever_the_loop_does(small_cnn):
    torch.manual_seed(0)
    teacher, student = small_cnn((8, 16), seed=1), small_cnn((4, 8), seed=2)
    teacher.train()  # a freshly trained teacher is typically left in train mode
    before = snapshot(teacher)
    assert any(k.endswith("num_batches_tracked") for k in before) and any(k.endswith("running_var") for k in before)
    x = torch.randn(8, 1, 16, 16)
    y = torch.randint(0, 10, (8,))
    distiller = Distiller(student, teacher, {
        "ce": (CrossEntropy(), 0.1), "kd": (SoftTargetKD(4.0), 0.9),
        "hint": (HintLoss("features.stage2", "features.stage2"), 1.0)}, example_inputs=x[:2])
    trainable = {id(p) for p in distiller.trainable_parameters()}
    assert not trainable & {id(p) for p in teacher.parameters()}
    assert trainable == {id(p) for p in student.parameters()} | {id(p) for p in distiller.terms.parameters()}
    # The harshest loop: every parameter of the distiller (teacher included) in a weight-decayed optimizer,
    # .train() on the distiller, the teacher and one of the teacher's submodules before every step.
    optimizer = torch.optim.SGD(distiller.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    student_before = snapshot(student)
    for step in range(4):
        distiller.train()
        assert not teacher.training
        if step == 1:
            teacher.train()
        if step >= 2:
            teacher.features.train()  # only a submodule: the root still says eval
        _, losses = distiller(x, y)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        assert not any(m.training for m in teacher.modules())
    assert_identical(teacher, before)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not torch.equal(student.state_dict()["features.stage1.0.0.weight"], student_before["features.stage1.0.0.weight"])
    # the student's own batch-norm statistics do move (it is in train mode)
    assert student.state_dict()["features.stage1.0.1.num_batches_tracked"].item() == 4


def test_readme_loop_with_torchvision_teacher_and_student():
    # The README's snippet: resnet18 teacher, mobilenet_v3_small student, CE + KD + a FitNets hint.
    torch.manual_seed(0)
    teacher = torchvision.models.resnet18(num_classes=10)
    student = torchvision.models.mobilenet_v3_small(num_classes=10)
    images, labels = torch.randn(8, 3, 64, 64), torch.randint(0, 10, (8,))
    teacher_before = snapshot(teacher)

    distiller = Distiller(student, teacher, {
        "ce": (CrossEntropy(), 0.1),
        "kd": (SoftTargetKD(temperature=4.0), 0.9),
        "hint": (HintLoss(hint="layer2", guided="features.3", adapter="conv1x1"), 1.0),
    }, example_inputs=images[:2])
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=0.01, momentum=0.9)
    adapter = distiller.terms["hint"].adapter  # resnet18 layer2: 128 x 8 x 8; mobilenet features.3: 24 x 8 x 8
    assert isinstance(adapter, nn.Conv2d) and (adapter.in_channels, adapter.out_channels) == (24, 128)
    adapter_before = adapter.weight.detach().clone()

    history = []
    for _ in range(3):
        outputs, losses = distiller(images, labels)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append(losses)
        assert set(losses) == {"ce", "kd", "hint", "loss"}
        parts = 0.1 * losses["ce"] + 0.9 * losses["kd"] + 1.0 * losses["hint"]
        assert losses["loss"].item() == pytest.approx(parts.item(), rel=1e-5)
    assert outputs["logits"].shape == (8, 10) and "feat:features.3" in outputs
    assert history[-1]["loss"].item() < history[0]["loss"].item()
    assert not torch.equal(adapter.weight, adapter_before)
    assert_identical(teacher, teacher_before)


def test_fitnets_stage_one_trains_only_up_to_the_guided_layer(small_cnn):
    torch.manual_seed(0)
    teacher, student = small_cnn((8, 16, 32), seed=1), small_cnn((4, 8, 16), seed=2)
    x = torch.randn(8, 1, 16, 16)
    stage = StageConfig(name="hint", epochs=1, trainable="up_to_guided", terms=[
        {"type": "hint", "hint": "features.stage2", "guided": "features.stage2"}])
    distiller = Distiller(student, teacher, {"hint": (HintLoss("features.stage2", "features.stage2"), 1.0)},
                          example_inputs=x[:2])
    set_trainable(student, stage, distiller, x[:2])
    frozen = {n for n, p in student.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in student.named_parameters() if n.startswith(("features.stage3", "classifier"))}
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    adapter_before = distiller.terms["hint"].adapter.weight.detach().clone()
    for _ in range(3):
        _, losses = distiller(x)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
    for name, p in student.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed == (name not in frozen), name
    assert not torch.equal(distiller.terms["hint"].adapter.weight, adapter_before)
    # stage 2 ("all") makes the whole student trainable again
    set_trainable(student, StageConfig(name="kd", epochs=1, terms=[{"type": "ce"}]), distiller, x[:2])
    assert all(p.requires_grad for p in student.parameters())


def test_setup_probe_does_not_move_the_students_statistics(small_cnn):
    student = small_cnn((4, 8), seed=2).train()
    before = snapshot(student)
    Distiller(student, None, {"ce": (CrossEntropy(), 1.0)}, example_inputs=torch.randn(4, 1, 16, 16))
    assert_identical(student, before)
    assert student.training
    assert copy.deepcopy(student).training


def test_hint_stage_stops_both_forwards_at_the_tapped_layer(small_cnn):
    from test_taps import count_leaf_calls

    x = torch.randn(4, 1, 8, 8)
    student, teacher = small_cnn((4, 8), seed=0), small_cnn((8, 16), seed=1)
    counts = {}
    for label, terms in [("hint", {"hint": (HintLoss("features.stage1", "features.stage1"), 1.0)}),
                         ("hint+kd", {"hint": (HintLoss("features.stage1", "features.stage1"), 1.0),
                                      "kd": (SoftTargetKD(4.0), 1.0)})]:
        torch.manual_seed(2)
        distiller = Distiller(student, teacher, terms, example_inputs=x)
        (s_calls, s_handles), (t_calls, t_handles) = count_leaf_calls(student), count_leaf_calls(teacher)
        out, losses = distiller(x)
        counts[label] = (s_calls[0], t_calls[0], float(losses["hint"]), "logits" in out)
        for h in s_handles + t_handles:
            h.remove()
        distiller.remove_taps()
    # stage1 is conv, bn, relu: 3 leaves; the whole cnn adds stage2's 3, pool, dropout, classifier: 9
    assert counts["hint"][:2] == (3, 3) and not counts["hint"][3]
    assert counts["hint+kd"][:2] == (9, 9) and counts["hint+kd"][3]  # kd reads logits: full passes
    assert counts["hint"][2] == counts["hint+kd"][2]  # same hint loss either way
