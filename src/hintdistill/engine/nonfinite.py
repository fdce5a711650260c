"""Non-finite steps in a stage (issue 12): a batch whose input, loss or gradients hold NaN or infinity is skipped
(no optimizer step; the Distiller has already put the student's batch-norm statistics back), counted per epoch
and named on the console; ``max_nonfinite_steps`` of them in a row stop the stage with the last good checkpoint
kept and a message saying what to try.

``NonFiniteGuard`` decides every step on the host (three scalar reads: on a GPU, three host syncs per step).
``DeferredGuard`` (``speed.nonfinite_check: deferred``) keeps the decision on the device: the flag skips the
update inside a fused optimizer (``found_inf``, as GradScaler does) and puts the batch-norm statistics back with a
``torch.where``; its counts are read every ``speed.check_every`` steps and at the epoch's end."""

from __future__ import annotations

import math

import torch

from ..errors import TrainingDiverged
from ..finite import NonFiniteError
from .distributed import Dist, all_reduce_sum


class NonFiniteGuard:
    """Counts a stage's skipped steps: in a row (to stop) and in the current epoch (for the log)."""

    def __init__(self, stage):
        self.stage = stage
        self.in_row = 0
        self.in_epoch = 0
        # the fused check: whether the gradients allow it (decided at the first step), its flag and its scale of 1
        self._fused: bool | None = None
        self._found: torch.Tensor | None = None
        self._one: torch.Tensor | None = None

    def agree(self, failure: NonFiniteError | None, d: Dist, device: torch.device) -> NonFiniteError | None:
        """Under DDP every process skips when one must, or the others would wait in backward forever."""
        if not d.enabled:
            return failure
        flag = all_reduce_sum(torch.tensor([float(failure is not None)], device=device), d)
        if failure is None and float(flag) > 0:
            return NonFiniteError("another process's batch was non-finite", "another process's batch", False)
        return failure

    def gradients(self, norm: torch.Tensor | None, amp: bool) -> NonFiniteError | None:
        """A finite loss can still give NaN/inf gradients (an overflow in backward). Under AMP the GradScaler
        skips such steps itself (that is how it finds its scale), so they are not counted here."""
        if amp:
            return None
        if norm is None:
            grads = [p.grad for p in self.stage.trainable if p.grad is not None]
            if not grads or (self.fused(grads) and self.all_finite(grads)):
                return None
            norm = torch.nn.utils.get_total_norm(grads)
        value = float(norm)  # one read of a scalar (math.isfinite on it: 0.4 us, torch.isfinite: 5 us)
        if math.isfinite(value):
            return None
        return NonFiniteError(f"the gradients' norm is {value}", "the gradients", False)

    def fused(self, grads: list[torch.Tensor]) -> bool:
        """Whether the gradients suit one fused check: dense, of one device and one floating dtype (decided once,
        as the trainable parameters do not change within a stage)."""
        if self._fused is None:
            kinds = {(g.device, g.dtype) for g in grads}
            self._fused = (len(kinds) == 1 and not any(g.is_sparse for g in grads) and grads[0].is_floating_point()
                           and hasattr(torch, "_amp_foreach_non_finite_check_and_unscale_"))
            if self._fused:
                self._found = torch.zeros(1, device=grads[0].device)
                self._one = torch.ones(1, device=grads[0].device)
        return self._fused

    def all_finite(self, grads: list[torch.Tensor]) -> bool:
        """Every gradient element finite (one host read of the fused flag); False also where the kernel is
        missing, for the caller to fall back to the norm."""
        self._found.zero_()
        return self.flag_nonfinite(grads, self._found) and float(self._found) == 0.0

    def flag_nonfinite(self, grads: list[torch.Tensor], found: torch.Tensor) -> bool:
        """Set ``found`` (a one-element device tensor) to 1 where any gradient element is NaN/inf, in one pass
        over them all: the kernel GradScaler.unscale_ uses, at a scale of exactly 1 (the gradients keep their
        values). It dispatches once where a norm dispatches once per tensor: 55 us against 160-250 us for the 29
        tensors of the fmnist cnn. Returns False where this dtype or device has no such kernel (the norm is used
        from then on)."""
        try:
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found, self._one)
        except (RuntimeError, NotImplementedError):
            self._fused = False
            return False
        return True

    deferred = False  # decided on the host at every step

    def due(self, done: int) -> bool:
        """Whether the counts are read after ``done`` steps (the deferred guard's; this one always knows them)."""
        return False

    def read(self, epoch: int, done: int) -> int:
        """The steps skipped since the last read that the epoch's step count still includes (none here)."""
        return 0

    def set_counts(self, in_epoch: int, in_row: int, step: int = 0) -> None:
        """At an epoch's start (its first ``step``): zero, or what an interrupted epoch had counted."""
        self.in_epoch, self.in_row = in_epoch, in_row

    def good(self) -> None:
        self.in_row = 0

    def skip(self, epoch: int, step: int, failure: NonFiniteError) -> None:
        """Count the skipped step, say which tensor and when; stop after ``max_nonfinite_steps`` in a row."""
        st = self.stage
        self.in_row += 1
        self.in_epoch += 1
        limit = st.cfg.max_nonfinite_steps
        when = f"epoch {epoch + 1}, step {step + 1}/{len(st.loader)}"
        st.trainer.say(f"[{st.label}] {when}: {failure.source} non-finite, step skipped ({self.in_row} in a row; "
                       f"the stage stops at {limit})")
        if self.in_row >= limit:
            raise TrainingDiverged(self.stop_message(when, failure))

    def stop_message(self, when: str, failure: NonFiniteError) -> str:
        st = self.stage
        t = st.trainer
        head = (f"[{st.label}] {self.in_row} steps in a row were non-finite (max_nonfinite_steps: "
                f"{st.cfg.max_nonfinite_steps}), the last at {when}: {failure.source} ({failure}). Training stopped; "
                f"the last good checkpoint is kept at {t.ckpt_path}.")
        if failure.from_input:
            return (f"{head} The input batch held NaN or infinity, so the learning rate is not the cause: check the "
                    f"data (damaged images, a normalization that divides by a std of 0), then rerun the same command "
                    f"to resume from the checkpoint.")
        return (f"{head} Lower the learning rate ({st.cfg.optimizer.lr}) or the weight of {failure.source}, or set "
                f"grad_clip_norm; a changed stage trains this phase again, so delete {t.folder} first (the phases "
                f"before it are kept) and rerun the same command. Rerunning unchanged resumes from the checkpoint.")


class DeferredGuard(NonFiniteGuard):
    """The same rule without a host read per step: ``check`` returns the step's flag as a device tensor, which the
    Stage hands to the fused optimizer and the batch-norm snapshot; the skipped steps are counted on the device
    and ``read`` every ``check_every`` steps. A stop after ``max_nonfinite_steps`` in a row can come up to
    ``check_every - 1`` steps late (the weights did not change in them); the LR schedule and the weight average
    (``ema``) advance on a skipped step, and an input is not checked by itself (a NaN input gives a NaN loss,
    which is)."""

    deferred = True

    def __init__(self, stage):
        super().__init__(stage)
        device = stage.trainer.device
        self.every = stage.trainer.speed.check_every
        self.flag = torch.zeros((), device=device)  # this step: 1.0 when skipped (0-dim, as fused Adam's step)
        self.counts = torch.zeros(2, device=device)  # skipped in a row, skipped this epoch
        self.last_read = 0  # the step of the epoch at the last read

    def check(self, loss: torch.Tensor, amp: bool) -> torch.Tensor:
        """This step's flag, on the device: the loss non-finite, or (without AMP, whose GradScaler checks its own)
        any gradient; agreed under DDP (every process skips when one does)."""
        st = self.stage
        torch.logical_not(torch.isfinite(loss.detach()), out=self.flag)
        grads = [] if amp else [p.grad for p in st.trainable if p.grad is not None]
        if grads and not (self.fused(grads) and self.flag_nonfinite(grads, self.flag)):  # else the norm, on device
            self.flag.logical_or_(torch.logical_not(torch.isfinite(torch.nn.utils.get_total_norm(grads))))
        if st.trainer.d.enabled:
            all_reduce_sum(self.flag, st.trainer.d).clamp_(max=1.0)
        in_row, in_epoch = self.counts.unbind()
        in_row.add_(self.flag).mul_(self.flag)  # one more, or back to 0
        in_epoch.add_(self.flag)
        return self.flag.bool()

    def due(self, done: int) -> bool:
        return done % self.every == 0

    def read(self, epoch: int, done: int) -> int:
        """One host read of the counts: say what was skipped since the last read, stop after
        ``max_nonfinite_steps`` in a row; returns how many steps were newly skipped."""
        st = self.stage
        in_row, in_epoch = (int(v) for v in self.counts.tolist())
        new, first = in_epoch - self.in_epoch, self.last_read
        self.in_row, self.in_epoch, self.last_read = in_row, in_epoch, done
        if new:
            limit = st.cfg.max_nonfinite_steps
            st.trainer.say(f"[{st.label}] epoch {epoch + 1}, steps {first + 1}-{done}/{len(st.loader)}: {new} "
                           f"non-finite (the loss or the gradients), skipped ({in_row} in a row at step {done}; the "
                           f"stage stops at {limit})")
            if in_row >= limit:
                failure = NonFiniteError("found by the deferred check", "the loss or the gradients", False)
                raise TrainingDiverged(self.stop_message(f"epoch {epoch + 1}, step {done}/{len(st.loader)}", failure))
        return new

    def set_counts(self, in_epoch: int, in_row: int, step: int = 0) -> None:
        super().set_counts(in_epoch, in_row)
        self.counts.copy_(torch.tensor([float(in_row), float(in_epoch)]))
        self.last_read = step
