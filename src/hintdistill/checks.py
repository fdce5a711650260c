"""Checks run before any training: a model that cannot take the data's images, or detectors that disagree on
the classes, is a ConfigError naming the model, what it expects and what the data gives (issue 12), not a
conv ``RuntimeError`` or an index error an hour into a run."""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import ConfigError, ShapeError
from .taps import outputs_from

INPUT_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


class _FirstLayer(Exception):
    """Raised from the first conv/linear's pre-hook to stop the dry run there (the rest need not run)."""

    def __init__(self, name: str, module: nn.Module, received: torch.Size):
        super().__init__(name)
        self.name, self.module, self.received = name, module, received


def first_input_layer(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[str, nn.Module, torch.Size] | None:
    """The first conv or linear layer the forward pass runs (by execution, not by definition order), with the
    shape it receives from a zero batch of ``input_shape``; None if the model has no such layer."""

    def hook(name):
        def stop(module, inputs):
            raise _FirstLayer(name, module, inputs[0].shape)
        return stop

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, INPUT_LAYERS)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    except _FirstLayer as first:
        return first.name, first.module, first.received
    except Exception:  # a failure before any conv/linear is not a channel mismatch: the next check reports it
        return None
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return None


def check_input_channels(model: nn.Module, input_shape: tuple[int, ...], role: str, data: str = "the data") -> None:
    """The model's first conv must take the data's channels (its first linear the flattened image's size)."""
    found = first_input_layer(model, input_shape)
    if found is None:
        return
    name, layer, received = found
    kind = type(model).__name__
    shape = "x".join(str(v) for v in input_shape)
    if isinstance(layer, nn.Linear):
        if layer.in_features == received[-1]:
            return
        raise ConfigError(
            f"the {role} ({kind}) expects {layer.in_features} input values at its first layer '{name}' but "
            f"{data} gives {received[-1]} ({shape} images): set in_features: {math.prod(input_shape)} in the "
            f"{role}'s args if it takes flattened images, or resize the data (data.image_size).")
    if layer.in_channels == received[1]:
        return
    raise ConfigError(
        f"the {role} ({kind}) expects {layer.in_channels}-channel images at its first layer '{name}' but {data} "
        f"gives {received[1]} channels ({shape}): set in_channels: {received[1]} in the {role}'s args (cnn, "
        f"resnet* and yolo take it), or use a model built for {received[1]}-channel images.")


def detector_classes(model: nn.Module) -> int | None:
    """A detector's class count: its ``num_classes`` attribute, else its head's ``num_outputs`` - 5."""
    if isinstance(getattr(model, "num_classes", None), int):
        return model.num_classes
    head = getattr(model, "head", None)
    outputs = getattr(head, "num_outputs", None)
    return outputs - 5 if isinstance(outputs, int) else None


def check_class_counts(teacher: nn.Module, student: nn.Module, num_classes: int, role: str = "teacher") -> None:
    """Detection: teacher, student and data must name the same number of classes before any training, or the
    distillation terms fail only when distillation starts (after the teacher has trained)."""
    counts = {role: detector_classes(teacher), "student": detector_classes(student)}
    for who, n in counts.items():
        if n is not None and n != num_classes:
            raise ConfigError(
                f"the {who} detects {n} classes but the data has {num_classes}: remove num_classes from the "
                f"{who}'s args (it defaults to the data's), or list the {n} classes the {who} was trained on in "
                f"data.classes.")


def check_model_fits_data(model: nn.Module, data, role: str, data_name: str, student: nn.Module | None = None):
    """Both checks for one model against a ``TaskData`` (input shape, class count, kind), before it trains;
    returns the model. A detection teacher is compared with the ``student`` too."""
    check_input_channels(model, data.input_shape, role, f"data '{data_name}'")
    if data.kind == "detection":
        check_class_counts(model, student if student is not None else model, data.num_classes, role)
    return model


@torch.no_grad()
def check_num_classes(model: torch.nn.Module, data, role: str) -> None:
    """A classifier must predict the data's classes; found here, not as an index error deep in training."""
    if data.kind != "classification":
        return
    was_training = model.training
    model.eval()
    try:
        width = outputs_from(model(data.example_batch(2)[0]))["logits"].shape[1]
    finally:
        model.train(was_training)
    if width != data.num_classes:
        raise ShapeError(f"the {role} predicts {width} classes but the data has {data.num_classes}: remove "
                         f"num_classes from the {role}'s args (it defaults to the data's) or set it to "
                         f"{data.num_classes}.")
