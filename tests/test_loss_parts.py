"""Named loss parts: a term's parts reach the Distiller's losses and metrics.jsonl; the weighted total is
the same as before parts existed."""

import json

import pytest
import torch
from test_stage import tiny_data
from torch import nn

from hintdistill.config import StageConfig
from hintdistill.detection.loss import YoloLoss
from hintdistill.distiller import Distiller
from hintdistill.engine.distributed import Dist
from hintdistill.engine.loop import Phase
from hintdistill.engine.stage import PhaseTrainer
from hintdistill.errors import HintDistillError
from hintdistill.models import build_model
from hintdistill.terms import Term, TermConfig, register_term


@register_term("probe_parts")
class SquareAndAbs(Term):
    """A test term with two named parts: mean z² + 2 · mean |z| over the student's logits."""

    uses_teacher = False

    class Config(TermConfig):
        pass

    def forward(self, student, teachers, targets=None):
        z = student["logits"].float()
        square, absolute = z.pow(2).mean(), z.abs().mean()
        return {"loss": square + 2 * absolute, "square": square, "abs": absolute}


class Fixed(nn.Module):
    def __init__(self, row):
        super().__init__()
        self.z = nn.Parameter(torch.tensor([row]))

    def forward(self, x):
        return self.z.expand(x.shape[0], -1)


def test_dict_parts_are_logged_and_only_the_total_is_weighted():
    # z = [1, -3]: mean z² = (1 + 9) / 2 = 5, mean |z| = 2, total 5 + 2·2 = 9, weighted 0.5 · 9 = 4.5
    distiller = Distiller(Fixed([1.0, -3.0]), None, {"p": (SquareAndAbs(), 0.5)}, example_inputs=torch.zeros(1, 1))
    _, losses = distiller(torch.zeros(2, 1))
    assert {k: round(v.item(), 6) for k, v in losses.items()} == {"p": 9.0, "p.square": 5.0, "p.abs": 2.0,
                                                                  "loss": 4.5}


def test_a_dict_without_loss_is_an_error():
    class NoTotal(SquareAndAbs):
        def forward(self, student, teachers, targets=None):
            return {"square": student["logits"].sum()}

    distiller = Distiller(Fixed([1.0]), None, {"n": (NoTotal(), 1.0)}, example_inputs=torch.zeros(1, 1))
    with pytest.raises(HintDistillError, match="without 'loss'"):
        distiller(torch.zeros(1, 1))


def test_yolo_loss_parts_reach_the_losses_and_the_total_is_unchanged():
    torch.manual_seed(0)
    model = build_model("yolo", {"num_classes": 2, "size": "n", "width": 0.0625})
    images = torch.rand(2, 3, 64, 64)
    targets = [{"boxes": torch.tensor([[8.0, 10, 40, 38]]), "labels": torch.tensor([i])} for i in range(2)]
    term = YoloLoss.for_model(model)
    distiller = Distiller(model, None, {"detection": (term, 1.0)}, example_inputs=images)
    _, losses = distiller(images, targets)
    direct = term({f"head:{i}": m for i, m in enumerate(model(images))}, [], targets)
    parts = {k: losses[f"detection.{k}"].item() for k in ("box", "obj", "cls")}
    assert parts["box"] > 0 and parts["obj"] > 0 and parts["cls"] > 0
    assert losses["loss"].item() == direct.item()  # the same tensor math as a direct call, bit for bit
    # the parts are the weighted losses (box gain 0.05, obj 1, cls 0.5 already applied): they add up to the total
    assert direct.item() == pytest.approx(parts["box"] + parts["obj"] + parts["cls"], rel=1e-6)


def test_parts_are_written_to_metrics_jsonl(tmp_path, small_cnn):
    stages = [StageConfig(name="s", epochs=1, batch_size=16, terms=[{"type": "ce"}, {"type": "probe_parts",
                                                                                      "weight": 0.01}])]
    trainer = PhaseTrainer(Phase("baseline", small_cnn(), {"name": "cnn", "args": {}}, stages), tiny_data(),
                           tmp_path, torch.device("cpu"), Dist(), 0, log=lambda _: None)
    trainer.train()
    record = json.loads((tmp_path / "baseline" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"train/ce", "train/probe_parts", "train/probe_parts.square", "train/probe_parts.abs",
            "train/loss"} <= set(record)
    assert record["train/probe_parts"] == pytest.approx(record["train/probe_parts.square"]
                                                        + 2 * record["train/probe_parts.abs"], rel=1e-5)
