"""Model registry: names like ``mlp``, ``cnn``, ``resnet20``, ``yolo``, ``torchvision:resnet18`` or ``timm:resnet18``.

A model is described by a *spec* ``{"name": ..., "args": {...}}``; checkpoints store the spec so a
model can be rebuilt without the recipe.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import ConfigError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_FIXED: dict[str, tuple[str, ...]] = {}  # args a model's own definition sets (a Darknet cfg's anchors)


def register(name: str, fixed: tuple[str, ...] = ()) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make a model factory buildable by ``name`` from recipes and the CLI. ``fixed``: args that
    the model's own definition sets, which data-derived defaults must not override (only the recipe may)."""

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = factory
        _FIXED[name] = tuple(fixed)
        return factory

    return deco


def data_defaults(name: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """The data's default args (num_classes, k-means anchors) that model ``name`` takes from the data."""
    return {k: v for k, v in defaults.items() if k not in _FIXED.get(name, ())}


def available() -> list[str]:
    """Every registered model name (``hintdistill.models`` imports the families, which register themselves)."""
    return sorted(_REGISTRY) + ["torchvision:<name>", "timm:<name>"]


def build_model(name: str, args: dict[str, Any] | None = None) -> nn.Module:
    """Build a registered model, or any torchvision / timm classification model as ``torchvision:<name>`` /
    ``timm:<name>``."""
    args = dict(args or {})
    # --- timm models (optional extra hintdistill[timm]) ---
    if name.startswith("timm:"):
        from .timm_models import build_timm

        return build_timm(name.split(":", 1)[1], args)
    # --- end timm ---
    if name.startswith("torchvision:"):
        import torchvision

        tv_name = name.split(":", 1)[1]
        if tv_name not in torchvision.models.list_models(module=torchvision.models):
            close = difflib.get_close_matches(tv_name, torchvision.models.list_models(module=torchvision.models))
            raise ConfigError(f"torchvision has no classification model '{tv_name}'. Closest: {', '.join(close)}")
        args.setdefault("weights", None)
        return torchvision.models.get_model(tv_name, **args)
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.3)
        raise ConfigError(
            f"unknown model '{name}'. Closest: {', '.join(close) or '-'}; all: {', '.join(available())}"
        )
    try:
        return _REGISTRY[name](**args)
    except TypeError as e:
        raise ConfigError(f"model '{name}' does not accept these arguments {args}: {e}") from e
