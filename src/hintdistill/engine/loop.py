"""Training one phase (teacher, baseline or distilled student): stages of epochs, each with its own terms,
trainable modules and optimizer; evaluation every epoch; atomic checkpoints and resume; NaN guard."""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..build import TaskData, build_terms
from ..config import StageConfig, TrainConfig
from ..distiller import Distiller
from ..errors import ConfigError, TrainingDiverged
from ..taps import modules_up_to
from .checkpoint import atomic_save, load_state, safe_load, save_model
from .distributed import Dist
from .logging import MetricsLog


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


def make_optimizer(cfg, params) -> torch.optim.Optimizer:
    o = cfg.optimizer
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov)
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
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


def train_phase(phase: Phase, data: TaskData, run_dir: Path, device: torch.device, d: Dist, seed: int,
                amp: bool = False, log_every_epoch=print) -> dict:
    """Train (or resume, or skip when finished) one phase; returns its final test metrics and timing."""
    folder = run_dir / phase.name
    ckpt_path, model_path = folder / "checkpoint.pt", folder / "model.pt"
    state = safe_load(ckpt_path) if ckpt_path.is_file() else None
    fingerprint = phase_fingerprint(phase, seed)
    if state is not None and state.get("fingerprint", fingerprint) != fingerprint:
        raise ConfigError(
            f"{folder} holds a '{phase.name}' phase trained with other settings (model, stages or seed changed "
            f"since). Rerun with another --output-dir, or delete {folder} to train this phase again."
        )
    student = phase.student.to(device)
    if state is not None:
        load_state(student, state["student"], str(ckpt_path))
        if state.get("done"):
            if d.main:
                log_every_epoch(f"[{phase.name}] finished earlier: loaded {ckpt_path}")
            return dict(state["results"])
    teachers = [t.to(device) for t in phase.teachers]
    log = MetricsLog(folder, enabled=d.main)
    use_amp = amp and device.type == "cuda"
    elapsed = float(state["elapsed_s"]) if state else 0.0
    total_epochs = sum(s.epochs for s in phase.stages)
    global_epoch = 0
    metrics: dict = dict(state["last_metrics"]) if state and "last_metrics" in state else {}
    # Each finished stage's terms (its trained adapters), kept for viz and the report.
    stage_terms: dict[int, dict] = dict(state.get("stage_terms", {})) if state else {}

    def save(**fields) -> None:
        if d.main:
            atomic_save({"phase": phase.name, "spec": phase.spec, "student": student.state_dict(),
                         "elapsed_s": elapsed, "last_metrics": metrics, "stage_terms": stage_terms, "done": False,
                         "fingerprint": fingerprint,
                         **fields}, ckpt_path)

    for si, stage in enumerate(phase.stages):
        if state is not None and si < state["stage"]:
            global_epoch += stage.epochs
            continue
        if state is not None and si == state["stage"] and int(state["epoch"]) == 0 and "rng" in state:
            torch.set_rng_state(state["rng"])  # resumed at a stage boundary: draw what an unbroken run draws
        loader = data.train_loader(stage.batch_size, stage.augment, seed + si, d.rank, d.world)
        example = to_device(data.example_batch()[0], device)
        distiller = Distiller(student, teachers, build_terms(stage.terms, data.context), example_inputs=example)
        distiller.to(device)
        set_trainable(student, stage, distiller, example)
        optimizer = make_optimizer(stage, distiller.trainable_parameters())
        scheduler = make_scheduler(stage, optimizer, len(loader))
        start_epoch = 0
        if state is not None and si == state["stage"] and int(state["epoch"]) > 0:
            distiller.terms.load_state_dict(state["terms"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"])
            start_epoch = int(state["epoch"])
            if d.main:
                log_every_epoch(f"[{phase.name}/{stage.name}] resuming from {ckpt_path} at epoch {start_epoch}")
        model = distiller
        if d.enabled:
            model = nn.parallel.DistributedDataParallel(
                distiller, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        for epoch in range(start_epoch, stage.epochs):
            t0 = time.perf_counter()
            distiller.train()
            loader.set_epoch(global_epoch + epoch)
            sums: dict[str, float] = {}
            steps = 0
            bar = tqdm(loader, desc=f"{phase.name}/{stage.name} {epoch + 1}/{stage.epochs}", leave=False,
                       disable=None if d.main else True, file=sys.stderr)
            for step, (x, y) in enumerate(bar):
                x, y = to_device(x, device), to_device(y, device)
                distiller.set_epoch(epoch + step / len(loader))
                with torch.autocast("cuda", dtype=torch.float16) if use_amp else nullcontext():
                    _, losses = model(x, y)
                loss = losses["loss"]
                if not torch.isfinite(loss):
                    bad = [k for k, v in losses.items() if not torch.isfinite(v)]
                    raise TrainingDiverged(
                        f"[{phase.name}/{stage.name}] loss became {float(loss.detach())} at epoch {epoch + 1}, "
                        f"step {step + 1}/{len(loader)} (non-finite terms: {', '.join(bad)}). The last good "
                        f"checkpoint is kept at {ckpt_path}. "
                        f"Lower the learning rate ({stage.optimizer.lr}) or the terms' weights, then rerun to resume."
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if stage.grad_clip_norm:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(distiller.trainable_parameters(), stage.grad_clip_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                steps += 1
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            train_s = time.perf_counter() - t0
            elapsed += train_s
            tested = (epoch + 1) % stage.eval_every == 0 or epoch + 1 == stage.epochs
            if tested:
                metrics = data.evaluate(student, device)
            record = {"phase": phase.name, "stage": stage.name, "epoch": global_epoch + epoch + 1,
                      "lr": optimizer.param_groups[0]["lr"], "epoch_s": round(train_s, 3),
                      **{f"train/{k}": v / max(steps, 1) for k, v in sums.items()},
                      **{f"test/{k}": v for k, v in metrics.items() if tested and isinstance(v, (int, float))}}
            for name in distiller.weights:
                record[f"weight/{name}"] = distiller.weight(name)
            log.log(record, global_epoch + epoch + 1)
            if d.main:
                losses_txt = " ".join(f"{k} {v / max(steps, 1):.4f}" for k, v in sums.items())
                metric_txt = " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in metrics.items() if isinstance(v, (int, float))) if tested else "-"
                log_every_epoch(f"[{phase.name}/{stage.name}] epoch {global_epoch + epoch + 1}/{total_epochs} "
                                f"{losses_txt} | test {metric_txt} | {train_s:.1f}s")
            save(terms=distiller.terms.state_dict(), optimizer=optimizer.state_dict(),
                 scheduler=scheduler.state_dict(), rng=torch.get_rng_state(), stage=si, epoch=epoch + 1)
        stage_terms[si] = {k: v.detach().cpu() for k, v in distiller.terms.state_dict().items()}
        # The next stage starts at its own epoch 0; an unfinished later stage resumes from here.
        if stage.epochs > 0 and si + 1 < len(phase.stages):
            save(rng=torch.get_rng_state(), stage=si + 1, epoch=0)
        global_epoch += stage.epochs
        state = None
        for p in student.parameters():
            p.requires_grad_(True)
    if not metrics:
        metrics = data.evaluate(student, device)
    # numbers and per-class tables (detection's ap50_per_class), as a teacher loaded from a checkpoint reports them
    results = {**{k: v for k, v in metrics.items() if isinstance(v, (int, float, dict))}, "train_s": elapsed}
    if d.main:
        save_model(student, phase.spec, model_path)
    save(done=True, results=results)
    log.close()
    return results
