"""Distiller: student + frozen teacher(s) + weighted loss terms.

    distiller = Distiller(student, teacher, {"ce": (CrossEntropy(), 0.1), "kd": (SoftTargetKD(4), 0.9)},
                          example_inputs=images[:2])
    outputs, losses = distiller(images, labels)   # losses["loss"] is the weighted sum
    losses["loss"].backward()

It works inside any training loop; ``hintdistill.engine`` is a convenience around it. Teachers are
frozen (``requires_grad=False``) and forced back into eval mode on every call, so neither their weights
nor their batch-norm statistics change, whatever the loop around them does.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from operator import attrgetter
from typing import Any

import torch
from torch import nn

from .errors import HintDistillError
from .finite import BufferSnapshot, NonFiniteError, nonfinite_part, nonfinite_terms
from .schema import LinearRamp
from .taps import Outputs, Taps
from .terms.base import Term, loss_and_parts

_training = attrgetter("training")

Weight = float | LinearRamp  # a constant, or a schedule called with the (fractional) epoch
NONFINITE_MODES = ("raise", "warn", "ignore")  # what forward does with a NaN/inf input or loss (issue 12)


def freeze(model: nn.Module) -> nn.Module:
    """Teacher mode: no gradients, eval mode (dropout off, batch-norm statistics fixed)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class Distiller(nn.Module):
    """Student and teacher(s) run on the same batch; each term reads their Outputs; losses are summed."""

    def __init__(self, student: nn.Module, teachers: nn.Module | Sequence[nn.Module] | None,
                 terms: dict[str, tuple[Term, Weight]], example_inputs: Any | None = None,
                 on_nonfinite: str = "raise", teacher_autocast: torch.dtype | None = None):
        super().__init__()
        if on_nonfinite not in NONFINITE_MODES:
            raise HintDistillError(f"on_nonfinite='{on_nonfinite}': choose one of {', '.join(NONFINITE_MODES)}")
        self.on_nonfinite = on_nonfinite
        # the teachers' forward alone in this lower precision (their outputs come back as float32)
        self.teacher_autocast = teacher_autocast
        if teachers is None:
            teachers = []
        elif isinstance(teachers, nn.Module):
            teachers = [teachers]
        if not terms:
            raise HintDistillError("a Distiller needs at least one loss term")
        self.student = student
        self.teachers = nn.ModuleList([freeze(t) for t in teachers])
        # every teacher's modules, listed once: checking their training flags each step costs microseconds where
        # teacher.eval() walks (and sets) the whole module tree (0.25 ms a step for the fmnist cnn)
        self._teacher_modules = [list(t.modules()) for t in self.teachers]
        self.terms = nn.ModuleDict({name: term for name, (term, _) in terms.items()})
        self.weights: dict[str, Weight] = {name: w for name, (_, w) in terms.items()}
        self.epoch = 0.0
        if any(t.uses_teacher for t in self.terms.values()) and not self.teachers:
            raise HintDistillError("a term needs a teacher but no teacher was given")
        self.student_taps = Taps(student, {n for t in self.terms.values() for n in t.student_taps()}, "student")
        self.teacher_taps = [
            Taps(t, {n for term in self.terms.values() for n in term.teacher_taps()}, f"teacher {i}")
            for i, t in enumerate(self.teachers)
        ]
        # Stop each forward at the last tapped layer when no term reads a final output (a hint stage).
        self.stop_early = not any(t.reads_final_output for t in self.terms.values())
        self._ready = False
        self._snapshot: BufferSnapshot | None = None  # made after setup (adapters have no buffers yet before)
        if example_inputs is not None:
            self.setup(example_inputs)

    # -- lifecycle -----------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        for t in self.teachers:
            t.eval()
        return self

    @torch.no_grad()
    def setup(self, example_inputs: Any) -> None:
        """Dry-run one batch to probe shapes and build every term's adapter (before the optimizer)."""
        was_training = self.student.training
        self.student.eval()  # the probe must not move the student's batch-norm statistics
        try:
            student_out = self.student_taps.run(example_inputs)
            teacher_outs = self.teacher_outputs(example_inputs)
            for term in self.terms.values():
                term.setup(student_out, teacher_outs)
        finally:
            self.student.train(was_training)
        self._ready = True

    def remove_taps(self) -> None:
        """Take the forward hooks off the student and the teachers (a finished stage leaves none behind)."""
        self.student_taps.remove()
        for taps in self.teacher_taps:
            taps.remove()

    def set_epoch(self, epoch: float) -> None:
        """Progress in epochs (fractional allowed), for scheduled weights."""
        self.epoch = epoch

    def weight(self, name: str) -> float:
        w = self.weights[name]
        return float(w(self.epoch)) if callable(w) else float(w)

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """Student and adapter parameters that require gradients; teachers never appear here."""
        params = list(self.student.parameters()) + list(self.terms.parameters())
        return [p for p in params if p.requires_grad]

    # -- forward -------------------------------------------------------------------------------
    def teacher_outputs(self, inputs: Any) -> list[Outputs]:
        """Every teacher's Outputs, computed under ``torch.inference_mode`` (no autograd bookkeeping at all), and
        with ``teacher_autocast`` under autocast to that dtype (the outputs returned as float32)."""
        outs = []
        with torch.inference_mode(), self.teacher_precision():
            for teacher, taps, modules in zip(self.teachers, self.teacher_taps, self._teacher_modules, strict=True):
                # A user's loop may have called .train() on the teacher or on any of its submodules
                # (the root's flag alone does not tell), so every module's flag is checked on every call.
                if any(map(_training, modules)):
                    teacher.eval()
                outs.append(taps.run(inputs, stop_early=self.stop_early and self._ready))
        # Inference tensors cannot be saved for the student's backward (a hint's MSE saves its target):
        # a clone outside inference mode is an ordinary tensor, and costs far less than the forward.
        # Under teacher_autocast the copy is also the cast back to float32.
        up = self.teacher_autocast is not None
        return [{k: v.to(torch.float32, copy=True) if up and v.is_floating_point() else v.clone()
                 for k, v in out.items()} for out in outs]

    def teacher_precision(self):
        """Autocast to ``teacher_autocast`` on the teachers' device, or nothing."""
        if self.teacher_autocast is None:
            return nullcontext()
        first = next(iter(self.teachers.parameters()), None)
        return torch.autocast(first.device.type if first is not None else "cpu", dtype=self.teacher_autocast)

    def forward(self, inputs: Any, targets: Any = None,
                teacher_outputs: list[Outputs] | None = None) -> tuple[Outputs, dict[str, torch.Tensor]]:
        """Return the student's Outputs and the named losses; ``losses['loss']`` is the weighted sum, and a
        term's named parts appear as ``<term>.<part>`` (detached, for the logs).

        ``teacher_outputs`` may be passed in (from a cache) to skip the teachers' forward.
        """
        if not self._ready:
            raise HintDistillError(
                "Distiller.setup(example_inputs) was not called: adapters are built from one dry-run "
                "batch before the optimizer is created. Pass example_inputs= to the constructor."
            )
        snapshot = self.guard_inputs(inputs)
        needs_teacher = any(t.uses_teacher for t in self.terms.values())
        if teacher_outputs is None:
            teacher_outputs = self.teacher_outputs(inputs) if needs_teacher else []
        student_out = self.student_taps.run(inputs, stop_early=self.stop_early)
        losses: dict[str, torch.Tensor] = {}
        total = None
        for name, term in self.terms.items():
            value, parts = loss_and_parts(term, term(student_out, teacher_outputs, targets))
            losses[name] = value.detach()
            losses.update({f"{name}.{part}": v.detach() for part, v in parts.items()})  # logged, not summed
            w = self.weight(name)
            weighted = value if w == 1.0 else w * value  # x * 1.0 is x: one op (and its backward) less
            total = weighted if total is None else total + weighted
        losses["loss"] = total
        self.check_losses(losses, snapshot)
        return student_out, losses

    # -- non-finite values (issue 12) ----------------------------------------------------------
    def guard_inputs(self, inputs: Any) -> BufferSnapshot | None:
        """Refuse a non-finite input before the student sees it; keep the statistics a bad loss would poison."""
        if self.on_nonfinite == "ignore":
            return None
        bad = nonfinite_part(inputs)
        if bad is not None:
            self.nonfinite(f"the input batch holds {bad}, so every loss would be non-finite", "the input batch", True)
        return self.buffer_snapshot() if self.training else None

    def buffer_snapshot(self) -> BufferSnapshot:
        """The student's and the terms' buffers (batch-norm statistics) as they are now, in one snapshot object
        that every step refreshes in place."""
        if self._snapshot is None:  # the modules that hold buffers, listed once
            self._snapshot = BufferSnapshot(owners=[m for root in (self.student, self.terms) for m in root.modules()
                                                    if m._buffers])
        else:
            self._snapshot.take()
        return self._snapshot

    def check_losses(self, losses: dict[str, torch.Tensor], snapshot: BufferSnapshot | None) -> None:
        """A non-finite loss puts the student's batch-norm statistics back and raises (or warns): a loop that
        goes on would otherwise step the optimizer with NaN gradients."""
        if self.on_nonfinite == "ignore" or math.isfinite(float(losses["loss"].detach())):
            return
        if snapshot is not None:
            snapshot.restore()
        bad = [k for k in nonfinite_terms(losses) if k in self.terms] or ["loss"]
        values = ", ".join(f"{k} = {float(losses[k].detach().float().sum())}" for k in bad)
        source = f"term{'s' * (len(bad) > 1)} {', '.join(repr(k) for k in bad)}" if bad != ["loss"] else \
            "the weighted sum 'loss' (every term is finite: a weight times a huge term overflowed)"
        self.nonfinite(f"the loss is non-finite because of {source} ({values}); the student's batch-norm statistics "
                       f"were put back as they were before this batch", source, False)

    def nonfinite(self, message: str, source: str, from_input: bool) -> None:
        fix = "check the data" if from_input else "lower the learning rate or the term's weight"
        text = (f"Distiller: {message}. Skip this batch (catch hintdistill.NonFiniteError) or {fix}; "
                f"Distiller(on_nonfinite='warn') warns instead of raising.")
        if self.on_nonfinite == "raise":
            raise NonFiniteError(text, source, from_input)
        warnings.warn(text, RuntimeWarning, stacklevel=3)
