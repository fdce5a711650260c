"""``speed.fuse_teacher_bn``: fold every eval-mode BatchNorm into the convolution before it, in a copy of each
frozen teacher, so its forward skips the normalisation (Conv → BN → act becomes Conv' → Identity → act).

The fused convolution computes ``γ (W x + b − μ) / √(σ² + ε) + β`` with the folded weights, which equals the
unfused pair up to float rounding (about 1e-6 relative), so the option is off by default. Only pairs that sit
next to each other in an ``nn.Sequential`` are fused, the form every built-in detector and torchvision's
``Conv2dNormActivation`` use; a BN that follows its conv inside a custom ``forward`` is left alone. The BN
keeps its name (now an Identity), so a hint on it reads the same feature; a hint on the convolution itself
would read the normalised output instead, so the Stage refuses that combination (``fused_convs``).
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fused_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with its Sequential Conv2d → BatchNorm2d pairs folded; the names of
    the folded convolutions are in ``model.fused_convs``."""
    fused = copy.deepcopy(model).eval()
    names: list[str] = []
    for prefix, module in fused.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:], strict=False):
            if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.track_running_stats \
                    and conv.out_channels == bn.num_features:
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
                names.append(f"{prefix}.{conv_name}" if prefix else conv_name)
    fused.fused_convs = names
    return fused
