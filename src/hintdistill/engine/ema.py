"""An exponential moving average of a model's weights (Polyak averaging, as YOLOv5's ModelEMA and timm use it).

A stage with ``ema: DECAY`` keeps, next to the trained student, ``w_ema <- d w_ema + (1 - d) w`` after every
optimizer step, over every floating-point entry of the state dict (parameters and BatchNorm statistics; integer
buffers are copied). The rate ramps up as TensorFlow's ``ExponentialMovingAverage(num_updates=...)`` does,
``d_t = min(DECAY, (1 + t) / (10 + t))``: the average spans about the last 11% of the steps taken so far, so one
setting suits a 500-step run and a 50,000-step one alike (DECAY caps the span on long runs). The stage tests
the averaged weights and hands them on (to ``model.pt`` and the next stage); its checkpoint keeps both, so
a resumed run gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class WeightAverage:
    """Moving average of ``model``'s state dict; ``update`` after each optimizer step."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def rate(self) -> float:
        """This update's decay: ramps from 0.1 towards ``decay``."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.rate()
        self.updates += 1
        avg, cur = [], []
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                avg.append(self.state[k])
                cur.append(v.detach())
            else:
                self.state[k].copy_(v)
        if avg:
            torch._foreach_lerp_(avg, cur, 1.0 - d)  # avg + (1 - d)(cur - avg) = d avg + (1 - d) cur

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """``model`` holds the averaged weights inside the block, its own again after it."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.state)
        try:
            yield
        finally:
            model.load_state_dict(own)

    def copy_to(self, model: nn.Module) -> None:
        """Make the averaged weights the model's (at the end of a stage)."""
        model.load_state_dict(self.state)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "state": self.state}

    def load_state_dict(self, saved: dict) -> None:
        self.updates = int(saved["updates"])
        for k, v in saved["state"].items():
            self.state[k].copy_(v)
