"""Taps: capture intermediate features of any ``nn.Module`` by dotted module name.

A tap is a forward hook; no model's ``forward`` is rewritten, so torchvision, timm or a user's own
module can be teacher or student unchanged. Captured tensors live in ``Taps.features`` only during a
forward through ``Taps.run`` and are cleared before and after it; a plain ``model(x)`` (evaluation)
records nothing, so no batch sees or keeps alive a stale feature from an earlier batch or from eval.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

import torch
from torch import nn

from .errors import ShapeError


class _AllTapped(Exception):
    """Raised from the hook that captures the last needed output, to end a forward early (caught in run)."""

Outputs = dict[str, torch.Tensor]
"""What one forward pass produced, by name: ``logits``; ``head:0..N`` for a detector's raw per-level
maps ``[B, A, H, W, 5+C]``; ``feat:<module.path>`` for every tapped module."""


def feature_key(name: str) -> str:
    """The Outputs key under which the tapped module ``name`` is stored."""
    return f"feat:{name}"


def find_module(model: nn.Module, name: str, role: str = "model") -> nn.Module:
    """``model.get_submodule(name)`` with an error that lists the closest valid names."""
    names = [n for n, _ in model.named_modules() if n]
    if name in names:
        return model.get_submodule(name)
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.4)
    hint = f" Closest names: {', '.join(close)}." if close else ""
    raise ShapeError(
        f"The {role} has no module named '{name}'.{hint} "
        f"Run `hintdistill inspect` on the model to list every module with its output shape."
    )


def _first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)):
        for v in value:
            t = _first_tensor(v)
            if t is not None:
                return t
    if isinstance(value, dict):
        for v in value.values():
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def outputs_from(result) -> Outputs:
    """Turn whatever a model's forward returned into Outputs.

    A tensor, or an output with a ``.logits`` attribute (torchvision's Inception/GoogLeNet train-mode
    namedtuples, HF-style outputs), is ``logits``; a detector's list of per-level head maps, each
    ``[B, A, H, W, 5+C]``, is ``head:0``, ``head:1``, ...; a dict is taken as it is.
    """
    if isinstance(result, torch.Tensor):
        return {"logits": result}
    if hasattr(result, "logits"):  # checked before tuples: InceptionOutputs is a namedtuple (logits, aux_logits)
        return {"logits": result.logits}
    if isinstance(result, dict):
        return dict(result)
    if isinstance(result, (list, tuple)) and result and all(
            isinstance(t, torch.Tensor) and t.dim() == 5 for t in result):
        return {f"head:{i}": t for i, t in enumerate(result)}
    if isinstance(result, (list, tuple)):
        shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in result]
        raise TypeError(f"the model returned a {type(result).__name__} of {shapes}: only a detector's per-level head "
                        f"maps [B, A, H, W, 5+C] may come as a list; return the logits tensor, or a dict of named "
                        f"tensors (e.g. {{'logits': ..., 'aux': ...}})")
    raise TypeError(f"cannot interpret a model output of type {type(result).__name__} as Outputs")


class Taps:
    """Forward hooks on a model's named modules; ``run(x)`` returns Outputs with ``feat:`` entries."""

    def __init__(self, model: nn.Module, names: Iterable[str] = (), role: str = "model"):
        self.model = model
        self.role = role
        self.features: dict[str, torch.Tensor] = {}
        self._running = False  # hooks record only inside run(): a plain model(x) (evaluation) leaves nothing
        self._stop_early = False
        self._handles: dict[str, torch.utils.hooks.RemovableHandle] = {}
        for name in names:
            self.add(name)

    @property
    def names(self) -> list[str]:
        return list(self._handles)

    def add(self, name: str) -> None:
        if name in self._handles:
            return
        module = find_module(self.model, name, self.role)

        def hook(_module, _inputs, output, _name=name):
            tensor = _first_tensor(output) if self._running else None
            if tensor is not None:
                self.features[_name] = tensor
                if self._stop_early and len(self.features) == len(self._handles):
                    raise _AllTapped  # nothing above this layer is read: skip the rest of the forward

        self._handles[name] = module.register_forward_hook(hook)

    def clear(self) -> None:
        self.features.clear()

    def remove(self) -> None:
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()
        self.clear()

    def run(self, *args, stop_early: bool = False, **kwargs) -> Outputs:
        """Forward the model and return its Outputs plus every tapped feature.

        ``stop_early``: end the forward once every tapped module has run (its first call); the Outputs
        then hold only the ``feat:`` entries, no ``logits``. Layers above the last tap do not run, so
        their batch-norm running statistics do not see the batch either.
        """
        self.clear()
        self._running = True
        self._stop_early = stop_early and bool(self._handles)
        try:
            try:
                outputs = outputs_from(self.model(*args, **kwargs))
            except _AllTapped:
                outputs = {}
            for name in self._handles:
                if name not in self.features:
                    raise ShapeError(
                        f"The {self.role}'s module '{name}' was not called during forward; "
                        f"choose a module that runs on every input."
                    )
                outputs[feature_key(name)] = self.features[name]
            return outputs
        finally:
            # Drop references right away so nothing stale survives into the next step or into eval.
            self._running = False
            self._stop_early = False
            self.clear()


def execution_order(model: nn.Module, *args, **kwargs) -> list[str]:
    """Names of the model's modules in the order their forward finished on one input (dry run)."""
    order: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(lambda m, i, o, n=name: order.append(n)))
    was_training = model.training
    model.eval()  # a dry run must not move batch-norm statistics (nor draw dropout masks)
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return order


def modules_up_to(model: nn.Module, layer: str, *args, **kwargs) -> list[str]:
    """Names of the modules that run before ``layer`` finishes (``layer`` and its children included).

    Used for FitNets' first stage, which trains the student "up to the guided layer".
    """
    find_module(model, layer, "student")
    order = execution_order(model, *args, **kwargs)
    if layer not in order:
        raise ShapeError(f"module '{layer}' did not run during forward")
    return order[: order.index(layer) + 1]
