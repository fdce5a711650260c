"""Taps: features captured by dotted module name on unmodified models, cleared after every run."""

import pytest
import torch
import torchvision
from torch import nn

from hintdistill import ShapeError, Taps
from hintdistill.taps import execution_order, modules_up_to, outputs_from


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


def resnet_trunk(model, x):
    """resnet18's forward written out, to know what layer2 and layer3 must output."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    layer2 = model.layer2(model.layer1(x))
    return layer2, model.layer3(layer2)


def test_capture_by_dotted_name_on_torchvision_resnet(resnet):
    x = torch.randn(2, 3, 32, 32)
    taps = Taps(resnet, ["layer2", "layer3", "layer3.1.bn2"])
    with torch.no_grad():
        out = taps.run(x)
        layer2, layer3 = resnet_trunk(resnet, x)
        logits = resnet(x)
    # 32 -> conv1 /2 -> maxpool /2 -> layer2 /2 -> layer3 /2
    assert out["feat:layer2"].shape == (2, 128, 4, 4)
    assert out["feat:layer3"].shape == (2, 256, 2, 2)
    assert out["feat:layer3.1.bn2"].shape == (2, 256, 2, 2)
    torch.testing.assert_close(out["feat:layer2"], layer2)
    torch.testing.assert_close(out["feat:layer3"], layer3)
    torch.testing.assert_close(out["logits"], logits)
    assert taps.names == ["layer2", "layer3", "layer3.1.bn2"]
    assert taps.features == {}  # nothing held after the run
    taps.remove()
    assert resnet.layer2._forward_hooks == {}


def test_no_stale_features_after_an_eval_pass_with_another_batch_size(resnet):
    taps = Taps(resnet, ["layer3"])
    with torch.no_grad():
        assert taps.run(torch.randn(4, 3, 32, 32))["feat:layer3"].shape[0] == 4
        assert taps.features == {}
        resnet(torch.randn(7, 3, 32, 32))  # an evaluation pass outside the taps (e.g. evaluate_classifier)
        assert taps.features == {}  # the hooks hold nothing from it
        out = taps.run(torch.randn(2, 3, 32, 32))
    assert out["feat:layer3"].shape[0] == 2
    assert taps.features == {}
    taps.remove()


def test_features_cleared_even_when_forward_fails(resnet):
    taps = Taps(resnet, ["layer1"])
    with pytest.raises(RuntimeError):
        taps.run(torch.randn(2, 1, 32, 32))  # wrong channel count: conv1 fails
    assert taps.features == {}
    taps.remove()


def test_unknown_name_lists_close_names(resnet):
    with pytest.raises(ShapeError) as err:
        Taps(resnet, ["layer2.0.conv"], role="teacher")
    message = str(err.value)
    assert "teacher has no module named 'layer2.0.conv'" in message
    assert "layer2.0.conv1" in message and "layer2.0.conv2" in message
    assert "hintdistill inspect" in message


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.used(x))


def test_module_not_called_is_an_error():
    taps = Taps(Branchy(), ["used", "unused"], role="student")
    with pytest.raises(ShapeError, match="student's module 'unused' was not called"):
        taps.run(torch.randn(3, 4))
    assert taps.features == {}


def test_gradients_flow_through_captured_features():
    model = Branchy()
    out = Taps(model, ["used"]).run(torch.randn(3, 4))
    out["feat:used"].sum().backward()
    assert model.used.weight.grad is not None and model.used.weight.grad.abs().sum() > 0


def test_outputs_from_shapes_of_model_results():
    t = torch.zeros(2, 3)
    assert outputs_from(t)["logits"] is t
    maps = [torch.zeros(2, 3, 4, 4, 7), torch.zeros(2, 3, 2, 2, 7)]  # a detector's [B, A, H, W, 5+C] levels
    assert list(outputs_from(maps)) == ["head:0", "head:1"]
    with pytest.raises(TypeError, match="only a detector's per-level head maps"):
        outputs_from([t, t])  # not head maps: a classifier's extra outputs belong in a dict
    assert outputs_from({"logits": t, "aux": t})["aux"] is t
    with pytest.raises(TypeError, match="str"):
        outputs_from("not a tensor")


def test_execution_order_and_modules_up_to():
    model = Branchy()
    x = torch.randn(1, 4)
    assert execution_order(model, x) == ["used", "head"]
    assert modules_up_to(model, "used", x) == ["used"]
    with pytest.raises(ShapeError, match="did not run"):
        modules_up_to(model, "unused", x)
    with pytest.raises(ShapeError, match="Closest names: used"):
        modules_up_to(model, "usd", x)


def test_dry_runs_leave_batch_norm_statistics_alone(resnet):
    resnet.train()
    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    try:
        assert modules_up_to(resnet, "layer2", torch.randn(2, 3, 32, 32))[-1] == "layer2"
        assert resnet.training
        for k, v in resnet.state_dict().items():
            assert torch.equal(v, before[k]), k
    finally:
        resnet.eval()


def test_train_mode_namedtuples_with_logits_give_logits():
    t, aux = torch.zeros(2, 10), torch.ones(2, 10)
    out = outputs_from(torchvision.models.InceptionOutputs(t, aux))  # a namedtuple: a tuple of 2-D tensors
    assert list(out) == ["logits"] and out["logits"] is t
    torch.manual_seed(0)
    googlenet = torchvision.models.googlenet(weights=None, aux_logits=True, num_classes=10, init_weights=False)
    googlenet.train()  # train mode returns GoogLeNetOutputs(logits, aux_logits2, aux_logits1)
    taps = Taps(googlenet, ["inception3a"])
    out = taps.run(torch.randn(2, 3, 64, 64))
    assert set(out) == {"logits", "feat:inception3a"} and out["logits"].shape == (2, 10)
    taps.remove()


def count_leaf_calls(model: nn.Module) -> tuple[list[int], list]:
    """Forward pre-hooks that count how many leaf modules start running."""
    calls = [0]
    handles = [m.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
               for m in model.modules() if not list(m.children())]
    return calls, handles


def test_stop_early_runs_only_up_to_the_last_tap_and_captures_the_same_features(resnet):
    x = torch.randn(2, 3, 32, 32)
    taps = Taps(resnet, ["layer1", "layer2"])
    calls, handles = count_leaf_calls(resnet)
    with torch.no_grad():
        full = taps.run(x)
        full_calls = calls[0]
        calls[0] = 0
        early = taps.run(x, stop_early=True)
    for h in handles:
        h.remove()
    # resnet18's leaves: conv1 bn1 relu maxpool (4), layer1 = 2 blocks x (conv bn relu conv bn relu) (12),
    # layer2 adds a downsample (conv bn) to its first block (14); layer3, layer4 (14 each), avgpool, fc
    assert full_calls == 4 + 12 + 14 + 14 + 14 + 2
    assert calls[0] == 4 + 12 + 14
    assert "logits" not in early and set(early) == {"feat:layer1", "feat:layer2"}
    assert torch.equal(early["feat:layer2"], full["feat:layer2"])
    assert taps.features == {}  # cleared after the early stop as after a full pass
