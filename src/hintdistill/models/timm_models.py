"""``timm:<name>``: any timm classification model (``timm:resnet18``, ``timm:mobilenetv3_small_050``).

Built with ``pretrained=False`` unless the args say ``pretrained: true``; nothing is downloaded otherwise.
``num_classes`` (the data's, by default) and ``in_chans`` pass through to ``timm.create_model``;
``in_channels`` is accepted as hintdistill's spelling of ``in_chans``. timm is an optional extra:
``pip install hintdistill[timm]``.
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from ..errors import ConfigError


def _timm():
    try:
        import timm
    except ImportError:
        raise ConfigError("timm:<name> models need timm, which is not installed: pip install hintdistill[timm] "
                          "(or pip install timm)") from None
    return timm


def build_timm(name: str, args: dict[str, Any]) -> nn.Module:
    """``timm.create_model(name, pretrained=False, **args)`` with errors that name the model and the fix."""
    timm = _timm()
    args = dict(args)
    if "in_channels" in args:
        if "in_chans" in args and args["in_chans"] != args["in_channels"]:
            raise ConfigError(f"timm:{name}: in_channels {args['in_channels']} and in_chans {args['in_chans']} "
                              f"disagree; give one of them")
        args["in_chans"] = args.pop("in_channels")
    pretrained = bool(args.pop("pretrained", False))
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.5)
        raise ConfigError(f"timm has no model '{name}'. Closest: {', '.join(close) or '-'} "
                          f"(all: python -c 'import timm; print(timm.list_models())')")
    try:
        return timm.create_model(name, pretrained=pretrained, **args)
    except TypeError as e:
        raise ConfigError(f"model 'timm:{name}' does not accept these arguments {args}: {e}") from None
    except (OSError, RuntimeError, ValueError) as e:
        if not pretrained:
            raise
        # huggingface_hub's "not found" / offline errors are OSError subclasses; a bad file is a RuntimeError
        raise ConfigError(
            f"timm:{name}: the pretrained weights cannot be fetched or read ({type(e).__name__}: "
            f"{(str(e) or 'no such file').splitlines()[0][:200]}). Without network access, set pretrained: false (random "
            f"initialization, e.g. for a teacher you train here), or give a local file with "
            f"pretrained_cfg_overlay: {{file: /path/to/weights.safetensors}}."
        ) from None
