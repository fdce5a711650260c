"""The weight average (engine/ema.py): hand-worked updates, and a stage with ``ema`` resumes to the same weights."""

import pytest
import torch
from torch import nn

from hintdistill.engine.ema import WeightAverage


def test_update_is_the_ramped_moving_average_by_hand():
    model = nn.BatchNorm1d(1)
    with torch.no_grad():
        model.weight.fill_(1.0)
    avg = WeightAverage(model, decay=0.5)
    assert avg.rate() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    with torch.no_grad():
        model.weight.fill_(3.0)
        model.num_batches_tracked.fill_(7)
    avg.update(model)  # d = 0.1: 0.1 * 1 + 0.9 * 3 = 2.8
    assert avg.state["weight"].item() == pytest.approx(2.8)
    assert avg.state["num_batches_tracked"].item() == 7  # integers copied, not averaged
    assert avg.rate() == pytest.approx(2 / 11)
    with torch.no_grad():
        model.weight.fill_(5.0)
    avg.update(model)  # d = 2/11: 2/11 * 2.8 + 9/11 * 5 = 4.6
    assert avg.state["weight"].item() == pytest.approx(2 / 11 * 2.8 + 9 / 11 * 5.0)
    for _ in range(20):
        avg.update(model)
    assert avg.rate() == 0.5  # capped by decay


def test_applied_swaps_in_and_back_and_state_round_trips():
    model = nn.Linear(2, 1)
    avg = WeightAverage(model, decay=0.9)
    own = model.weight.detach().clone()
    avg.state["weight"].fill_(9.0)
    with avg.applied(model):
        assert torch.all(model.weight == 9.0)
    assert torch.equal(model.weight, own)
    avg.updates = 4
    other = WeightAverage(model, decay=0.9)
    other.load_state_dict(avg.state_dict())
    assert other.updates == 4 and torch.all(other.state["weight"] == 9.0)
