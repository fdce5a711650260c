"""``hintdistill inspect``: every module's dotted name with its output shape, and hint/guided pairs."""

from __future__ import annotations

import torch
from torch import nn

from .errors import ConfigError
from .taps import _first_tensor


@torch.no_grad()
def module_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[str, str, tuple[int, ...], int]]:
    """(name, type, output shape without batch, own parameter count) in execution order."""
    rows: list[tuple[str, str, tuple[int, ...], int]] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(m, i, o, n=name):
            t = _first_tensor(o)
            if t is not None:
                rows.append((n, type(m).__name__, tuple(t.shape[1:]), sum(p.numel() for p in m.parameters())))

        handles.append(module.register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        model(torch.zeros(2, *input_shape))
    except RuntimeError as e:  # wrong channel count or too small an input: a bad option, not a crash
        raise ConfigError(
            f"{type(model).__name__} cannot run on an input of shape {','.join(map(str, input_shape))} "
            f"({str(e).splitlines()[0][:200]}). Check --input-shape (C,H,W) and the model's --args."
        ) from None
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return rows


def block_outputs(rows) -> list[tuple[str, tuple[int, ...]]]:
    """Feature maps at block level: for each spatial size, the module that ends it at the shallowest nesting,
    e.g. ``layer2`` rather than ``layer2.1.bn2`` and ``features.6`` rather than ``features.6.block.2``."""
    maps = [(n, shape) for n, _, shape, _ in rows if len(shape) == 3 and shape[1:] != (1, 1)]
    best: dict[tuple[int, int], tuple[int, int, str, tuple[int, ...]]] = {}
    for order, (name, shape) in enumerate(maps):
        key = shape[1:]
        depth = name.count(".")
        # shallowest name wins; among equals the later one (the end of that resolution)
        if key not in best or (depth, -order) <= (best[key][0], -best[key][1]):
            best[key] = (depth, order, name, shape)
    return [(name, shape) for _, _, name, shape in sorted(best.values(), key=lambda v: v[1])]


def suggest_pairs(teacher_rows, student_rows) -> list[tuple[str, str, str]]:
    """(hint, guided, adapter): the block-level maps of teacher and student with equal spatial size."""
    student = {shape[1:]: (name, shape) for name, shape in block_outputs(student_rows)}
    pairs = []
    for t_name, t_shape in block_outputs(teacher_rows):
        if t_shape[1:] in student:
            s_name, s_shape = student[t_shape[1:]]
            pairs.append((t_name, s_name, "identity" if s_shape[0] == t_shape[0] else "conv1x1"))
    return pairs
