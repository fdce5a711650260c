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


def suggest_pairs(teacher_rows, student_rows, limit: int = 10) -> list[tuple[str, str, str]]:
    """(hint, guided, adapter) for feature maps of equal spatial size, at matching relative depth."""
    def maps(rows):
        seen, out = set(), []
        for n, _, shape, _ in rows:
            if len(shape) == 3 and n not in seen and "." not in n.split(".")[-1]:
                seen.add(n)
                out.append((n, shape))
        return out

    t_maps, s_maps = maps(teacher_rows), maps(student_rows)
    pairs = []
    for ti, (tn, ts) in enumerate(t_maps):
        for si, (sn, ss) in enumerate(s_maps):
            if ts[1:] == ss[1:]:
                depth_gap = abs(ti / max(len(t_maps), 1) - si / max(len(s_maps), 1))
                adapter = "identity" if ts[0] == ss[0] else "conv1x1"
                pairs.append((depth_gap, tn, sn, adapter))
    pairs.sort()
    # Prefer one suggestion per teacher layer: the student layer at the closest relative depth.
    out, used = [], set()
    for _, tn, sn, adapter in pairs:
        if tn not in used:
            used.add(tn)
            out.append((tn, sn, adapter))
    return out[:limit]
