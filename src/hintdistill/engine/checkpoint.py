"""Checkpoints: written atomically (temp file + rename), read with ``weights_only=True``.

Two kinds per phase folder:
- ``checkpoint.pt``: everything needed to resume (student, adapters, optimizer, scheduler, RNG, position);
- ``model.pt``: the student alone, ready to deploy: ``{"spec": {"name", "args"}, "state_dict": ...}``,
  with no adapter and no teacher inside.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_write
from ..errors import CheckpointError, HintDistillError
from ..models import build_model

TEST_DELAY = "HINTDISTILL_TEST_SAVE_DELAY"  # seconds; read only by the kill -9 test (tests/test_kill.py)


def atomic_save(obj: Any, path: str | Path) -> None:
    """Save so that a crash (even kill -9) leaves either the old file or the new one, never half of one."""
    path = Path(path)

    def write(f) -> None:
        torch.save(obj, f)
        if TEST_DELAY in os.environ:  # tests only: hold the half-written temp file so a test can kill -9 here
            time.sleep(float(os.environ[TEST_DELAY]))

    try:
        atomic_write(path, write)
    except BaseException as e:
        if disk_full(e):
            raise CheckpointError(
                f"cannot write {path}: the disk is full ({os.strerror(errno.ENOSPC)}). Nothing was replaced: "
                f"the previous {path.name}, if any, is intact. Free disk space (or move the run folder to another "
                f"disk), then rerun the same command to resume from the last checkpoint.") from None
        raise


@contextmanager
def writing(what: str, kept: str) -> Iterator[None]:
    """A full disk while writing ``what`` (metrics, the summary, the report) becomes a CheckpointError that says
    what is ``kept`` and how to go on, instead of an OSError half-way through a run (issue 12)."""
    try:
        yield
    except OSError as e:
        if not disk_full(e):
            raise
        what = e.filename or what
        raise CheckpointError(f"cannot write {what}: the disk is full ({os.strerror(errno.ENOSPC)}). {kept} Free disk "
                              f"space (or move the run folder to another disk), then rerun the same command to "
                              f"resume.") from None


def disk_full(e: BaseException | None) -> bool:
    """True if ``e`` or an exception it wraps is "no space" (torch.save turns the writer's OSError into a
    RuntimeError about the zip position, keeping the OSError only as its context)."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    return False


def safe_load(path: str | Path) -> dict:
    """``torch.load(weights_only=True)`` with an error that names the file and what to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and unsupported-global errors all land here
        first = (str(e).splitlines() or ["no message"])[0][:200]  # EOFError on an empty file has no message
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {first}). It may be "
            f"truncated or not a hintdistill/PyTorch checkpoint: delete it to retrain, or point to another file."
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def save_model(model: nn.Module, spec: dict, path: str | Path, extra: dict | None = None) -> None:
    """Write the deployable model file: its spec (to rebuild it) and its weights only."""
    atomic_save({"spec": spec, "state_dict": unwrap(model).state_dict(), **(extra or {})}, path)


def load_state(model: nn.Module, state_dict: dict, source: str) -> None:
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"the weights in {source} are a {type(state_dict).__name__}, not a state_dict "
                              f"(a mapping of parameter names to tensors): is it a hintdistill checkpoint?")
    try:
        unwrap(model).load_state_dict(state_dict)
    except (RuntimeError, TypeError, AttributeError, ValueError, KeyError) as e:  # odd values in a foreign file
        # torch's first line is only "Error(s) in loading state_dict for X:"; the mismatches follow it
        detail = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise CheckpointError(
            f"the weights in {source} do not fit the model ({detail[:500]}). Check that the "
            f"recipe's model name and args match the ones the checkpoint was trained with."
        ) from None


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a model from a ``model.pt`` (or resume ``checkpoint.pt``) and load its weights."""
    ckpt = safe_load(path)
    spec = ckpt.get("spec")
    if not (isinstance(spec, dict) and isinstance(spec.get("name"), str) and isinstance(spec.get("args", {}), dict)):
        raise CheckpointError(f"{path} has no valid model spec ({{'name': str, 'args': dict}}); pass a model.pt "
                              f"written by hintdistill")
    if "state_dict" not in ckpt and "student" not in ckpt:
        raise CheckpointError(f"{path} holds no weights ('state_dict' or 'student'); pass a model.pt written by "
                              f"hintdistill")
    try:
        model = build_model(spec["name"], spec.get("args", {}))
    except HintDistillError as e:
        raise CheckpointError(f"the model spec in {path} cannot be built: {e}") from None
    except Exception as e:  # a spec from another version or a damaged file: the factory may fail any way
        raise CheckpointError(f"the model spec in {path} ({spec['name']} with args {str(spec.get('args'))[:200]}) "
                              f"cannot be built ({type(e).__name__}: {e}); was it written by another version?") from None
    load_state(model, ckpt["state_dict"] if "state_dict" in ckpt else ckpt["student"], str(path))
    return model, ckpt


def load_teacher_weights(model: nn.Module, path: str) -> None:
    """Weights for a teacher from a ``model.pt``, a resume ``checkpoint.pt`` or a plain state_dict file."""
    ckpt = safe_load(path)
    state = ckpt.get("state_dict", ckpt.get("student", ckpt))
    load_state(model, state, path)


def load_teacher(model: nn.Module, path: str) -> nn.Module:
    """The teacher with a checkpoint's weights. A model whose anchors live in its definition, not its
    state_dict (a Darknet cfg), is rebuilt from the checkpoint's own spec, so it keeps the heads it was
    trained with; any other model gets the weights (the yolo family's anchors are in its state_dict)."""
    spec = safe_load(path).get("spec")
    if callable(getattr(model, "cfg_text", None)) and isinstance(spec, dict) and "cfg" in spec.get("args", {}):
        return load_model(path)[0]
    load_teacher_weights(model, path)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
