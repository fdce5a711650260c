"""Stage: a phase's stages leave no forward hook behind, and a stage's steps run in order."""

import torch

from hintdistill.config import StageConfig
from hintdistill.data.classification import TensorLoader
from hintdistill.data.task import TaskData
from hintdistill.engine.distributed import Dist
from hintdistill.engine.loop import Phase
from hintdistill.engine.stage import PhaseTrainer
from hintdistill.metrics import evaluate_classifier


def tiny_data() -> TaskData:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8, generator=g), torch.arange(32) % 10
    test = TensorLoader(x, y, 16, (0.5,), (0.5,))
    data = TaskData("classification", lambda bs, aug, seed, rank, world: TensorLoader(
        x, y, bs, (0.5,), (0.5,), shuffle=True, seed=seed), test, 10, (1, 8, 8))
    data.evaluate = lambda model, device: evaluate_classifier(model, test, device)
    return data


def hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_stages_remove_their_hooks_and_keep_each_stages_adapters(tmp_path, small_cnn):
    student, teacher = small_cnn((4, 8), seed=0), small_cnn((8, 16), seed=1)
    stages = [StageConfig(name="hint", epochs=1, batch_size=16, trainable="up_to_guided",
                          terms=[{"type": "hint", "hint": "features.stage1", "guided": "features.stage1"}]),
              StageConfig(name="kd", epochs=1, batch_size=16, terms=[{"type": "kd"}])]
    trainer = PhaseTrainer(Phase("distilled", student, {"name": "cnn", "args": {}}, stages, [teacher]),
                           tiny_data(), tmp_path, torch.device("cpu"), Dist(), 0, log=lambda _: None)
    results = trainer.train()
    assert hooks(student) == 0 and hooks(teacher) == 0  # Stage.close removed the taps of both stages
    assert set(trainer.stage_terms) == {0, 1} and any(k.startswith("hint.adapter") for k in trainer.stage_terms[0])
    assert all(p.requires_grad for p in student.parameters())  # stage 1 froze the layers after the guided one
    assert 0.0 <= results["accuracy"] <= 1.0 and (tmp_path / "distilled" / "model.pt").is_file()
