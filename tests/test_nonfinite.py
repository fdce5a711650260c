"""Non-finite values through the Python API (issue 12): the Distiller refuses a NaN input before the student sees
it, and a NaN/inf loss raises (or warns) with the student's batch-norm statistics put back."""

import types
import warnings

import pytest
import torch

from hintdistill import CrossEntropy, Distiller, NonFiniteError, SoftTargetKD
from hintdistill.engine.nonfinite import NonFiniteGuard
from hintdistill.errors import HintDistillError


class Blowup(CrossEntropy):
    """Cross-entropy times ``factor`` (inf or nan makes the loss non-finite)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, student, teachers, targets):
        return super().forward(student, teachers, targets) * self.factor


def bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 1, 16, 16, generator=g), torch.tensor([0, 1, 2, 3])


def test_non_finite_loss_raises_names_the_term_and_keeps_batch_norm(small_cnn, batch):
    x, y = batch
    student, teacher = small_cnn(seed=0), small_cnn((8, 16), seed=1)
    d = Distiller(student, teacher, {"ce": (Blowup(float("nan")), 0.5), "kd": (SoftTargetKD(4.0), 0.5)},
                  example_inputs=x[:2]).train()
    before = bn_state(student)
    assert before  # the cnn has batch norm: the test would pass trivially otherwise
    with pytest.raises(NonFiniteError) as err:
        d(x, y)
    assert str(err.value).startswith("Distiller: the loss is non-finite because of term 'ce' (ce = nan); the "
                                     "student's batch-norm statistics were put back as they were before this batch.")
    assert "lower the learning rate" in str(err.value) and err.value.source == "term 'ce'"
    after = bn_state(student)
    assert all(torch.equal(before[k], after[k]) for k in before)
    _, losses = Distiller(student, teacher, {"kd": (SoftTargetKD(4.0), 1.0)}, example_inputs=x[:2]).train()(x, y)
    assert not torch.equal(bn_state(student)["features.stage1.0.1.running_mean"],
                           before["features.stage1.0.1.running_mean"])  # a finite batch does move them


def test_non_finite_input_is_refused_before_the_student_runs(small_cnn, batch):
    x, y = batch
    x[1, 0, 3, 3] = float("inf")
    student = small_cnn()
    d = Distiller(student, None, {"ce": (CrossEntropy(), 1.0)}, example_inputs=x[2:]).train()
    calls = []
    student.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(NonFiniteError) as err:
        d(x, y)
    assert "the input batch holds 1 infinite value (of 1024 in a [4, 1, 16, 16] tensor)" in str(err.value)
    assert "check the data" in str(err.value) and "learning rate" not in str(err.value)
    assert err.value.from_input and calls == []


def test_warn_returns_the_losses_and_ignore_is_silent(small_cnn, batch):
    x, y = batch
    student = small_cnn()
    before = bn_state(student)
    d = Distiller(student, None, {"ce": (Blowup(float("inf")), 1.0)}, example_inputs=x[:2],
                  on_nonfinite="warn").train()
    with pytest.warns(RuntimeWarning, match="term 'ce' \\(ce = inf\\)"):
        _, losses = d(x, y)
    assert losses["loss"].item() == float("inf")
    assert all(torch.equal(before[k], v) for k, v in bn_state(student).items())
    d.on_nonfinite = "ignore"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, losses = d(x, y)
    assert losses["loss"].item() == float("inf")
    with pytest.raises(HintDistillError, match="choose one of raise, warn, ignore"):
        Distiller(student, None, {"ce": (CrossEntropy(), 1.0)}, on_nonfinite="skip")


def test_non_finite_gradients_of_a_finite_loss_are_found():
    w = torch.nn.Parameter(torch.zeros(3))
    stage = types.SimpleNamespace(trainable=[w])  # the Stage's trainable parameters, listed once at build
    guard = NonFiniteGuard(stage)
    w.sum().sqrt().backward()  # sqrt(0) = 0 is finite, its gradient 1 / (2 sqrt(0)) is not
    failure = guard.gradients(None, amp=False)
    assert failure.source == "the gradients" and str(failure) == "the gradients' norm is inf"
    assert guard.gradients(None, amp=True) is None  # under AMP the GradScaler skips such steps itself
    w.grad = torch.ones(3)
    assert guard.gradients(None, amp=False) is None


def test_the_fused_gradient_check_finds_one_bad_element_and_leaves_the_gradients_as_they_were():
    params = [torch.nn.Parameter(torch.zeros(n)) for n in (5, 7, 3)]
    guard = NonFiniteGuard(types.SimpleNamespace(trainable=params))
    g = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e30  # huge but finite: a norm of them overflows, they do not
    before = [p.grad.clone() for p in params]
    assert guard.gradients(None, amp=False) is None and guard._fused
    assert all(torch.equal(a, p.grad) for a, p in zip(before, params, strict=True))  # unscaled by exactly 1
    params[1].grad[4] = float("nan")
    failure = guard.gradients(None, amp=False)
    assert failure.source == "the gradients" and str(failure) == "the gradients' norm is nan"
    # gradients of two dtypes: the per-tensor norm instead
    mixed = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))]
    guard = NonFiniteGuard(types.SimpleNamespace(trainable=mixed))
    mixed[0].grad, mixed[1].grad = torch.ones(2), torch.tensor([1.0, float("-inf")], dtype=torch.float64)
    assert str(guard.gradients(None, amp=False)) == "the gradients' norm is inf" and guard._fused is False


def test_input_check_finds_every_kind_of_bad_value_and_passes_huge_finite_ones():
    # the check sums first (fast) and looks element by element only when the sum is not finite
    from hintdistill.finite import nonfinite_part

    big = torch.full((4, 8), 3e38)  # every value finite, their sum overflows to inf
    assert nonfinite_part([big, {"x": torch.zeros(3)}]) is None
    for bad, word in ((float("nan"), "1 NaN value"), (float("inf"), "1 infinite value"), (-float("inf"), "1 infinite")):
        x = torch.zeros(2, 5)
        x[1, 3] = bad
        assert nonfinite_part({"a": torch.ones(2), "b": (x,)}).startswith(word)
    x = torch.tensor([float("inf"), -float("inf")])  # opposite infinities sum to NaN: still found
    assert nonfinite_part(x) == "2 infinite values (of 2 in a [2] tensor)"
    assert nonfinite_part(torch.tensor([1, 2])) is None  # integer tensors are not checked


def test_one_snapshot_serves_every_step_and_follows_replaced_buffers(small_cnn, batch):
    # the statistics put back are those of just before the bad batch, after good steps moved them
    x, y = batch
    student = small_cnn()
    blow = Blowup(1.0)
    d = Distiller(student, None, {"ce": (blow, 1.0)}, example_inputs=x[:2]).train()
    d(x, y)
    d(x * 2, y)
    moved = bn_state(student)
    blow.factor = float("nan")
    with pytest.raises(NonFiniteError):
        d(x, y)
    assert all(torch.equal(moved[k], v) for k, v in bn_state(student).items())
    # a buffer replaced between steps (an assignment, or model.to()) is snapshotted anew, not the old tensor
    bn = student.features.stage1[0][1]
    bn.running_mean = torch.full_like(bn.running_mean, 3.0)
    blow.factor = 1.0
    d(x, y)
    moved = bn_state(student)
    blow.factor = float("nan")
    with pytest.raises(NonFiniteError):
        d(x * 3, y)
    assert all(torch.equal(moved[k], v) for k, v in bn_state(student).items())
    assert not torch.equal(moved["features.stage1.0.1.running_mean"], torch.full_like(bn.running_mean, 3.0))


def test_restore_where_puts_the_buffers_back_only_where_the_device_flag_says(small_cnn, batch):
    x, y = batch
    student = small_cnn().train()
    d = Distiller(student, None, {"ce": (CrossEntropy(), 1.0)}, example_inputs=x[:2], on_nonfinite="ignore").train()
    snapshot = d.buffer_snapshot()
    before = bn_state(student)
    d(x, y)
    moved = bn_state(student)
    assert not all(torch.equal(before[k], v) for k, v in moved.items())
    snapshot.restore_where(torch.tensor(False))  # a good step keeps what it moved
    assert all(torch.equal(moved[k], v) for k, v in bn_state(student).items())
    snapshot = d.buffer_snapshot()
    d(x * float("nan"), y)  # NaN statistics (and a counter one step on), put back by the flag
    snapshot.restore_where(torch.tensor(True))
    assert all(torch.equal(moved[k], v) for k, v in bn_state(student).items())
