"""recipes/demo.yaml (the README's first command): a FitNets hint stage, then KD, on a student 9x smaller than
its teacher that has a tenth of its labelled images; checked without training."""

from pathlib import Path

import torch

from hintdistill.config import load_recipe
from hintdistill.dark_knowledge import kd_temperature
from hintdistill.metrics import count_params
from hintdistill.models import build_model
from hintdistill.taps import Taps, feature_key
from hintdistill.viz import recipe_pairs

torch.set_num_threads(1)
DEMO = Path(__file__).resolve().parents[1] / "recipes/demo.yaml"


def test_demo_is_hint_then_kd_with_matching_layers():
    recipe = load_recipe(DEMO)
    hint, kd = recipe.distill
    assert (hint.name, hint.trainable, kd.name, kd.trainable) == ("hint", "up_to_guided", "kd", "all")
    assert [p.hint for p in recipe_pairs(recipe, recipe.task)] == ["features.stage2"]  # the report draws it
    assert kd_temperature(recipe)[0] == 4.0
    ramp = kd.terms[1].weight
    assert (ramp.start, ramp.end, ramp.epochs) == (4.0, 1.0, kd.epochs)  # lambda reaches 1 as the stage ends
    assert recipe.baseline.epochs == hint.epochs + kd.epochs  # the baseline trains as long as both stages
    # the students learn from 2,000 of the teacher's 20,000 images (Hinton et al.'s few-labels setting)
    assert recipe.teachers[0].train.train_subset is None and recipe.data.train_subset == 20000
    assert recipe.baseline.train_subset == hint.train_subset == kd.train_subset == 2000
    teacher = build_model("cnn", {**recipe.teachers[0].args, "num_classes": 10})
    student = build_model("cnn", {**recipe.student.args, "num_classes": 10})
    assert count_params(teacher) > 9 * count_params(student)
    x = torch.randn(2, 1, 28, 28)
    t = Taps(teacher, [hint.terms[0].hint], "teacher").run(x)[feature_key("features.stage2")]
    s = Taps(student, [hint.terms[0].guided], "student").run(x)[feature_key("features.stage2")]
    assert t.shape[2:] == s.shape[2:] == (7, 7)  # a 1x1 conv adapter is enough: same spatial size
