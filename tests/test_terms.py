"""Loss terms and adapters against numbers worked out by hand (REFERENCES.md §1, §2, §6)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hintdistill import CrossEntropy, HintLoss, ShapeError, SoftTargetKD
from hintdistill.adapters import build_adapter
from hintdistill.terms import feature_distance, kd_loss, soft_targets

LN3 = math.log(3.0)


def logits(*rows):
    return {"logits": torch.tensor(rows, dtype=torch.float32)}


# -- cross-entropy ----------------------------------------------------------------------------------
def test_cross_entropy_by_hand():
    # z = [0, ln 3] -> p = [1/4, 3/4]. Label 0: -ln(1/4) = ln 4; label 1: -ln(3/4) = ln(4/3).
    # Batch mean: (ln 4 + ln 4/3) / 2 = ln(16/3) / 2 = 0.836988
    loss = CrossEntropy()(logits([0.0, LN3], [0.0, LN3]), [], torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(0.5 * math.log(16 / 3), abs=1e-6)
    assert loss.item() == pytest.approx(0.836988, abs=1e-6)


def test_cross_entropy_label_smoothing_by_hand():
    # eps = 0.2, C = 2: target [0.9, 0.1] for label 0; p = [1/4, 3/4]
    # -(0.9 ln 1/4 + 0.1 ln 3/4) = 0.9 * 1.386294 + 0.1 * 0.287682 = 1.276433
    loss = CrossEntropy(label_smoothing=0.2)(logits([0.0, LN3]), [], torch.tensor([0]))
    assert loss.item() == pytest.approx(0.9 * math.log(4) + 0.1 * math.log(4 / 3), abs=1e-6)


# -- soft-target KD ---------------------------------------------------------------------------------
# T = 2. Teacher z_t = [0, 2 ln 3] -> z_t/T = [0, ln 3] -> q_t = [1/4, 3/4]. Student z_s = [0, 0] -> q_s = [1/2, 1/2].
# KL(q_t || q_s) = 1/4 ln(1/2) + 3/4 ln(3/2) = -0.173287 + 0.304099 = 0.130812;  T² · KL = 0.523248.
# The swapped direction KL(q_s || q_t) = 1/2 ln 2 + 1/2 ln(2/3) = 0.143841;  T² · 0.143841 = 0.575364.
KD_BY_HAND = 4 * (0.25 * math.log(0.5) + 0.75 * math.log(1.5))
KD_SWAPPED = 4 * (0.5 * math.log(2.0) + 0.5 * math.log(2 / 3))


def test_kd_value_and_direction_teacher_is_the_target():
    kd = SoftTargetKD(temperature=2.0)
    loss = kd(logits([0.0, 0.0]), [logits([0.0, 2 * LN3])])
    assert KD_BY_HAND == pytest.approx(0.523248, abs=1e-6)
    assert loss.item() == pytest.approx(KD_BY_HAND, abs=1e-6)
    # An implementation with the arguments swapped (student as the target) gives 0.575364 and fails here.
    assert abs(loss.item() - KD_SWAPPED) > 0.05


def test_kd_batchmean_is_independent_of_batch_size():
    kd = SoftTargetKD(temperature=2.0)
    for batch in (1, 3, 8):
        student = {"logits": torch.zeros(batch, 2)}
        teacher = {"logits": torch.tensor([[0.0, 2 * LN3]]).repeat(batch, 1)}
        # "sum" would give batch x 0.523248, "mean" (over B*C elements) 0.261624
        assert kd(student, [teacher]).item() == pytest.approx(KD_BY_HAND, abs=1e-6)


def test_kd_is_zero_when_student_equals_teacher():
    z = torch.tensor([[1.5, -0.3, 2.0, 0.1], [0.0, 4.0, -2.0, 1.0]])
    for temperature in (1.0, 4.0, 20.0):
        loss = SoftTargetKD(temperature)({"logits": z}, [{"logits": z.clone()}]).item()
        assert loss == pytest.approx(0, abs=1e-6 * temperature**2)  # float32 round-off, scaled by T²


def test_kd_ensemble_averages_softened_probabilities():
    # T = 1. Teacher A z = [0, ln 3] -> [1/4, 3/4]; teacher B z = [0, 0] -> [1/2, 1/2].
    # Average of probabilities: [3/8, 5/8]  (averaging logits would give softmax([0, ln3/2]) = [0.366, 0.634]).
    # Student [0, 0] -> [1/2, 1/2]: KL = 3/8 ln(3/4) + 5/8 ln(5/4) = -0.107881 + 0.139465 = 0.031584
    teachers = [logits([0.0, LN3]), logits([0.0, 0.0])]
    torch.testing.assert_close(soft_targets([t["logits"] for t in teachers], 1.0), torch.tensor([[0.375, 0.625]]))
    loss = SoftTargetKD(temperature=1.0)(logits([0.0, 0.0]), teachers)
    assert loss.item() == pytest.approx(3 / 8 * math.log(3 / 4) + 5 / 8 * math.log(5 / 4), abs=1e-6)
    assert loss.item() == pytest.approx(0.031584, abs=1e-6)


def soft_grad(student_logits, teacher_logits, temperature, scale=True):
    z = student_logits.clone().requires_grad_(True)
    loss = kd_loss(z, F.softmax(teacher_logits / temperature, dim=1), temperature)
    if not scale:
        loss = loss / temperature**2
    loss.backward()
    return z.grad


def test_kd_t_squared_keeps_the_gradient_size_as_t_grows():
    # Hinton Eq. 2/4: dC/dz_i = (1/T)(q_i - p_i) ~ (z_i - v_i) / (N T²) for zero-mean logits and large T.
    # With the T² factor the gradient tends to (z - v) / N = [2/3, -2/3, 0] (norm 0.943);
    # at T = 1 it is softmax([1,-1,0]) - softmax([-1,1,0]) = [0.575, -0.575, 0] (norm 0.813).
    student = torch.tensor([[1.0, -1.0, 0.0]])  # zero mean
    teacher = torch.tensor([[-1.0, 1.0, 0.0]])  # zero mean
    norms = {t: soft_grad(student, teacher, t).norm().item() for t in (1.0, 4.0, 20.0)}
    assert norms[1.0] == pytest.approx(0.8133, abs=1e-3)
    for t in (4.0, 20.0):
        assert 0.5 < norms[t] / norms[1.0] < 2.0  # O(1): it does not shrink with T
    torch.testing.assert_close(soft_grad(student, teacher, 20.0), (student - teacher) / 3, atol=2e-3, rtol=0)
    # Without the T² factor the same gradient falls by ~T² (here 1/400 x 1.16).
    unscaled = soft_grad(student, teacher, 20.0, scale=False).norm().item()
    assert unscaled / norms[1.0] < 2.0 / 20.0**2


def test_kd_rejects_class_count_mismatch():
    kd = SoftTargetKD(2.0)
    with pytest.raises(ShapeError, match="same num_classes"):
        kd.setup({"logits": torch.zeros(2, 10)}, [{"logits": torch.zeros(2, 5)}])
    with pytest.raises(ShapeError, match="same number of classes"):
        kd({"logits": torch.zeros(2, 10)}, [{"logits": torch.zeros(2, 5)}])


# -- feature distances --------------------------------------------------------------------------------
# Two examples, each [C=1, H=2, W=2]. Differences: example 0 [1, -2, 3, 0.5], example 1 [1, 1, 1, 1].
HINT = torch.zeros(2, 1, 2, 2)
GUIDED = torch.tensor([[1.0, -2.0, 3.0, 0.5], [1.0, 1.0, 1.0, 1.0]]).view(2, 1, 2, 2)


@pytest.mark.parametrize("distance, reduction, expected", [
    # squares: 1, 4, 9, 0.25 | 1, 1, 1, 1  -> mean over 8 elements (14.25 + 4) / 8
    ("l2", "mean", 18.25 / 8),
    # FitNets ½‖u - r‖² per example, averaged: (½·14.25 + ½·4) / 2 = (7.125 + 2) / 2
    ("l2", "sum", 4.5625),
    # |d|: 1, 2, 3, 0.5 | 1, 1, 1, 1 -> (6.5 + 4) / 8;  sum: (6.5 + 4) / 2
    ("l1", "mean", 10.5 / 8),
    ("l1", "sum", 5.25),
    # Huber beta 1: 0.5, 1.5, 2.5, 0.125 | 0.5 x 4 -> (4.625 + 2) / 8
    ("smooth_l1", "mean", 6.625 / 8),
])
def test_feature_distance_by_hand(distance, reduction, expected):
    assert feature_distance(HINT, GUIDED, distance, reduction).item() == pytest.approx(expected, abs=1e-6)


def test_feature_distance_mask_averages_over_selected_locations():
    # [1, C=2, 1, 2]: channel 0 diffs [1, 2], channel 1 diffs [3, 4]; mask keeps location 0 only.
    # l2: (1² + 3²) / 2 = 5;  unmasked it would be (1 + 4 + 9 + 16) / 4 = 7.5
    a = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    mask = torch.tensor([[[[1.0, 0.0]]]])
    assert feature_distance(torch.zeros_like(a), a, "l2", "mean", mask).item() == pytest.approx(5.0)
    assert feature_distance(torch.zeros_like(a), a, "l2", "mean").item() == pytest.approx(7.5)
    # "sum": ½ (1 + 9) per example = 5
    assert feature_distance(torch.zeros_like(a), a, "l2", "sum", mask).item() == pytest.approx(5.0)
    # an empty mask gives 0, not NaN
    assert feature_distance(torch.zeros_like(a), a, "l2", "mean", torch.zeros_like(mask)).item() == 0.0


def hint_term(guided, hint, **kw) -> HintLoss:
    term = HintLoss(hint="h", guided="g", **kw)
    term.setup({"feat:g": guided}, [{"feat:h": hint}])
    return term


def test_hint_loss_identity_adapter_uses_the_distance():
    term = hint_term(GUIDED, HINT, adapter="identity", reduction="sum")
    assert term({"feat:g": GUIDED}, [{"feat:h": HINT}]).item() == pytest.approx(4.5625)
    # a mask keeping only the first row of each example: ½(1 + 4) and ½(1 + 1), averaged -> 1.75
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).view(1, 1, 2, 2).expand(2, 1, 2, 2)
    assert term({"feat:g": GUIDED}, [{"feat:h": HINT}], mask=mask).item() == pytest.approx(1.75)
    assert isinstance(term.adapter, nn.Identity)
    assert list(term.parameters()) == []


# -- adapters -----------------------------------------------------------------------------------------
def test_adapters_conv1x1_conv3x3_linear():
    a = build_adapter("conv1x1", (2, 8, 6, 6), (2, 16, 6, 6))
    assert isinstance(a, nn.Conv2d) and a.kernel_size == (1, 1) and (a.in_channels, a.out_channels) == (8, 16)
    a = build_adapter("conv3x3", (2, 8, 6, 6), (2, 16, 6, 6))
    assert a.kernel_size == (3, 3) and a(torch.zeros(2, 8, 6, 6)).shape == (2, 16, 6, 6)
    a = build_adapter("linear", (2, 32), (2, 64))
    assert isinstance(a, nn.Linear) and (a.in_features, a.out_features) == (32, 64)
    a = build_adapter("conv1x1", (2, 8, 6, 6), (2, 16, 6, 6), activation="relu")
    assert isinstance(a[1], nn.ReLU) and (a(torch.randn(2, 8, 6, 6)) >= 0).all()
    with pytest.raises(ShapeError, match="linear"):
        build_adapter("conv1x1", (2, 32), (2, 64))
    with pytest.raises(ShapeError, match="conv"):
        build_adapter("linear", (2, 8, 6, 6), (2, 16, 6, 6))
    with pytest.raises(ShapeError, match="conv1x1"):
        build_adapter("identity", (2, 8, 6, 6), (2, 16, 6, 6))
    with pytest.raises(ShapeError, match="regressor"):
        build_adapter("conv5x5", (2, 8, 6, 6), (2, 16, 6, 6))


def test_fitnets_regressor_kernel_is_guided_minus_hint_plus_one():
    # Romero et al. §2.2: k = N_guided - N_hint + 1: guided 8x8, hint 4x4 -> 5x5 kernel, output 4x4,
    # k1·k2·O_h·O_g = 5·5·16·8 weights
    a = build_adapter("regressor", (2, 8, 8, 8), (2, 16, 4, 4))
    assert a.kernel_size == (5, 5)
    assert a.weight.numel() == 5 * 5 * 16 * 8
    assert a(torch.zeros(2, 8, 8, 8)).shape == (2, 16, 4, 4)
    # non-square: guided 8x6, hint 4x6 -> kernel 5x1
    assert build_adapter("regressor", (1, 8, 8, 6), (1, 16, 4, 6)).kernel_size == (5, 1)
    with pytest.raises(ShapeError, match="at least as large"):
        build_adapter("regressor", (2, 8, 4, 4), (2, 16, 8, 8))


def test_hint_regressor_through_the_term():
    term = hint_term(torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4), adapter="regressor")
    assert term.adapter.kernel_size == (5, 5)
    assert term({"feat:g": torch.randn(2, 8, 8, 8)}, [{"feat:h": torch.randn(2, 16, 4, 4)}]).ndim == 0


def test_spatial_mismatch_without_regressor_names_the_fixes():
    with pytest.raises(ShapeError) as err:
        hint_term(torch.zeros(2, 8, 8, 8), torch.zeros(2, 16, 4, 4), adapter="conv1x1")
    message = str(err.value)
    assert "regressor" in message and "resize: interpolate" in message and "resize: pool" in message
    assert "(16, 4, 4)" in message and "(16, 8, 8)" in message


def unit_conv1x1(term: HintLoss) -> None:
    with torch.no_grad():  # adapted = guided, so the expected numbers are easy to write down
        term.adapter.weight.fill_(1.0)
        term.adapter.bias.zero_()


def test_resize_interpolate_and_pool():
    # guided 8x8 = arange(64) (row-major), hint 4x4 zeros. Pooling 2x2 blocks gives block (i, j) the mean
    # 16i + 2j + 4.5; bilinear 8 -> 4 (align_corners=False) samples at 2i + 0.5, the same block mean.
    # l1 mean = mean over i, j of 16i + 2j + 4.5 = 16·1.5 + 2·1.5 + 4.5 = 31.5
    guided = torch.arange(64.0).view(1, 1, 8, 8)
    hint = torch.zeros(1, 1, 4, 4)
    for resize in ("interpolate", "pool"):
        term = hint_term(guided, hint, adapter="conv1x1", resize=resize, distance="l1")
        unit_conv1x1(term)
        assert term({"feat:g": guided}, [{"feat:h": hint}]).item() == pytest.approx(31.5)
    # the other way round (hint larger): pool pools the hint, interpolate upsamples zeros -> also 31.5
    for resize in ("interpolate", "pool"):
        term = hint_term(hint, guided, adapter="conv1x1", resize=resize, distance="l1")
        unit_conv1x1(term)
        assert term({"feat:g": hint}, [{"feat:h": guided}]).item() == pytest.approx(31.5)


def test_hint_loss_rejects_unknown_options():
    with pytest.raises(ShapeError, match="smooth_l1"):
        HintLoss("h", "g", distance="cosine")
    with pytest.raises(ShapeError, match="interpolate"):
        HintLoss("h", "g", resize="crop")
