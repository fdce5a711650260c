"""``darknet``: a detector built from a Darknet ``.cfg``, with Darknet ``.weights`` in and out.

``model.layers`` is an ``nn.ModuleList`` indexed like Darknet's own table, so ``layers.54`` is Darknet's layer
54 (tappable as a hint or guided layer). ``forward(x)`` returns the ``[yolo]`` heads' raw maps
``[B, A, H, W, 5+C]`` ordered by stride ascending, the layout of the built-in ``yolo`` family
(``detection.heads``), with the head contract alongside: ``strides``, ``level_anchors`` (``[A, 2]`` input
pixels per level), ``head_specs`` and ``decode`` / ``postprocess``. Box decoding per head (Darknet's
``yolo_layer.c``, s = ``scale_x_y``, (i, j) the cell, σ the logistic):

    new_coords=0:  x = (i + σ(t_x)·s − (s−1)/2)·stride    w = exp(t_w)·anchor_w
    new_coords=1:  x = (i + σ(t_x)·s − (s−1)/2)·stride    w = (2·σ(t_w))²·anchor_w

and objectness and class probabilities are σ(t). The raw maps are always logits: the conv before a
``new_coords=1`` head has ``activation=logistic`` in the cfg, which Darknet applies in that conv; here that
conv outputs its pre-activation and the logistic is part of decoding (numerically the same boxes, and losses
can use logits). So a ``new_coords=1, scale_x_y=2`` head decodes exactly as YOLOv5's ``(2σ)²``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..detection.heads import HeadSpec, decode_level
from ..errors import ConfigError
from .darknet_cfg import (
    Layer,
    Network,
    format_cfg,
    network_from_sections,
    network_table,
    parse_sections,
    read_cfg,
)
from .darknet_weights import DEFAULT_HEADER, load_weights, save_cfg, save_weights
from .registry import register
from .yolo import YOLO

__all__ = ["DarknetModel", "HeadSpec", "build_darknet", "load_weights", "save_cfg", "save_weights"]

ACTIVATION_MODULES = {"linear": nn.Identity, "leaky": lambda: nn.LeakyReLU(0.1), "relu": nn.ReLU,
                      "mish": nn.Mish, "swish": nn.SiLU, "logistic": nn.Sigmoid}


class ConvLayer(nn.Sequential):
    """``[convolutional]``: ``conv`` (bias only without batch norm), ``bn`` (if batch_normalize), ``act``."""

    def __init__(self, layer: Layer, head_logits: bool = False):
        p = layer.params
        parts: dict[str, nn.Module] = {"conv": nn.Conv2d(layer.in_channels, p["filters"], p["size"], p["stride"],
                                                         p["padding"], groups=p["groups"],
                                                         bias=not p["batch_normalize"])}
        if p["batch_normalize"]:
            parts["bn"] = nn.BatchNorm2d(p["filters"])  # eps 1e-5, as AlexeyAB's sqrt(var + .00001)
        parts["act"] = nn.Identity() if head_logits else ACTIVATION_MODULES[p["activation"]]()
        super().__init__()
        for name, module in parts.items():
            self.add_module(name, module)


class RouteLayer(nn.Module):
    """``[route]``: concatenate the inputs' channels; with ``groups`` take group ``group_id`` of each input."""

    def __init__(self, groups: int = 1, group_id: int = 0):
        super().__init__()
        self.groups, self.group_id = groups, group_id

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.groups > 1:
            xs = tuple(x.chunk(self.groups, dim=1)[self.group_id] for x in xs)
        return xs[0] if len(xs) == 1 else torch.cat(xs, dim=1)


class ShortcutLayer(nn.Module):
    """``[shortcut]``: the previous layer plus the ``from`` layers, then the activation."""

    def __init__(self, activation: str = "linear"):
        super().__init__()
        self.act = ACTIVATION_MODULES[activation]()

    def forward(self, x: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
        for o in others:
            x = x + o
        return self.act(x)


class MaxPoolLayer(nn.Module):
    """``[maxpool]`` with Darknet's padding: ``padding`` (default size−1) split ``padding//2`` left/top, the rest
    right/bottom, padded cells never win; so size 5 stride 1 (SPP) and size 2 stride 1 keep the map size."""

    def __init__(self, size: int, stride: int, padding: int):
        super().__init__()
        self.size, self.stride, self.padding = size, stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding:
            lo, hi = self.padding // 2, self.padding - self.padding // 2
            x = F.pad(x, (lo, hi, lo, hi), value=float("-inf"))
        return F.max_pool2d(x, self.size, self.stride)


class UpsampleLayer(nn.Module):
    """``[upsample]``: nearest neighbour by ``stride``."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.stride, mode="nearest")


class YoloLayer(nn.Module):
    """``[yolo]``: the previous conv's map as ``[B, A, H, W, 5+C]`` (no decoding; see ``DarknetModel.decode``)."""

    def __init__(self, num_anchors: int, num_classes: int):
        super().__init__()
        self.num_anchors, self.num_outputs = num_anchors, 5 + num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return x.view(b, self.num_anchors, self.num_outputs, h, w).permute(0, 1, 3, 4, 2)


def _module(layer: Layer, network: Network) -> nn.Module:
    p = layer.params
    if layer.kind == "convolutional":
        nxt = network.layers[layer.index + 1] if layer.index + 1 < len(network.layers) else None
        return ConvLayer(layer, head_logits=nxt is not None and nxt.kind == "yolo" and nxt.params["new_coords"])
    if layer.kind == "route":
        return RouteLayer(p["groups"], p["group_id"])
    if layer.kind == "shortcut":
        return ShortcutLayer(p["activation"])
    if layer.kind == "upsample":
        return UpsampleLayer(p["stride"])
    if layer.kind == "maxpool":
        return MaxPoolLayer(p["size"], p["stride"], p["padding"])
    if layer.kind == "dropout":
        return nn.Dropout(p["probability"])
    return YoloLayer(len(p["anchors"]), p["classes"])


class DarknetModel(nn.Module):
    """A Darknet cfg as an ``nn.Module``; see the module docstring for outputs and decoding."""

    def __init__(self, network: Network):
        super().__init__()
        self.network = network
        self.in_channels = network.channels
        self.layers = nn.ModuleList(_module(layer, network) for layer in network.layers)
        # outputs a later route/shortcut reads are kept during forward; the rest are dropped at once
        self._kept = {i for layer in network.layers for i in layer.inputs if i != layer.index - 1}
        heads = sorted(network.heads, key=lambda h: network.layers[h.index - 1].stride)  # stable: cfg order on ties
        self._head_order = [h.index for h in heads]
        self.head_specs = [HeadSpec(network.layers[h.index - 1].stride, tuple(h.params["anchors"]),
                                    "darknet_new_coords" if h.params["new_coords"] else "darknet",
                                    h.params["scale_x_y"], h.index, h.params["classes"]) for h in heads]
        self.num_classes = self.head_specs[0].num_classes
        self.input_size = (network.height, network.width)  # [net]'s size; multiples of the largest stride run too
        # derived from the cfg, so not in the state_dict; buffers so they follow .to(device)
        self.register_buffer("strides", torch.tensor([float(s.stride) for s in self.head_specs]), persistent=False)
        for i, spec in enumerate(self.head_specs):
            self.register_buffer(f"anchors_{i}", torch.tensor(spec.anchors, dtype=torch.float32), persistent=False)
        if [len(s.anchors) for s in self.head_specs] == [3, 3, 3]:
            # the built-in yolo family's [3, 3, 2] layout, which the detection terms read
            self.register_buffer("anchors", torch.stack(self.level_anchors), persistent=False)
        self.weights_header = DEFAULT_HEADER

    @property
    def level_anchors(self) -> list[torch.Tensor]:
        """Per level (stride ascending) the anchors ``[A, 2]`` (w, h) in input pixels."""
        return [getattr(self, f"anchors_{i}") for i in range(len(self.head_specs))]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        kept: dict[int, torch.Tensor] = {}
        heads: dict[int, torch.Tensor] = {}
        prev = x
        for layer, module in zip(self.network.layers, self.layers, strict=True):
            if layer.kind in ("route", "shortcut"):
                y = module(*(prev if i == layer.index - 1 else kept[i] for i in layer.inputs))
            else:
                y = module(prev)
            if layer.kind == "yolo":
                heads[layer.index] = y
            else:
                prev = y
            if layer.index in self._kept:
                kept[layer.index] = y
        return [heads[i] for i in self._head_order]

    def decode_level(self, raw: torch.Tensor, level: int) -> torch.Tensor:
        """One level's raw map → ``[B, A, H, W, 5+C]``: ``x1, y1, x2, y2`` (input pixels), objectness, classes."""
        return decode_level(raw, self.head_specs[level])

    def decode(self, raw_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Raw maps → ``[B, N, 5+C]``: ``x1, y1, x2, y2`` (input pixels), objectness, class probabilities."""
        return torch.cat([self.decode_level(raw, i).flatten(1, 3) for i, raw in enumerate(raw_maps)], dim=1)

    # the same score rule and class-wise NMS as the yolo family; it only calls self.decode
    postprocess = YOLO.postprocess

    def cfg_text(self) -> str:
        """The cfg this model was built from (with any class-count or anchor edits), as Darknet reads it."""
        return format_cfg(self.network.sections)

    def darknet_table(self, height: int, width: int) -> tuple[str, float]:
        """Darknet's layer table and total BFLOPs for a ``height`` x ``width`` input."""
        return network_table(self.network, height, width)


def edit_heads(sections: list, num_classes: int | None, anchors: Any) -> None:
    """Set every ``[yolo]``'s ``classes`` (and its conv's ``filters``) and ``anchors``, as Darknet users edit
    a cfg for their own data. ``anchors``: all (w, h) pairs in input pixels, as many as each head's ``num``."""
    for i, sec in enumerate(sections):
        if sec.kind != "yolo":
            continue
        if anchors is not None:
            pairs = [(float(w), float(h)) for w, h in anchors]
            if len(pairs) != sec.integer("num", 1):
                raise ConfigError(f"{sec.where('num')}: {len(pairs)} anchors given but the head has "
                                  f"num={sec.integer('num', 1)}; pass that many (w, h) pairs or none (anchors: cfg)")
            sec.options["anchors"] = ", ".join(f"{w:g},{h:g}" for w, h in pairs)
        if num_classes is not None and num_classes != sec.integer("classes"):
            conv = sections[i - 1]
            if conv.kind != "convolutional":
                raise ConfigError(f"{sec.where()}: the layer before a [yolo] head must be a [convolutional]")
            n_mask = len(sec.integers("mask", list(range(sec.integer("num", 1)))))
            sec.options["classes"] = str(num_classes)
            conv.options["filters"] = str(n_mask * (5 + num_classes))


def _per_level(anchors: Any) -> bool:
    """Anchors given per level (``[[[w, h], ...], ...]``, e.g. a teacher's) rather than as one list of pairs."""
    return isinstance(anchors, (list, tuple)) and bool(anchors) and isinstance(anchors[0], (list, tuple)) \
        and bool(anchors[0]) and isinstance(anchors[0][0], (list, tuple))


def set_level_anchors(sections: list, levels: Sequence[Sequence[Sequence[float]]]) -> None:
    """Write per-level anchors (levels by stride ascending, as ``head_specs``) into each ``[yolo]``'s masked
    anchor slots; a different number of levels or of anchors per level is a ConfigError saying which."""
    network = network_from_sections(sections)
    heads = sorted(network.heads, key=lambda h: network.layers[h.index - 1].stride)
    counts = [len(h.params["anchors"]) for h in heads]
    if [len(level) for level in levels] != counts:
        raise ConfigError(f"{network.sections[0].source}: {len(levels)} levels with {[len(v) for v in levels]} "
                          f"anchors given, but the cfg's heads (by stride) have {counts}; anchors per level must "
                          f"line up (give all pairs as one list, or anchors: cfg)")
    for head, level in zip(heads, levels, strict=True):
        sec = head.section
        numbers = sec.numbers("anchors")
        pairs = [(numbers[2 * i], numbers[2 * i + 1]) for i in range(len(numbers) // 2)]
        for m, (w, h) in zip(sec.integers("mask", list(range(len(pairs)))), level, strict=True):
            pairs[m] = (float(w), float(h))
        sec.options["anchors"] = ", ".join(f"{w:g},{h:g}" for w, h in pairs)


def build_darknet(cfg: str | Path, weights: str | Path | None = None, num_classes: int | None = None,
                  anchors: Any = None, weights_upto: int | None = None) -> DarknetModel:
    """Build a DarknetModel from a cfg path (or cfg text) and optionally load ``.weights``. ``anchors``: None or
    "cfg" (the cfg's own), all (w, h) pairs as the heads' ``num``, or per level by stride (a teacher's)."""
    sections = parse_sections(*read_cfg(cfg))
    if _per_level(anchors):
        set_level_anchors(sections, anchors)
        anchors = None
    edit_heads(sections, num_classes, None if anchors in (None, "cfg") else anchors)
    model = DarknetModel(network_from_sections(sections))
    if weights:
        load_weights(model, weights, upto=weights_upto)
    return model


@register("darknet", fixed=("anchors",))  # a cfg has its anchors: data k-means does not replace them
def darknet(cfg: str, weights: str | None = None, num_classes: int | None = None, anchors: Any = None,
            weights_upto: int | None = None) -> DarknetModel:
    """Registry factory: ``{"name": "darknet", "args": {"cfg": "yolov4.cfg", "weights": "yolov4.weights"}}``."""
    return build_darknet(cfg, weights, num_classes, anchors, weights_upto)
