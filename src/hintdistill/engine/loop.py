"""The pieces of one phase's training (teacher, baseline or distilled student): what a phase is, its
fingerprint, the optimizer and LR schedule of a stage, FitNets' trainable subset. ``engine.stage`` runs them."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import StageConfig, TrainConfig
from ..distiller import Distiller
from ..errors import ConfigError
from ..taps import modules_up_to


@dataclass
class Phase:
    """One model to train: ``student`` learns from ``teachers`` (none for a teacher or a baseline)."""

    name: str
    student: nn.Module
    spec: dict
    stages: list[StageConfig]
    teachers: list[nn.Module] = field(default_factory=list)


def as_stage(cfg: TrainConfig, name: str) -> StageConfig:
    """A plain training config (teacher, baseline) is a single stage."""
    return StageConfig(name=name, **cfg.model_dump())


def phase_fingerprint(phase: Phase, seed: int) -> str:
    """A hash of what decides a phase's result, so a rerun never mistakes another recipe's checkpoint for its own."""
    blob = json.dumps({"spec": phase.spec, "seed": seed, "stages": [s.model_dump(mode="json", exclude_defaults=True) for s in phase.stages]},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


FUSED_OPTIMIZERS = ("sgd", "adam", "adamw")


def make_optimizer(cfg, params, fused: bool = False) -> torch.optim.Optimizer:
    """The stage's optimizer; ``fused``: one kernel per step that can skip the update on a device-side flag
    (``found_inf``), which the deferred non-finite check needs (sgd, adam and adamw have one)."""
    o = cfg.optimizer
    if fused and o.name not in FUSED_OPTIMIZERS:
        raise ConfigError(f"speed.nonfinite_check: deferred skips a non-finite step inside a fused optimizer, and "
                          f"{o.name} has none: use {', '.join(FUSED_OPTIMIZERS)}, or nonfinite_check: step")
    fast = {"fused": True} if fused else {}
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov,
                               **fast)
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay, **fast)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, **fast)
    return torch.optim.RMSprop(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def make_scheduler(cfg, optimizer, steps_per_epoch: int):
    """Per-step LR schedule: optional linear warm-up, then step or cosine decay over the stage."""
    s, total = cfg.schedule, max(cfg.epochs * steps_per_epoch, 1)
    warm = s.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if s.name == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(step - warm, total - warm) / max(total - warm, 1)))
        if s.name == "step":
            return s.gamma ** ((step // steps_per_epoch) // s.step_size)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def set_trainable(student: nn.Module, stage: StageConfig, distiller: Distiller, example) -> None:
    """FitNets stage 1 trains the student only up to its guided layer (plus the adapter)."""
    for p in student.parameters():
        p.requires_grad_(True)
    if stage.trainable == "up_to_guided":
        guided = next(t.guided_layer() for t in stage.terms if t.guided_layer())
        keep = set(modules_up_to(student, guided, example))
        for name, module in student.named_modules():
            if name and name not in keep:
                for p in module.parameters(recurse=False):
                    p.requires_grad_(False)


def to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch
