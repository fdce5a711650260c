"""BatchNorm at training's end: train as deployed (``bn_frozen_epochs``), and say when a detector depends on its
batches' statistics.

A detector trained with small batches can come to compute with each batch's own mean and variance: tested as
deployed (running statistics) it scores far below what the same weights score when each test batch is
normalised with its own statistics, and recomputing the running statistics does not repair it (raccoon students
at batch 8: 0.228 deployed, 0.620 with batch statistics; benchmarks/RESULTS.md, "BatchNorm: raccoon students that
depend on batch statistics"). Training the last epochs with BatchNorm in eval mode removes it (Wu & Johnson,
"Rethinking 'Batch' in BatchNorm", 2021).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

GAP = 0.05  # mAP@0.5 points (as a fraction) by which batch statistics must beat the deployed model to warn


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def freeze_batchnorm(model: nn.Module) -> None:
    """Every BatchNorm of ``model`` in eval mode (``bn_frozen_epochs``): normalised by its running statistics, which
    stop moving, as at test time; its weight and bias still train."""
    for m in batchnorms(model):
        m.eval()


def with_batch_statistics(model: nn.Module) -> nn.Module:
    """A copy whose BatchNorms normalise every batch with its own statistics, in eval mode too."""
    model = copy.deepcopy(model)
    for bn in batchnorms(model):
        bn.running_mean = bn.running_var = None
    return model


@torch.no_grad()
def recomputed_statistics(model: nn.Module, batches: Iterable) -> nn.Module:
    """A copy whose running statistics are the plain average of the per-batch statistics over ``batches`` of
    ``(images, targets)``; weights and everything else unchanged, returned in eval mode."""
    model = copy.deepcopy(model)
    momenta = [bn.momentum for bn in batchnorms(model)]
    for bn in batchnorms(model):
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over the pass
    model.train()
    for images, _ in batches:
        model(images)
    for bn, momentum in zip(batchnorms(model), momenta, strict=True):
        bn.momentum = momentum
    return model.eval()


def stage_key(phase: str, stages: int = 1) -> str:
    """The recipe key of a phase's last stage, for ``--set KEY.bn_frozen_epochs=N``."""
    if phase == "baseline":
        return "baseline"
    if phase == "teacher":
        return "teacher.train"
    if phase.startswith("teacher_"):  # an ensemble's teacher i
        return f"teachers.{phase.removeprefix('teacher_')}.train"
    return f"distill.{stages - 1}"


def batch_statistics_warning(label: str, deployed: float, with_batch: float, batch_size: int,
                             key: str | None = None, frozen: int = 0) -> str | None:
    """The warning when the test batches' own statistics beat the deployed model by ``GAP`` or more; ``key`` is
    the recipe key of the phase's last stage (default: derived from ``label``), ``frozen`` its bn_frozen_epochs."""
    if with_batch - deployed < GAP:
        return None
    key = key or stage_key(label)
    more = max(5, 2 * frozen)
    fix = (f"Train its last epochs with BatchNorm frozen: bn_frozen_epochs: 5 on its last stage (--set "
           f"{key}.bn_frozen_epochs=5)" if not frozen else
           f"Its last {frozen} epochs already trained with BatchNorm frozen: try more of them (--set "
           f"{key}.bn_frozen_epochs={more})")
    return (f"[{label}] warning: test mAP@0.5 is {deployed:.3f} as deployed but {with_batch:.3f} when each test "
            f"batch of {batch_size} is normalised with its own statistics: the model relies on BatchNorm's batch "
            f"statistics, which a deployed detector does not have. {fix}, or use larger batches.")
