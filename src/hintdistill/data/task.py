"""What the engine needs of a task's data, whether classification or detection."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..metrics import evaluate_classifier


def first_examples(available: int, subset: int | None) -> int | None:
    """How many training examples a phase with ``train_subset: subset`` reads (``None``: all of them)."""
    if subset is not None and subset > available:
        raise ConfigError(f"train_subset: {subset} is more than the {available} training examples there are; "
                          f"lower it, or remove it to train on all of them")
    return subset


@dataclass
class TaskData:
    """What the engine needs of a task's data, independent of classification or detection."""

    kind: str
    train_loader: Any  # callable(batch_size, augment, seed, rank, world, subset=None) -> iterable with set_epoch
    test_loader: Any
    num_classes: int
    input_shape: tuple[int, ...]
    class_names: list[str] = field(default_factory=list)
    primary_metric: str = "accuracy"
    model_defaults: dict = field(default_factory=dict)
    context: dict = field(default_factory=dict)

    def example_batch(self, n: int = 8):
        loader = self.train_loader(n, [], 0, 0, 1)
        return next(iter(loader))

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        if self.kind == "classification":
            return evaluate_classifier(model, self.test_loader, device)
        from ..detection.evaluate import evaluate_detector  # torchmetrics' mAP: loaded for detection only

        return evaluate_detector(model, self.test_loader, device)
