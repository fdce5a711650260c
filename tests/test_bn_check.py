"""hintdistill.engine.batchnorm: the two BatchNorm variants a deployed detector is compared with, and the warning."""

import torch
from torch import nn

from hintdistill.engine import batchnorm as bn_check


def model_with_stale_statistics() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    model[1].running_mean.fill_(5.0)  # statistics that fit no data
    model[1].running_var.fill_(0.01)
    return model.eval()


def test_batch_statistics_normalise_like_training_and_leave_the_model_alone():
    model = model_with_stale_statistics()
    x = torch.randn(6, 3, 8, 8) * 2 + 1
    batch = bn_check.with_batch_statistics(model)
    assert not batch.training and bn_check.batchnorms(batch)[0].running_mean is None
    out = batch(x)
    assert float(model[1].running_mean[0]) == 5.0  # the original keeps its statistics
    torch.testing.assert_close(out, model.train()(x))  # BatchNorm in training mode, on the same batch
    assert not torch.allclose(out, model.eval()(x))  # which the stale running statistics do not give


def test_recomputed_statistics_are_the_average_over_the_pass_and_weights_stay():
    model = model_with_stale_statistics()
    xs = [torch.randn(4, 3, 8, 8) * s + s for s in (1.0, 2.0, 3.0)]
    out = bn_check.recomputed_statistics(model, [(x, None) for x in xs])
    assert not out.training
    conv = model[0]
    with torch.no_grad():
        feats = [conv(x) for x in xs]
    mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(out[1].running_mean, mean)
    torch.testing.assert_close(out[1].running_var, var)
    torch.testing.assert_close(out[0].weight, conv.weight)
    assert float(model[1].running_mean[0]) == 5.0  # the original is untouched
    assert out[1].momentum == 0.1


def test_the_warning_names_the_gap_and_the_fix_only_past_five_points():
    assert bn_check.batch_statistics_warning("baseline", 0.60, 0.64, 16) is None
    text = bn_check.batch_statistics_warning("baseline", 0.228, 0.620, 16)
    assert "0.228 as deployed but 0.620" in text and "batch of 16" in text
    assert "bn_frozen_epochs: 5" in text and "--set baseline.bn_frozen_epochs=5" in text
    # a stage that already froze BatchNorm for its last 5 epochs is told to freeze more, not to do what it did
    text = bn_check.batch_statistics_warning("distilled", 0.228, 0.620, 16, "distill.0", frozen=5)
    assert "last 5 epochs already trained with BatchNorm frozen" in text and "--set distill.0.bn_frozen_epochs=10" in text
