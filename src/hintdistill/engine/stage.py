"""Training one phase (teacher, baseline or distilled student) as small steps.

``PhaseTrainer.train()`` resumes a phase from its ``checkpoint.pt`` (or skips it when finished) and runs
its stages; a ``Stage`` is one span of epochs with its own terms, trainable modules and optimizer:
``build`` (loader, Distiller, optimizer, LR schedule), ``resume``, ``run_epoch``, ``evaluate``,
``checkpoint`` after every epoch, ``close`` (removes its forward hooks). Resume is exact: the RNG state,
optimizer and schedule are restored where the last finished epoch (after SIGINT/SIGTERM: the last step) left
them; a non-finite batch is skipped
and counted, and ``max_nonfinite_steps`` of them in a row stop the run with the last good checkpoint kept.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..build import build_terms
from ..config import SpeedConfig, StageConfig
from ..data.task import TaskData
from ..detection.heads import heads_context
from ..distiller import Distiller
from ..errors import ConfigError, Interrupted
from ..finite import NonFiniteError
from . import nonfinite
from .batchnorm import (
    batch_statistics_warning,
    batchnorms,
    freeze_batchnorm,
    stage_key,
    with_batch_statistics,
)
from .cache import TeacherCache, cache_refusal, open_teacher_cache
from .checkpoint import atomic_save, disk_full, load_state, safe_load, save_model
from .distributed import Dist
from .ema import WeightAverage
from .fuse import fused_copy
from .interrupt import LoaderStopped, batches, stop_may_end_it, stop_requested
from .logging import MetricsLog
from .loop import Phase, make_optimizer, make_scheduler, phase_fingerprint, set_trainable, to_device
from .progress import LearningWatch


class PhaseTrainer:
    """One phase's folder, resume state and running totals, shared by its stages; ``train()`` runs it."""

    def __init__(self, phase: Phase, data: TaskData, run_dir: Path, device: torch.device, d: Dist, seed: int,
                 amp: bool = False, log: Callable[[str], None] = print, speed: SpeedConfig | None = None):
        self.phase, self.data, self.device, self.d, self.seed, self.log = phase, data, device, d, seed, log
        self.speed = speed or SpeedConfig()
        self.use_amp = (amp or self.speed.autocast == "fp16") and device.type == "cuda"  # fp16 + grad scaler
        self.folder = run_dir / phase.name
        self.ckpt_path, self.model_path = self.folder / "checkpoint.pt", self.folder / "model.pt"
        for stale in self.folder.glob(".*.pt.*.tmp") if d.main else []:  # half-written by a killed save: never read
            stale.unlink(missing_ok=True)
        self.state = safe_load(self.ckpt_path) if self.ckpt_path.is_file() else None
        self.fingerprint = phase_fingerprint(phase, seed)
        if self.state is not None and self.state.get("fingerprint", self.fingerprint) != self.fingerprint:
            raise ConfigError(
                f"{self.folder} holds a '{phase.name}' phase trained with other settings (model, stages or seed "
                f"changed since). Rerun with another --output-dir, or delete {self.folder} to train this phase again."
            )
        state = self.state or {}
        self.elapsed = float(state.get("elapsed_s", 0.0))
        self.metrics: dict = dict(state.get("last_metrics", {}))
        # Each finished stage's terms (its trained adapters), kept for viz and the report.
        self.stage_terms: dict[int, dict] = dict(state.get("stage_terms", {}))
        self.total_epochs = sum(s.epochs for s in phase.stages)
        self.metrics_log: MetricsLog | None = None

    def say(self, text: str) -> None:
        if self.d.main:
            self.log(text)

    def save(self, **fields) -> None:
        """Write ``checkpoint.pt`` atomically (rank 0): the student, the running totals and ``fields``."""
        if self.d.main:
            atomic_save({"phase": self.phase.name, "spec": self.phase.spec, "student": self.phase.student.state_dict(),
                         "elapsed_s": self.elapsed, "last_metrics": self.metrics, "stage_terms": self.stage_terms,
                         "done": False, "fingerprint": self.fingerprint, **fields}, self.ckpt_path)

    def train(self) -> dict:
        """Train (or resume, or skip when finished) the phase; returns its final test metrics and timing."""
        student = self.phase.student.to(self.device)
        if self.state is not None:
            load_state(student, self.state["student"], str(self.ckpt_path))
            if self.state.get("done"):
                self.say(f"[{self.phase.name}] finished earlier: loaded {self.ckpt_path}")
                return dict(self.state["results"])
        teachers = [t.to(self.device) for t in self.phase.teachers]
        if self.speed.fuse_teacher_bn:
            teachers = [fused_copy(t) for t in teachers]
        self.metrics_log = MetricsLog(self.folder, enabled=self.d.main)
        self.metrics_log.trim(self.finished_epochs())  # issue 12: no epoch logged twice after a kill
        first_epoch = 0
        for index, cfg in enumerate(self.phase.stages):
            if self.state is None or index >= self.state["stage"]:
                Stage(self, index, cfg, teachers, first_epoch).train()
                self.state = None  # only the first stage run resumes
            first_epoch += cfg.epochs
        return self.finish()

    def finished_epochs(self) -> int:
        """Epochs of the phase the checkpoint holds (0 without one)."""
        if self.state is None:
            return 0
        return sum(s.epochs for s in self.phase.stages[: int(self.state["stage"])]) + int(self.state["epoch"])

    def finish(self) -> dict:
        """Final metrics, the deployable ``model.pt`` and the checkpoint marked done."""
        student = self.phase.student
        if not self.metrics:
            self.metrics = self.data.evaluate(student, self.device)
        if self.data.kind == "detection" and batchnorms(student) and "map50" in self.metrics:
            # a detector that computes with its batches' statistics fails as deployed: say so, and how to fix it
            with_batch = self.data.evaluate(with_batch_statistics(student), self.device)["map50"]
            self.metrics["map50_batch_stats"] = with_batch
            warning = batch_statistics_warning(self.phase.name, float(self.metrics["map50"]), with_batch,
                                               getattr(self.data.test_loader, "batch_size", 0) or 0,
                                               stage_key(self.phase.name, len(self.phase.stages)),
                                               self.phase.stages[-1].bn_frozen_epochs)
            if warning:
                self.say(warning)
        # numbers and per-class tables (detection's ap50_per_class), as a teacher loaded from a checkpoint reports them
        results = {**{k: v for k, v in self.metrics.items() if isinstance(v, (int, float, dict))},
                   "train_s": self.elapsed}
        if self.d.main:
            save_model(student, self.phase.spec, self.model_path)
        self.save(done=True, results=results)
        self.metrics_log.close()
        return results


class Stage:
    """One stage of a phase: its own terms, trainable modules, optimizer and LR schedule."""

    def __init__(self, trainer: PhaseTrainer, index: int, cfg: StageConfig, teachers: list[nn.Module],
                 first_epoch: int):
        self.trainer, self.index, self.cfg, self.teachers = trainer, index, cfg, teachers
        self.student = trainer.phase.student
        self.first_epoch = first_epoch  # epochs of the phase's earlier stages
        self.start_step = 0  # > 0 when resumed mid-epoch after SIGINT/SIGTERM
        self.label = f"{trainer.phase.name}/{cfg.name}"
        self.start_epoch = 0
        self.distiller: Distiller | None = None
        # warns when nothing is learned (the warm-up's epochs, where the loss may rise, do not count)
        self.watch = LearningWatch(self.label, cfg.epochs, cfg.optimizer.lr, warmup=cfg.schedule.warmup_epochs)
        self.cache: TeacherCache | None = None
        self.ema: WeightAverage | None = None

    def _resumed_state(self) -> dict | None:
        state = self.trainer.state
        return state if state is not None and state["stage"] == self.index else None

    def build(self) -> None:
        """Loader, Distiller (adapters from a dry-run batch), trainable set, optimizer and LR schedule."""
        t, cfg, device = self.trainer, self.cfg, self.trainer.device
        state = self._resumed_state()
        if state is not None and int(state["epoch"]) == 0 and "rng" in state:
            torch.set_rng_state(state["rng"])  # resumed at a stage boundary: draw what an unbroken run draws
        subset = {"subset": cfg.train_subset} if cfg.train_subset else {}  # a task's loader may not take one
        self.loader = t.data.train_loader(cfg.batch_size, cfg.augment, t.seed + self.index, t.d.rank, t.d.world,
                                          **subset)
        example = to_device(t.data.example_batch()[0], device)
        # detection terms read the heads (strides, anchors, decoding) of these models, not the task's
        context = heads_context(t.data.context, self.student, self.teachers)
        self.distiller = Distiller(self.student, self.teachers, build_terms(cfg.terms, context),
                                   example_inputs=example, teacher_autocast=self.teacher_autocast())
        self.distiller.to(device)
        set_trainable(self.student, cfg, self.distiller, example)
        # what the optimizer steps, listed once: walking the modules for it every step cost 0.5 ms (RESULTS.md)
        self.trainable = list(self.distiller.trainable_parameters())
        deferred = t.speed.nonfinite_check == "deferred"
        self.optimizer = make_optimizer(cfg, self.trainable, fused=deferred)
        self.scheduler = make_scheduler(cfg, self.optimizer, len(self.loader))
        self.scaler = torch.amp.GradScaler("cuda", enabled=t.use_amp)
        self.cache = self.open_cache(example)
        self.apply_speed_options()
        # issue 12: non-finite steps skipped and counted; deferred: decided on the device, read every N steps
        self.guard = (nonfinite.DeferredGuard if deferred else nonfinite.NonFiniteGuard)(self)
        if deferred:
            self.distiller.on_nonfinite = "ignore"  # its host checks are the guard's device flag now
        if cfg.ema is not None:
            self.ema = WeightAverage(self.student, cfg.ema)

    def teacher_autocast(self) -> torch.dtype | None:
        """The dtype of ``speed.teacher_autocast`` (None: off), once both precision options are checked: fp16
        needs CUDA."""
        speed = self.trainer.speed
        for name in ("autocast", "teacher_autocast"):
            if getattr(speed, name) == "fp16" and self.trainer.device.type != "cuda":
                raise ConfigError(f"speed.{name}: fp16 needs a CUDA device; on a CPU use bf16 (or off)")
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(speed.teacher_autocast)

    def apply_speed_options(self) -> None:
        """channels_last and torch.compile, where the recipe's speed block asks for them (and the teachers' fused
        convolutions are not tapped)."""
        speed = self.trainer.speed
        for teacher, taps in zip(self.distiller.teachers, self.distiller.teacher_taps, strict=True):
            folded = sorted(set(getattr(teacher, "fused_convs", [])) & set(taps.names))
            if folded:
                raise ConfigError(f"speed.fuse_teacher_bn folds the batch norm into {', '.join(folded)}, which a "
                                  f"term taps on the teacher: it would read the normalised output. Tap the batch "
                                  f"norm (or the block) instead, or set fuse_teacher_bn: false.")
        if speed.channels_last:
            for model in [self.student, *self.teachers]:
                model.to(memory_format=torch.channels_last)
        if speed.compile:
            if self.distiller.student_taps.names:
                self.trainer.say(f"[{self.label}] speed.compile skipped: the terms tap the student's layers")
            else:
                self.student.compile()  # in place: hooks, state_dict keys and checkpoints stay as they are

    def memory_format(self, x):
        """Images as channels_last when the speed block asks for it (the models were converted in build)."""
        if self.trainer.speed.channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast(self):
        """The step's mixed-precision context: fp16 on CUDA (``amp``/``autocast: fp16``), bf16 where asked."""
        t = self.trainer
        if t.use_amp:
            return torch.autocast("cuda", dtype=torch.float16)
        if t.speed.autocast == "bf16":
            return torch.autocast(t.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def open_cache(self, example) -> TeacherCache | None:
        """The teacher-output cache where the stage's mode allows it and it is safe; else None, saying why."""
        t = self.trainer
        mode = self.cfg.teacher_cache or t.speed.teacher_cache
        if mode == "off":
            return None
        features = t.speed.cache_features
        why = cache_refusal(self.loader, self.distiller, t.d.enabled, features=features)
        views = t.speed.cache_views
        if why is not None and views and hasattr(self.loader, "use_views") and \
                cache_refusal(self.loader, self.distiller, t.d.enabled, False, features) is None:
            self.loader.use_views(views)  # the augmentation was the only obstacle: replay k stored views of it
            why = None
            t.say(f"[{self.label}] teacher cache of {views} stored views per sample of the augmentation "
                  f"({', '.join(self.loader.augment)}): epoch e shows view e mod {views}")
        if why is not None:
            if mode == "on":
                raise ConfigError(f"teacher_cache: on, but the teacher outputs of stage '{self.cfg.name}' cannot be "
                                  f"cached: {why}. Set teacher_cache: auto (or off).")
            if why != "no term reads the teachers":
                t.say(f"[{self.label}] teacher cache off: {why}; the teachers run every step")
            return None
        folder = Path(t.speed.cache_dir) if t.speed.cache_dir else t.folder / "teacher_cache"
        try:
            return open_teacher_cache(folder, self.loader, self.distiller, example, t.speed.cache_dtype,
                                      t.speed.cache_topk, t.say, features)
        except OSError as e:
            if not disk_full(e):
                raise
            why = f"the cache's files do not fit on the disk of {folder} ({e.strerror})"
            if mode == "on":
                raise ConfigError(f"teacher_cache: on, but {why}. Free disk space, set speed.cache_dir to a folder "
                                  f"on a larger disk, or set teacher_cache: auto (or off).") from None
            t.say(f"[{self.label}] teacher cache off: {why}; the teachers run every step")
            return None

    def teacher_outputs(self, x) -> list | None:
        """This batch's teacher Outputs from the cache, computed and stored on a miss; None without a cache."""
        if self.cache is None:
            return None
        out = self.cache.lookup(self.loader.batch_indices, self.trainer.device)
        if out is None:
            out = self.distiller.teacher_outputs(x)
            self.cache.store(self.loader.batch_indices, out)
        return out

    def resume(self) -> None:
        """Continue a stage interrupted after a finished epoch: adapters, optimizer, schedule and RNG."""
        state = self._resumed_state()
        if state is None or (int(state["epoch"]) == 0 and not state.get("step")):
            return
        self.distiller.terms.load_state_dict(state["terms"])
        fused = self.optimizer.defaults.get("fused")
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # the kernel this run's non-finite check needs, not the saved one
            if "fused" in group:
                group["fused"] = fused
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"])
        self.start_epoch = self.watch.seen = int(state["epoch"])
        # stopped by a signal mid-epoch: the epoch's first ``step`` batches are skipped, its running sums kept
        self.start_step, self.partial, self.resume_rng = int(state.get("step", 0)), state.get("partial"), state["rng"]
        at = f", step {self.start_step}" if self.start_step else ""
        self.trainer.say(f"[{self.label}] resuming from {self.trainer.ckpt_path} at epoch {self.start_epoch}{at}")

    def train(self) -> None:
        """build, resume, run every remaining epoch (evaluate, log, checkpoint), close (even after an error)."""
        t = self.trainer
        try:
            self.build()
            self.resume()
            self.model: nn.Module = self.distiller
            if t.d.enabled:
                self.model = nn.parallel.DistributedDataParallel(
                    self.distiller, device_ids=[t.device.index] if t.device.type == "cuda" else None,
                    find_unused_parameters=True)
            for epoch in range(self.start_epoch, self.cfg.epochs):
                means, train_s = self.run_epoch(epoch)
                t.elapsed += train_s
                try:
                    with stop_may_end_it():
                        tested = self.evaluate(epoch)
                except LoaderStopped:  # stopped during the test pass: saved as the epoch's last step boundary
                    self.stop_if_asked(epoch, *self.epoch_end)
                    raise
                self.log_epoch(epoch, means, train_s, tested)
                self.checkpoint(epoch)
            if self.ema is not None:
                self.ema.copy_to(self.student)  # the averaged weights are the stage's result
            self.keep_terms()
        finally:
            self.close()

    def run_epoch(self, epoch: int) -> tuple[dict[str, float], float]:
        """One pass over the training data; returns the mean of every logged loss and the seconds it took."""
        t0 = time.perf_counter()
        self.distiller.train()
        if epoch >= self.cfg.epochs - self.cfg.bn_frozen_epochs:
            freeze_batchnorm(self.student)
        self.loader.set_epoch(self.first_epoch + epoch)
        sums, steps, start, seconds = self.epoch_start(epoch)
        bar = tqdm(batches(self.loader), total=len(self.loader), desc=f"{self.label} {epoch + 1}/{self.cfg.epochs}",
                   leave=False, disable=None if self.trainer.d.main else True, file=sys.stderr)
        done = start
        try:
            for step, (x, y) in enumerate(bar):
                if step < start:  # resumed mid-epoch: these batches were trained before the interruption
                    if step == start - 1:  # the RNG as it was at the boundary, before the next batch is drawn
                        torch.set_rng_state(self.resume_rng)
                    continue
                losses = self.step(epoch, step, x, y)
                done = step + 1
                if losses is not None:
                    # summed on the device in float64 (what float() additions gave): read once, after the epoch
                    for k, v in losses.items():
                        sums[k] = sums[k] + v.detach().double() if k in sums else v.detach().double()
                    steps += 1
                    if step % 20 == 0 and not bar.disable:  # a progress bar on a terminal is worth a host sync
                        bar.set_postfix(loss=f"{float(losses['loss'].detach()):.4f}")
                due = self.guard.due(done)
                if due:  # the deferred guard's counts: its skipped steps returned zeros, uncounted from here on
                    steps -= self.guard.read(epoch, done)
                if due or not (self.guard.deferred and self.trainer.d.enabled):  # under DDP the stop flag is a sync
                    self.stop_if_asked(epoch, done, sums, steps, seconds + time.perf_counter() - t0)
        except LoaderStopped:
            self.stop_if_asked(epoch, done, sums, steps, seconds + time.perf_counter() - t0)
            raise
        steps -= self.guard.read(epoch, done)  # the deferred guard's last counts (a read again reads nothing new)
        if self.cache is not None:
            self.cache.flush()  # the epoch's rows become verified blocks only now
        seconds += time.perf_counter() - t0
        self.epoch_end = done, sums, steps, seconds  # what a stop during the test pass saves
        return {k: float(v) / max(steps, 1) for k, v in sums.items()}, seconds

    def epoch_start(self, epoch: int) -> tuple[dict[str, float], int, int, float]:
        """Running sums, steps, first step and seconds of an epoch: zero, or where an interruption left them."""
        if epoch != self.start_epoch or not self.start_step:
            self.guard.set_counts(0, self.guard.in_row)
            return {}, 0, 0, 0.0
        p = self.partial
        self.guard.set_counts(int(p["nonfinite"]), int(p["in_row"]), self.start_step)
        # the weights' schedule where the last trained step left it (what the epoch logs if no step is left)
        self.distiller.set_epoch(epoch + (self.start_step - 1) / len(self.loader))
        return dict(p["sums"]), int(p["steps"]), self.start_step, float(p["seconds"])

    def stop_if_asked(self, epoch: int, done: int, sums: dict[str, float], steps: int, seconds: float) -> None:
        """On SIGINT/SIGTERM: save at this step boundary (resumes to the same numbers), raise Interrupted."""
        signum = stop_requested(self.trainer.d, self.trainer.device)
        if signum is None:
            return
        steps -= self.guard.read(epoch, done)  # the deferred guard's counts up to here
        partial = {"sums": sums, "steps": steps, "seconds": seconds, "nonfinite": self.guard.in_epoch,
                   "in_row": self.guard.in_row}
        self.trainer.save(terms=self.distiller.terms.state_dict(), optimizer=self.optimizer.state_dict(),
                          scheduler=self.scheduler.state_dict(), rng=torch.get_rng_state(), stage=self.index,
                          epoch=epoch, step=done, partial=partial, **self.ema_fields())
        raise Interrupted(signum, f"[{self.label}] stopped by {signal.Signals(signum).name} after epoch {epoch + 1}, "
                                  f"step {done}/{len(self.loader)}; saved {self.trainer.ckpt_path}")

    def step(self, epoch: int, step: int, x, y) -> dict[str, torch.Tensor] | None:
        """One optimizer step on one batch (AMP, gradient clipping, per-step LR); None when the batch was skipped
        as non-finite (no optimizer or LR step)."""
        device = self.trainer.device
        x, y = self.memory_format(to_device(x, device)), to_device(y, device)
        self.distiller.set_epoch(epoch + step / len(self.loader))
        if self.guard.deferred:
            return self.deferred_step(x, y)
        failure = None
        try:  # a NaN/inf input or loss: the Distiller raises before any backward, BN statistics put back
            with self.autocast():
                _, losses = self.model(x, y, teacher_outputs=self.teacher_outputs(x))
        except NonFiniteError as e:
            failure = e
        failure = self.guard.agree(failure, self.trainer.d, device)
        if failure is not None:
            return self.guard.skip(epoch, step, failure)
        norm = self.backward(losses["loss"])
        failure = self.guard.gradients(norm, self.scaler.is_enabled())
        if failure is not None:
            return self.guard.skip(epoch, step, failure)
        self.guard.good()
        self.update()
        return losses

    def backward(self, loss: torch.Tensor) -> torch.Tensor | None:
        """The gradients of ``loss``, clipped where the stage asks; returns their norm then (else None)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if not self.cfg.grad_clip_norm:
            return None
        self.scaler.unscale_(self.optimizer)
        return torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.grad_clip_norm)

    def update(self) -> None:
        """The optimizer step (skipped inside it where the scaler or the deferred flag says so), the LR
        schedule's step and the weight average's."""
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.student)

    def deferred_step(self, x, y) -> dict[str, torch.Tensor]:
        """``step`` without a host read (``speed.nonfinite_check: deferred``): the flag of a non-finite loss or
        gradient stays on the device, the fused optimizer skips the update with it and the batch-norm statistics
        are put back with it; such a step returns zeros, which ``run_epoch`` takes out of the epoch's count when
        it reads the guard's counts."""
        snapshot = self.distiller.buffer_snapshot()
        with self.autocast():
            _, losses = self.model(x, y, teacher_outputs=self.teacher_outputs(x))
        self.backward(losses["loss"])
        bad = self.guard.check(losses["loss"], self.scaler.is_enabled())
        snapshot.restore_where(bad)
        if not self.scaler.is_enabled():  # under AMP the GradScaler hands the optimizer its own flag
            self.optimizer.found_inf = self.guard.flag
        self.update()
        return {k: torch.where(bad, 0.0, v.detach()) for k, v in losses.items()}

    def evaluate(self, epoch: int) -> bool:
        """Test every ``eval_every`` epochs and after the last; returns whether this epoch was tested."""
        tested = (epoch + 1) % self.cfg.eval_every == 0 or epoch + 1 == self.cfg.epochs
        if tested:
            with self.ema.applied(self.student) if self.ema is not None else nullcontext():
                self.trainer.metrics = self.trainer.data.evaluate(self.student, self.trainer.device)
        return tested

    def log_epoch(self, epoch: int, means: dict[str, float], train_s: float, tested: bool) -> None:
        """One record in ``metrics.jsonl`` / TensorBoard, and one line on the console (rank 0)."""
        t = self.trainer
        numbers = {k: v for k, v in t.metrics.items() if isinstance(v, (int, float))} if tested else {}
        step = self.first_epoch + epoch + 1
        record = {"phase": t.phase.name, "stage": self.cfg.name, "epoch": step,
                  "lr": self.optimizer.param_groups[0]["lr"], "epoch_s": round(train_s, 3),
                  **{f"train/{k}": v for k, v in means.items()}, **{f"test/{k}": v for k, v in numbers.items()},
                  "nonfinite_steps": self.guard.in_epoch}
        for name in self.distiller.weights:
            record[f"weight/{name}"] = self.distiller.weight(name)
        t.metrics_log.log(record, step)
        if self.guard.in_epoch:
            t.say(f"[{self.label}] epoch {step}: {self.guard.in_epoch} non-finite steps skipped")
        losses_txt = " ".join(f"{k} {v:.4f}" for k, v in means.items())
        metric_txt = " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in numbers.items()) if tested else "-"
        t.say(f"[{self.label}] epoch {step}/{t.total_epochs} {losses_txt} | test {metric_txt} | {train_s:.1f}s")
        if (warning := self.watch.update(means.get("loss"), numbers if tested else None)) is not None:
            t.say(warning)

    def checkpoint(self, epoch: int) -> None:
        """Everything needed to resume after this epoch."""
        self.trainer.save(terms=self.distiller.terms.state_dict(), optimizer=self.optimizer.state_dict(),
                          scheduler=self.scheduler.state_dict(), rng=torch.get_rng_state(), stage=self.index,
                          epoch=epoch + 1, **self.ema_fields())

    def ema_fields(self) -> dict:
        """The weight average's state for the checkpoint (nothing without ``ema``)."""
        return {"ema": self.ema.state_dict()} if self.ema is not None else {}

    def keep_terms(self) -> None:
        """Keep the finished stage's adapters; a later stage resumes from its own epoch 0."""
        t = self.trainer
        t.stage_terms[self.index] = {k: v.detach().cpu() for k, v in self.distiller.terms.state_dict().items()}
        if self.cfg.epochs > 0 and self.index + 1 < len(t.phase.stages):
            t.save(rng=torch.get_rng_state(), stage=self.index + 1, epoch=0)

    def close(self) -> None:
        """Remove the stage's forward hooks and make the whole student trainable again."""
        if self.distiller is not None:
            self.distiller.remove_taps()
        if self.trainer.speed.compile:
            self.student._compiled_call_impl = None  # undo Module.compile(): evaluation and export run eager
        for p in self.student.parameters():
            p.requires_grad_(True)
