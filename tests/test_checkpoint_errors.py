"""Checkpoints: a full disk while writing leaves the previous file intact with a clear error; damaged or foreign
files are CheckpointErrors naming the file."""

import errno
import io
import os
import zipfile

import pytest
import torch

from hintdistill.engine import checkpoint
from hintdistill.engine.checkpoint import atomic_save, disk_full, load_model, safe_load, save_model
from hintdistill.errors import CheckpointError
from hintdistill.models import build_model

SPEC = {"name": "mlp", "args": {"in_features": 4, "hidden": [3], "num_classes": 2}}


class FullDisk(io.FileIO):
    """A file that accepts ``room`` bytes, then fails as a full disk does."""

    room = 100

    def write(self, data):
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def saved(path, value: float):
    atomic_save({"w": torch.full((500,), value)}, path)
    return path


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_disk_full_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch, where):
    path = saved(tmp_path / "checkpoint.pt", 1.0)
    if where == "write":
        monkeypatch.setattr(checkpoint.os, "fdopen", lambda fd, mode: FullDisk(fd, "wb"))
    else:
        def no_room(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(checkpoint.os, "fsync", no_room)
    with pytest.raises(CheckpointError) as info:
        saved(path, 2.0)
    assert str(info.value) == (
        f"cannot write {path}: the disk is full (No space left on device). Nothing was replaced: the previous "
        f"checkpoint.pt, if any, is intact. Free disk space (or move the run folder to another disk), then rerun "
        f"the same command to resume from the last checkpoint.")
    monkeypatch.undo()
    assert torch.equal(safe_load(path)["w"], torch.full((500,), 1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temp file left behind


def test_other_write_errors_pass_through_and_keep_the_file(tmp_path, monkeypatch):
    path = saved(tmp_path / "model.pt", 1.0)

    def broken(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    monkeypatch.setattr(checkpoint.os, "fsync", broken)
    with pytest.raises(OSError, match="Input/output error"):
        saved(path, 2.0)
    monkeypatch.undo()
    assert torch.equal(safe_load(path)["w"], torch.full((500,), 1.0))


def test_disk_full_is_found_inside_torchs_runtime_error():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from None
    except RuntimeError as e:
        assert e.__cause__ is None and disk_full(e)  # `from None` keeps the context, as torch's wrapping does
    assert not disk_full(RuntimeError("other")) and not disk_full(None)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.pt"
    torch.manual_seed(0)
    save_model(build_model(SPEC["name"], SPEC["args"]), SPEC, path)
    return path


def test_truncated_and_foreign_files(tmp_path, model_file):
    data = model_file.read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 1):
        (tmp_path / "cut.pt").write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r"cut\.pt cannot be read .*delete it to retrain"):
            safe_load(tmp_path / "cut.pt")
    model, _ = load_model(model_file)
    assert model.classifier.out_features == 2


def rezip(src, dst, keep=lambda name: True, replace=None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if keep(info.filename):
                data = zin.read(info.filename)
                zout.writestr(info, replace(info.filename, data) if replace else data)


def test_zip_with_missing_or_damaged_members(tmp_path, model_file):
    bad = tmp_path / "bad.pt"
    rezip(model_file, bad, keep=lambda n: not n.endswith("data.pkl"))
    with pytest.raises(CheckpointError, match=r"bad\.pt cannot be read"):
        safe_load(bad)
    rezip(model_file, bad, keep=lambda n: "/data/0" not in n)
    with pytest.raises(CheckpointError, match=r"bad\.pt cannot be read"):
        load_model(bad)
    rezip(model_file, bad, replace=lambda n, d: d[: len(d) // 2] if "/data/" in n else d)
    with pytest.raises(CheckpointError):
        load_model(bad)


@pytest.mark.parametrize("content, message", [
    ([1, 2], "holds a list, expected a dict"),
    ({"state_dict": {}}, "has no valid model spec"),
    ({"spec": "mlp", "state_dict": {}}, "has no valid model spec"),
    ({"spec": {"name": "mlp", "args": [1]}, "state_dict": {}}, "has no valid model spec"),
    ({"spec": SPEC}, r"holds no weights \('state_dict' or 'student'\)"),
    ({"spec": {"name": "nosuch"}, "state_dict": {}}, "the model spec in .* cannot be built: unknown model 'nosuch'"),
    ({"spec": {"name": "mlp", "args": {"hidden": [-3]}}, "state_dict": {}}, r"cannot be built \(RuntimeError"),
    ({"spec": SPEC, "state_dict": [1]}, "are a list, not a state_dict"),
    ({"spec": SPEC, "state_dict": {"classifier.weight": 3}}, "do not fit the model"),
])
def test_foreign_contents_are_checkpoint_errors(tmp_path, content, message):
    path = tmp_path / "x.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)
