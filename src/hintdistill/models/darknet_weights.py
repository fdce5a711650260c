"""Darknet ``.weights`` files (AlexeyAB/darknet ``parser.c``), little-endian throughout:

    int32 major, int32 minor, int32 revision, seen (uint64 if major·10 + minor ≥ 2, else uint32)
    then for every [convolutional] in cfg order:
        batch_normalize=1: beta (the BN bias), gamma (scale), running mean, running variance  (filters each)
        otherwise:          bias                                                               (filters)
        weights: filters · channels/groups · size · size, in PyTorch's [out, in, kh, kw] order

A file that does not fit the cfg exactly is refused, naming the layer where it stops fitting.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_write
from ..errors import CheckpointError

# what Darknet itself writes: version 0.2.5 (64-bit `seen`), no images seen yet
DEFAULT_HEADER = (0, 2, 5, 0)


def _wide_seen(major: int, minor: int) -> bool:
    return major * 10 + minor >= 2 and major < 1000 and minor < 1000


def header_bytes(header: tuple[int, int, int, int]) -> bytes:
    """The header as Darknet writes it for this version (``seen`` 64-bit from 0.2 on)."""
    major, minor, revision, seen = header
    return struct.pack("<3i", major, minor, revision) + struct.pack("<Q" if _wide_seen(major, minor) else "<I", seen)


def read_header(data: bytes, path: str | Path) -> tuple[tuple[int, int, int, int], int]:
    """((major, minor, revision, seen), header length in bytes)."""
    if len(data) < 12:
        raise CheckpointError(f"Darknet weights {path} has {len(data)} bytes, fewer than the 12-byte version header; "
                              f"the file is truncated or not a .weights file")
    major, minor, revision = struct.unpack_from("<3i", data)
    fmt = "<Q" if _wide_seen(major, minor) else "<I"
    if len(data) < 12 + struct.calcsize(fmt):
        raise CheckpointError(f"Darknet weights {path} ends inside its header ({len(data)} bytes)")
    return (major, minor, revision, struct.unpack_from(fmt, data, 12)[0]), 12 + struct.calcsize(fmt)


def conv_tensors(module: nn.Module) -> list[torch.Tensor]:
    """A ConvLayer's tensors in file order."""
    conv, bn = module.conv, getattr(module, "bn", None)
    first = [bn.bias, bn.weight, bn.running_mean, bn.running_var] if bn is not None else [conv.bias]
    return [*first, conv.weight]


def _plan(model: nn.Module, upto: int | None) -> list[tuple[int, str, list[torch.Tensor]]]:
    """(layer index, cfg location, tensors) of every conv the file holds."""
    return [(layer.index, layer.section.where(), conv_tensors(module))
            for layer, module in zip(model.network.layers, model.layers, strict=True)
            if layer.kind == "convolutional" and (upto is None or layer.index < upto)]


def _misfit(path: str | Path, available: int, plan: list, upto: int | None) -> CheckpointError:
    need = sum(4 * t.numel() for _, _, ts in plan for t in ts)
    scope = f"the {len(plan)} convolutional layers" + (f" before layer {upto}" if upto is not None else "")
    if available > need:
        return CheckpointError(f"Darknet weights {path} holds {available} bytes of parameters after its header, "
                               f"{available - need} more than {scope} of the cfg need ({need}): the file belongs to "
                               f"another cfg (more layers, filters or classes); use the cfg it was trained with")
    start = 0
    for index, where, tensors in plan:
        end = start + sum(4 * t.numel() for t in tensors)
        if end > available:
            return CheckpointError(
                f"Darknet weights {path} holds {available} bytes of parameters after its header but {scope} of the "
                f"cfg need {need}: it ends inside layer {index} ({where}), whose parameters are bytes {start}.."
                f"{end}. The file is truncated or was written for another cfg")
        start = end
    return CheckpointError(f"Darknet weights {path} does not fit the cfg")  # unreachable: sizes differ


@torch.no_grad()
def load_weights(model: nn.Module, path: str | Path, upto: int | None = None) -> None:
    """Load a Darknet ``.weights`` file into a DarknetModel. ``upto``: the file holds only the convolutional
    layers before that index (Darknet's partial files, e.g. ``yolov4.conv.137``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"Darknet weights {path} (resolved: {path.resolve()}) does not exist")
    data = path.read_bytes()
    header, offset = read_header(data, path)
    plan = _plan(model, upto)
    need = sum(4 * t.numel() for _, _, ts in plan for t in ts)
    if len(data) - offset != need:
        raise _misfit(path, len(data) - offset, plan, upto)
    values = torch.from_numpy(np.frombuffer(data, dtype="<f4", offset=offset).astype(np.float32))
    start = 0
    for _, _, tensors in plan:
        for t in tensors:
            t.copy_(values[start:start + t.numel()].view_as(t))
            start += t.numel()
    model.weights_header = header


def _atomic_write(path: str | Path, payload: bytes) -> None:
    """Write ``payload`` so that a crash leaves the old file or the new one, never half of one."""
    atomic_write(path, lambda f: f.write(payload))


def weights_bytes(model: nn.Module) -> bytes:
    """The model's parameters as a Darknet ``.weights`` file (header as loaded, or Darknet's own 0.2.5)."""
    tensors = [t.detach().reshape(-1).float().cpu() for _, _, ts in _plan(model, None) for t in ts]
    return header_bytes(model.weights_header) + torch.cat(tensors).numpy().astype("<f4").tobytes()


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Write ``.weights`` atomically, so Darknet and OpenCV's Darknet importer can run the model."""
    _atomic_write(path, weights_bytes(model))


def save_cfg(model: nn.Module, path: str | Path) -> None:
    """Write the model's cfg atomically (ship ``student.cfg`` next to ``student.weights``)."""
    _atomic_write(path, model.cfg_text().encode("utf-8"))
