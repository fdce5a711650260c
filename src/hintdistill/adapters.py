"""Adaptation layers that map the student's guided feature into the teacher's hint space.

Built from shapes probed on one dry-run batch:

- ``conv1x1`` (default; Chen et al. 2017), ``conv3x3`` (padding 1): keep the guided spatial size;
- ``regressor``: FitNets' convolutional regressor, kernel k_i = N_guided,i - N_hint,i + 1 per spatial
  dim, so a larger guided map lands exactly on the hint's size (Romero et al. 2015, §2.2);
- ``linear``: for vector features ``[B, D]``;
- ``identity``: shapes must already match.

Token maps ``[B, N, C]`` (a ViT's blocks) fit none of these: the hint term's ``tokens_to_map: true`` reshapes
them to ``[B, C, H, W]`` first (``tokens_to_map`` below).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import ShapeError

ADAPTERS = ("conv1x1", "conv3x3", "regressor", "linear", "identity")


def build_adapter(kind: str, guided_shape: tuple[int, ...], hint_shape: tuple[int, ...],
                  activation: str = "none") -> nn.Module:
    """An adapter taking a tensor of ``guided_shape`` (with batch dim) to the hint's channels."""
    if kind not in ADAPTERS:
        raise ShapeError(f"unknown adapter '{kind}'; choose one of {', '.join(ADAPTERS)}")
    if kind != "identity" and 3 in (len(guided_shape), len(hint_shape)):
        raise ShapeError(
            f"guided {tuple(guided_shape)} and hint {tuple(hint_shape)}: a 3-d feature [B, N, C] is a token map "
            f"(a ViT block's output), which adapter '{kind}' cannot take: conv adapters need [B, C, H, W], "
            f"'linear' needs [B, D]. Set tokens_to_map: true on the hint term (drops a class token, reshapes the "
            f"N = H*W tokens to [B, C, H, W]), or choose a layer that outputs a feature map or a vector."
        )
    if kind == "identity":
        if tuple(guided_shape[1:]) != tuple(hint_shape[1:]):
            raise ShapeError(
                f"adapter 'identity' needs equal shapes but guided is {tuple(guided_shape[1:])} and hint is "
                f"{tuple(hint_shape[1:])}: use adapter 'conv1x1' (channels) or 'regressor' (spatial size)."
            )
        return nn.Identity()
    if kind == "linear":
        if len(guided_shape) != 2 or len(hint_shape) != 2:
            raise ShapeError(
                f"adapter 'linear' is for vector features [B, D]; got guided {tuple(guided_shape)} and hint "
                f"{tuple(hint_shape)}: use a conv adapter for feature maps."
            )
        layer: nn.Module = nn.Linear(guided_shape[1], hint_shape[1])
    else:
        if len(guided_shape) != 4 or len(hint_shape) != 4:
            raise ShapeError(
                f"adapter '{kind}' is for feature maps [B, C, H, W]; got guided {tuple(guided_shape)} and "
                f"hint {tuple(hint_shape)}: use adapter 'linear' for vector features."
            )
        c_in, c_out = guided_shape[1], hint_shape[1]
        if kind == "conv1x1":
            layer = nn.Conv2d(c_in, c_out, kernel_size=1)
        elif kind == "conv3x3":
            layer = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)
        else:  # FitNets regressor
            kh = guided_shape[2] - hint_shape[2] + 1
            kw = guided_shape[3] - hint_shape[3] + 1
            if kh < 1 or kw < 1:
                raise ShapeError(
                    f"the FitNets regressor needs a guided map at least as large as the hint; guided is "
                    f"{guided_shape[2]}x{guided_shape[3]}, hint {hint_shape[2]}x{hint_shape[3]}: choose a "
                    f"deeper hint layer or set resize: interpolate."
                )
            layer = nn.Conv2d(c_in, c_out, kernel_size=(kh, kw))
    if activation == "relu":
        return nn.Sequential(layer, nn.ReLU())
    if activation != "none":
        raise ShapeError(f"unknown adapter activation '{activation}'; choose 'none' or 'relu'")
    return layer


def tokens_to_map(tokens: torch.Tensor, name: str = "feature") -> torch.Tensor:
    """``[B, N, C]`` tokens to a ``[B, C, H, W]`` map: N = H*W (square), or 1 + H*W with a leading class token,
    which is dropped (it has no place on the grid). Other tensors pass unchanged."""
    if tokens.dim() != 3:
        return tokens
    b, n, c = tokens.shape
    for extra in (0, 1):
        side = math.isqrt(n - extra) if n > extra else 0
        if side * side == n - extra:
            return tokens[:, extra:].transpose(1, 2).reshape(b, c, side, side)
    raise ShapeError(
        f"tokens_to_map: '{name}' has {n} tokens, neither H*W nor 1 + H*W (a class token) for a square H = W: "
        f"a model with more extra tokens (DeiT's distillation token) or a non-square grid is not supported; "
        f"choose another layer."
    )
