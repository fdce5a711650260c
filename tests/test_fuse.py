"""speed.fuse_teacher_bn: the teacher's BatchNorms folded into its convolutions, same outputs up to rounding."""

import json

import pytest
import torch
from test_stage import tiny_data
from test_teacher_cache import KD

from hintdistill.config import SpeedConfig, StageConfig
from hintdistill.engine.distributed import Dist
from hintdistill.engine.fuse import fused_copy
from hintdistill.engine.loop import Phase
from hintdistill.engine.stage import PhaseTrainer
from hintdistill.errors import ConfigError
from hintdistill.models import build_model


def batch_norms(model):
    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_a_fused_yolo_gives_the_same_head_maps_without_batch_norms():
    torch.manual_seed(0)
    model = build_model("yolo", {"num_classes": 3, "size": "n"}).eval()
    for m in model.modules():  # statistics away from the initial 0 / 1, so the folding has work to do
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    fused = fused_copy(model)
    assert batch_norms(model) > 50 and batch_norms(fused) == 0  # every YOLO conv sits in a ConvBNAct
    assert len(fused.fused_convs) == batch_norms(model) and "backbone.stem.0" in fused.fused_convs
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model(x), fused(x), strict=True):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)
            assert not torch.equal(a, b)  # rounding differs: why the option is off by default


def run(tmp_path, small_cnn, name, terms=KD, **speed):
    student, teacher = small_cnn((4, 8), seed=0), small_cnn((8, 16), seed=1)
    stage = StageConfig(name="kd", epochs=2, batch_size=12, terms=terms)
    trainer = PhaseTrainer(Phase("distilled", student, {"name": "cnn", "args": {}}, [stage], [teacher]),
                           tiny_data(), tmp_path / name, torch.device("cpu"), Dist(), 0, log=lambda _: None,
                           speed=SpeedConfig(teacher_cache="off", **speed))
    trainer.train()
    lines = (tmp_path / name / "distilled" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["train/loss"] for line in lines], teacher


def test_kd_with_a_fused_teacher_trains_to_the_same_losses(tmp_path, small_cnn):
    ref, _ = run(tmp_path, small_cnn, "plain")
    got, teacher = run(tmp_path, small_cnn, "fused", fuse_teacher_bn=True)
    assert got == pytest.approx(ref, rel=1e-4)
    assert batch_norms(teacher) == 2  # the caller's teacher is not changed; the stage trains on a fused copy


def test_a_hint_on_a_folded_convolution_is_refused(tmp_path, small_cnn):
    hint = [{"type": "hint", "hint": "features.stage2.0.0", "guided": "features.stage2.0.0"}]
    with pytest.raises(ConfigError, match="fuse_teacher_bn folds the batch norm into features.stage2.0.0"):
        run(tmp_path, small_cnn, "conv", terms=hint, fuse_teacher_bn=True)
    # on the batch norm (an Identity after folding) the hint reads the same feature as without folding
    on_bn = [{"type": "hint", "hint": "features.stage2.0.1", "guided": "features.stage2.0.1"}]
    ref, _ = run(tmp_path, small_cnn, "bn_plain", terms=on_bn)
    got, _ = run(tmp_path, small_cnn, "bn_fused", terms=on_bn, fuse_teacher_bn=True)
    assert got == pytest.approx(ref, rel=1e-4)
