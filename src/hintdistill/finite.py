"""Non-finite values (issue 12): find which tensor went NaN or infinite, and keep a student's batch-norm
statistics from being poisoned by a step that is then skipped."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .errors import TrainingDiverged


class NonFiniteError(TrainingDiverged):
    """A Distiller's input or loss held NaN or infinity; ``source`` says which ("the input batch", "term 'kd'")."""

    def __init__(self, message: str, source: str, from_input: bool):
        super().__init__(message)
        self.source, self.from_input = source, from_input


def tensors(value: Any):
    """Every floating-point tensor inside a batch (nested lists, tuples and dicts)."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from tensors(v)


def nonfinite_part(value: Any) -> str | None:
    """None if every float tensor in ``value`` is finite, else what is wrong, e.g. "3 NaN values (of 1568)"."""
    for t in tensors(value):
        # fast path: a finite sum means every element is finite (one reduction, ~10x cheaper than isfinite().all()
        # on a CPU batch); a non-finite sum (a NaN, an inf, or an overflow of huge finite values) is checked exactly
        if math.isfinite(float(t.sum())):
            continue
        if not bool(torch.isfinite(t).all()):
            nans, infs = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            kinds = [f"{n} {k}" for n, k in ((nans, "NaN"), (infs, "infinite")) if n]
            return f"{' and '.join(kinds)} value{'s' * (nans + infs > 1)} (of {t.numel()} in a {list(t.shape)} tensor)"
    return None


def nonfinite_terms(losses: dict[str, torch.Tensor]) -> list[str]:
    """The names of the non-finite entries of a Distiller's losses (the terms first, ``loss`` last)."""
    return [k for k, v in losses.items() if not bool(torch.isfinite(v).all())]


class BufferSnapshot:
    """A copy of a module's buffers (batch-norm running statistics and counters) to put back after a
    forward whose result is thrown away; costs one copy of the buffers (kilobytes), not of the weights.

    ``take()`` copies them again into the same storage (one ``_foreach_copy_``, no allocation), so one snapshot
    object serves every step of a loop."""

    def __init__(self, *modules: nn.Module, owners: list[nn.Module] | None = None):
        """The buffers of ``modules`` and their submodules; or, faster, of exactly the modules in ``owners`` (a
        list made once, e.g. of the modules that have buffers: a walk over a model's tree every step costs more
        than the copy)."""
        self.owners = owners if owners is not None else list(dict.fromkeys(m for root in modules for m in root.modules()))
        self.buffers: list[torch.Tensor] = []
        self.saved: list[torch.Tensor] = []
        self.take()

    def take(self) -> None:
        """Copy the buffers as they are now. A buffer replaced since the last copy (``model.to()``, an assignment)
        is found by identity, and the copies are made anew."""
        current = [b for m in self.owners for b in m._buffers.values() if b is not None]
        if len(current) != len(self.buffers) or any(a is not b for a, b in zip(current, self.buffers, strict=True)):
            self.buffers, self.saved = current, [b.detach().clone() for b in current]
            return
        if self.saved:
            with torch.no_grad():
                torch._foreach_copy_(self.saved, self.buffers)

    def restore(self) -> None:
        with torch.no_grad():
            for b, saved in zip(self.buffers, self.saved, strict=True):
                b.copy_(saved)

    def restore_where(self, flag: torch.Tensor) -> None:
        """Put the buffers back where ``flag`` (one element, on their device) is true, without reading it on the
        host: a ``torch.where`` per buffer, for a loop that keeps its checks on the device."""
        with torch.no_grad():
            for b, saved in zip(self.buffers, self.saved, strict=True):
                b.copy_(torch.where(flag, saved, b))
