"""Several classifiers as one: the average of their class probabilities (what ``kd`` distils from an ensemble)."""

from __future__ import annotations

import torch
from torch import nn


class ProbabilityAverage(nn.Module):
    """Returns log(mean_i softmax(teacher_i(x))): its argmax is the ensemble's prediction, and it can stand
    wherever logits are read (accuracy, latency)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = []
        for member in self.members:
            out = member(x)
            logits = out if isinstance(out, torch.Tensor) else out.logits  # torchvision/timm train-mode tuples
            probs.append(logits.float().softmax(-1))
        return torch.stack(probs).mean(0).log()
