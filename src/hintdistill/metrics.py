"""Model measurements: accuracy, parameter count, FLOPs and CPU latency."""

from __future__ import annotations

import time

import torch
from torch import nn


@torch.no_grad()
def evaluate_classifier(model: nn.Module, loader, device: torch.device) -> dict[str, float]:
    """Top-1 accuracy, error count and mean cross-entropy over a loader of (images, labels)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        if not isinstance(logits, torch.Tensor):
            logits = logits.logits if hasattr(logits, "logits") else logits[0]
        loss_sum += float(nn.functional.cross_entropy(logits.float(), y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        total += len(y)
    model.train(was_training)
    return {"accuracy": correct / max(total, 1), "errors": total - correct, "examples": total,
            "loss": loss_sum / max(total, 1)}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def gflops(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    """GFLOPs of one forward pass on one input (torch's FlopCounterMode; a multiply-add counts 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    x = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() / 1e9


@torch.no_grad()
def cpu_latency_ms(model: nn.Module, input_shape: tuple[int, ...], batch: int = 1, warmup: int = 5,
                   iters: int = 30) -> float:
    """Median wall time per image of a CPU forward pass (eval mode, ``batch`` images at a time)."""
    import copy

    m = copy.deepcopy(model).cpu().eval()
    x = torch.randn(batch, *input_shape)
    return median_ms(lambda: m(x), warmup, iters) / batch


def median_ms(fn, warmup: int = 5, iters: int = 30) -> float:
    """Median wall time of ``fn()`` in milliseconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return 1000.0 * times[len(times) // 2]


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's name, family and model from /proc/cpuinfo (or its text, ``cpuinfo``; '' where there is none): CPUs
    of another family can round the same kernels differently, so a rerun repeats a run's numbers only on the same
    family."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                cpuinfo = f.read()
        except OSError:
            return ""
    lines = cpuinfo.split("\n\n", 1)[0].splitlines()  # the first processor's block
    info = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    name = info.get("model name", "")
    return f"{name} family {info['cpu family']} model {info['model']}" if "cpu family" in info and "model" in info \
        else name
