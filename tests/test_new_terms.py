"""Attention transfer, decoupled KD and PKD against numbers worked out by hand; the registry's schemas."""

import inspect
import math

import pytest
import torch
from pydantic import ValidationError

from hintdistill.build import build_terms
from hintdistill.config import recipe_from_dict
from hintdistill.errors import ConfigError
from hintdistill.schema import LinearRamp
from hintdistill.terms import registered
from hintdistill.terms.attention import AttentionTransfer, attention_map
from hintdistill.terms.decoupled import DecoupledKD, dkd_parts
from hintdistill.terms.pearson import PearsonKD, standardize


def feat(rows) -> torch.Tensor:
    """[C][positions] → a [1, C, 1, W] feature map."""
    return torch.tensor(rows, dtype=torch.float32)[None, :, None, :]


# -- attention transfer -------------------------------------------------------------------------------
def test_attention_map_is_the_normalised_channel_sum_of_squares():
    # channels [1, 2] and [1, 0]: Σ_c A² = [2, 4], ‖·‖ = √20 → [1/√5, 2/√5]
    q = attention_map(feat([[1, 2], [1, 0]]))
    assert q.tolist()[0] == pytest.approx([1 / math.sqrt(5), 2 / math.sqrt(5)], rel=1e-6)


def test_at_loss_one_and_two_pairs_by_hand():
    s, t = feat([[1, 2], [1, 0]]), feat([[3, 0]])  # Q̂_s = [1/√5, 2/√5], Q̂_t = [1, 0] (one teacher channel)
    # mean over the 2 positions of (Q̂_s − Q̂_t)² = ((1/√5 − 1)² + 4/5) / 2 = (2 − 2/√5) / 2 = 0.5527864
    per_pair = (2 - 2 / math.sqrt(5)) / 2
    one = AttentionTransfer([("t1", "s1")])
    out = one({"feat:s1": s}, [{"feat:t1": t}])
    assert one.beta == 1000.0 and out["pair0"].item() == pytest.approx(per_pair, rel=1e-6)
    assert out["loss"].item() == pytest.approx(500 * per_pair, rel=1e-6)  # β/2 · Σ_j = 500 · 0.5527864 = 276.39
    # two pairs share β = 1000 / 2; the second pair is identical maps (0)
    two = AttentionTransfer([("t1", "s1"), ("t2", "s2")])
    out = two({"feat:s1": s, "feat:s2": t}, [{"feat:t1": t, "feat:t2": 5 * t}])
    assert two.beta == 500.0 and out["pair1"].item() == 0.0
    assert out["loss"].item() == pytest.approx(250 * per_pair, rel=1e-6)


def test_at_resizes_the_smaller_map_to_the_larger():
    # student 2×2 with all mass at one corner → Q̂_s = [1, 0, 0, 0]; teacher 1×1 → upsampled uniform [½, ½, ½, ½]
    s = torch.zeros(1, 1, 2, 2)
    s[0, 0, 0, 0] = 3.0
    out = AttentionTransfer([("t", "s")])({"feat:s": s}, [{"feat:t": torch.ones(1, 4, 1, 1)}])
    # ((1 − ½)² + 3 · ¼) / 4 = 0.25, times β/2 = 500 → 125
    assert out["loss"].item() == pytest.approx(125.0, rel=1e-6)


# -- decoupled KD -------------------------------------------------------------------------------------
TEACHER = torch.tensor([[math.log(6), math.log(3), 0.0]])  # p_t = [0.6, 0.3, 0.1], target class 0
STUDENT = torch.zeros(1, 3)  # p_s = [1/3, 1/3, 1/3]
TCKD = 0.6 * math.log(0.6 / (1 / 3)) + 0.4 * math.log(0.4 / (2 / 3))  # KL([.6, .4] ‖ [1/3, 2/3]) = 0.1483418
NCKD = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL([.75, .25] ‖ [.5, .5]) = 0.1308120


def test_dkd_parts_by_hand_at_t1_and_t2():
    tckd, nckd = dkd_parts(STUDENT, TEACHER, torch.tensor([0]), 1.0)
    assert (tckd.item(), nckd.item()) == (pytest.approx(TCKD, rel=1e-5), pytest.approx(NCKD, rel=1e-5))
    term = DecoupledKD(temperature=2.0)  # logits doubled at T = 2: the same distributions, times T² = 4
    out = term({"logits": 2 * STUDENT}, [{"logits": 2 * TEACHER}], torch.tensor([0]))
    assert out["loss"].item() == pytest.approx(4 * (TCKD + 8 * NCKD), rel=1e-5)  # α = 1, β = 8: 4.779351
    assert out["nckd"].item() == pytest.approx(4 * NCKD, rel=1e-5)


def test_dkd_with_beta_one_minus_pt_is_classical_kd():
    # KD = TCKD + (1 − p_t^T) · NCKD = KL(p_t ‖ p_s) = 0.6 ln 1.8 + 0.3 ln 0.9 + 0.1 ln 0.3 = 0.2006666
    kd = 0.6 * math.log(1.8) + 0.3 * math.log(0.9) + 0.1 * math.log(0.3)
    out = DecoupledKD(alpha=1.0, beta=0.4, temperature=1.0)({"logits": STUDENT}, [{"logits": TEACHER}],
                                                            torch.tensor([0]))
    assert out["loss"].item() == pytest.approx(kd, rel=1e-5)


def test_dkd_masks_the_target_out_of_nckd():
    # only the target logit differs between teacher and student: the non-target distributions are equal
    s, t = torch.tensor([[9.0, 1.0, 2.0]]), torch.tensor([[-4.0, 1.0, 2.0]])
    tckd, nckd = dkd_parts(s, t, torch.tensor([0]), 4.0)
    assert nckd.item() == pytest.approx(0.0, abs=1e-6) and tckd.item() > 0.1


def test_dkd_warmup_ramps_the_weight_from_zero(tiny_recipe):
    tiny_recipe["distill"][0]["terms"] = [{"type": "ce"}, {"type": "dkd", "weight": 2.0}]
    terms = build_terms(recipe_from_dict(tiny_recipe).distill[0].terms)
    assert terms["dkd"][1] == LinearRamp(0.0, 2.0, 20.0) and terms["dkd"][1](10) == 1.0
    tiny_recipe["distill"][0]["terms"][1]["warmup_epochs"] = 0
    assert build_terms(recipe_from_dict(tiny_recipe).distill[0].terms)["dkd"][1] == 2.0
    tiny_recipe["distill"][0]["terms"][1] = {"type": "dkd", "weight": {"start": 0, "end": 1, "epochs": 5}}
    with pytest.raises(ConfigError, match="distill.0.terms.1.dkd: Value error, give either a scheduled weight"):
        recipe_from_dict(tiny_recipe)


# -- PKD ----------------------------------------------------------------------------------------------
def test_pkd_is_one_minus_pearson_r_by_hand():
    s = torch.tensor([[1.0, 2, 3, 4], [1, 2, 3, 4]])
    t = torch.tensor([[4.0, 3, 2, 1], [1, 2, 4, 3]])
    # channel 0: r = −1 → ½ · mean (ŝ − t̂)² = ½ · mean (2ŝ)² = 2; channel 1: r = 4/5 → 0.2; mean 1.1
    term = PearsonKD([("t", "s")])
    outs = {"feat:s": s[None, :, None, :]}, [{"feat:t": t[None, :, None, :]}]
    term.setup(*outs)
    assert term(*outs)["loss"].item() == pytest.approx(1.1, rel=1e-5)
    scaled = [{"feat:t": 10 * s[None, :, None, :] + 7}]  # same pattern, another scale and offset: r = 1
    assert term(outs[0], scaled)["loss"].item() == pytest.approx(0.0, abs=1e-6)
    assert standardize(s[None, :, None, :]).pow(2).mean().item() == pytest.approx(1.0, rel=1e-5)


def test_pkd_sums_levels_and_adapts_other_channel_counts():
    s = torch.tensor([[1.0, 2, 3, 4], [2, 1, 2, 1]])[None, :, None, :]
    t = torch.stack([s[0, 0], s[0, 1], s[0, 0] + s[0, 1]])[None]  # 3 teacher channels: s0, s1, s0 + s1
    term = PearsonKD([("t", "s"), ("t2", "s")])
    outs = {"feat:s": s}, [{"feat:t": t, "feat:t2": s.flip(3)}]  # level 2: equal channels, reversed order
    term.setup(*outs)
    conv = term.adapters[0]["adapter"]
    assert isinstance(term.adapters[1]["adapter"], torch.nn.Identity) and conv.weight.shape == (3, 2, 1, 1)
    with torch.no_grad():  # the adapter maps (s0, s1) to (s0, s1, s0 + s1): level 1 then costs 0
        conv.weight.copy_(torch.tensor([[1.0, 0], [0, 1], [1, 1]]).view(3, 2, 1, 1))
        conv.bias.zero_()
    out = term(*outs)
    # level 2: channel 0 reversed → r = −1 → 2; channel 1 [2,1,2,1] vs [1,2,1,2] → r = −1 → 2; mean 2
    assert out["level0"].item() == pytest.approx(0.0, abs=1e-6) and out["loss"].item() == pytest.approx(2.0, rel=1e-5)


# -- the registry ---------------------------------------------------------------------------------------
def test_new_terms_are_registered_with_their_schemas(tiny_recipe):
    assert {"at", "dkd", "pkd"} <= set(registered())
    tiny_recipe["distill"][0]["terms"] = [{"type": "at", "pairs": [["features.stage1", "features.stage1"]]}]
    terms = build_terms(recipe_from_dict(tiny_recipe).distill[0].terms)
    assert isinstance(terms["at"][0], AttentionTransfer) and terms["at"][0].beta == 1000.0
    tiny_recipe["distill"][0]["terms"][0]["pairs"] = []
    with pytest.raises(ConfigError, match="distill.0.terms.0.at.pairs: List should have at least 1 item"):
        recipe_from_dict(tiny_recipe)


@pytest.mark.parametrize("name", ["ce", "kd", "hint", "objectness_kd", "at", "dkd", "pkd"])
def test_constructor_defaults_are_the_schemas(name):
    """Defaults are written in the schema; a term's constructor may repeat them but never disagree."""
    cls = registered()[name]
    schema = cls.Config.model_fields
    for param in inspect.signature(cls.__init__).parameters.values():
        if param.name in schema and param.default is not inspect.Parameter.empty:
            field = schema[param.name]
            default = field.default_factory() if field.default_factory else field.default
            assert [tuple(x) for x in default] == [tuple(x) for x in param.default] if isinstance(default, list) \
                else default == param.default, (name, param.name)
    with pytest.raises(ValidationError):
        cls.Config(type=name, unknown_field=1)


def test_pkd_on_yolo_necks_of_different_widths_trains_its_adapters():
    from hintdistill.detection.loss import YoloLoss
    from hintdistill.distiller import Distiller
    from hintdistill.models import build_model

    torch.manual_seed(0)
    teacher = build_model("yolo", {"num_classes": 2, "size": "n", "width": 0.125})
    student = build_model("yolo", {"num_classes": 2, "size": "n", "width": 0.0625})
    images = torch.rand(2, 3, 64, 64)
    targets = [{"boxes": torch.tensor([[8.0, 10, 40, 38]]), "labels": torch.tensor([i])} for i in range(2)]
    distiller = Distiller(student, teacher, {"detection": (YoloLoss.for_model(student), 1.0),
                                             "pkd": (PearsonKD(), 6.0)}, example_inputs=images)
    pkd = distiller.terms["pkd"]
    assert [type(a["adapter"]).__name__ for a in pkd.adapters] == ["Conv2d"] * 3  # neck.p3/p4/p5, channels differ
    _, losses = distiller(images, targets)
    # each level is the mean of 1 − r over images and channels, so between 0 and 2
    assert all(0.0 < losses[f"pkd.level{i}"].item() < 2.0 for i in range(3))
    assert losses["loss"].item() == pytest.approx(losses["detection"].item() + 6.0 * losses["pkd"].item(), rel=1e-6)
    losses["loss"].backward()
    assert all(a["adapter"].weight.grad.abs().sum() > 0 for a in pkd.adapters)
