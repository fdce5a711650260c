"""The dry run before any training (issue 12): every stage's layer names, shapes and adapters are checked on one
batch of two images with fresh untrained models, so a typo in the last stage stops the run in a second, exit 2."""

import copy
import random

import pytest
import torch
from conftest import SGD, TINY_RECIPE, needs_fashion

from hintdistill.build import build_data
from hintdistill.cli import main
from hintdistill.config import recipe_from_dict
from hintdistill.data.classification import TensorLoader
from hintdistill.data.task import TaskData
from hintdistill.engine.dryrun import dry_run
from hintdistill.engine.pipeline import run_recipe
from hintdistill.errors import ConfigError, DataError

pytestmark = needs_fashion


def recipe(tmp_path, guided="features.stage2", hint="features.stage2", trainable="all"):
    """Teacher and baseline train first; the typo sits in the second distillation stage."""
    tree = copy.deepcopy(TINY_RECIPE)
    tree["output_dir"] = str(tmp_path / "run")
    tree["baseline"] = {"epochs": 1, "batch_size": 64, "optimizer": SGD}
    tree["distill"] = [tree["distill"][0],
                       {"name": "hints", "epochs": 1, "batch_size": 64, "optimizer": SGD, "trainable": trainable,
                        "terms": [{"type": "ce"}, {"type": "hint", "hint": hint, "guided": guided}]}]
    return tree


@pytest.mark.parametrize("side, layer, closest", [("guided", "features.stag2", "features.stage2"),
                                                  ("hint", "feature.stage1", "features.stage1")])
def test_layer_typo_in_the_last_stage_stops_before_the_teacher_trains(tmp_path, side, layer, closest):
    tree = recipe(tmp_path, **{side: layer})
    with pytest.raises(ConfigError) as err:
        run_recipe(recipe_from_dict(tree), log=lambda _: None)
    message = str(err.value)
    role = "student" if side == "guided" else "teacher"
    assert message.startswith("recipe distill[1] (stage 'hints'), term 'hint', student layer '")
    assert f"{role} layer '{layer}'" in message and f"has no module named '{layer}'" in message
    assert f"Closest names: {closest}" in message
    assert not any((tmp_path / "run").glob("*/checkpoint.pt"))  # nothing trained, not even the teacher

    assert main(["run", str(write(tmp_path, tree))]) == 2  # the command line: exit 2, one paragraph


def write(tmp_path, tree):
    import yaml

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_up_to_guided_and_adapter_problems_name_the_stage(tmp_path):
    # hint 8x7x7 vs guided 4x14x14: no adapter maps the spatial sizes
    tree = recipe(tmp_path, hint="features.stage2", guided="features.stage1")
    with pytest.raises(ConfigError) as err:
        run_recipe(recipe_from_dict(tree), log=lambda _: None)
    assert str(err.value).startswith("recipe distill[1] (stage 'hints'), term 'hint', student layer "
                                     "'features.stage1', teacher layer 'features.stage2': ")
    assert not any((tmp_path / "run").glob("*/checkpoint.pt"))


def test_dry_run_leaves_the_random_state_and_a_good_recipe_alone(tmp_path):
    rec = recipe_from_dict(recipe(tmp_path))
    data = build_data(rec)
    torch.manual_seed(7)
    random.seed(7)
    before, py_before = torch.get_rng_state(), random.getstate()
    dry_run(rec, data)
    assert torch.equal(torch.get_rng_state(), before) and random.getstate() == py_before


def test_non_finite_first_batch_is_a_data_error(tmp_path):
    x, y = torch.zeros(8, 1, 28, 28, dtype=torch.uint8), torch.arange(8) % 10
    data = TaskData("classification", lambda bs, aug, seed, rank, world: TensorLoader(
        x, y, bs, (0.0,), (0.0,)), None, 10, (1, 28, 28))  # mean and std 0: 0/0 is NaN
    with pytest.raises(DataError) as err:
        dry_run(recipe_from_dict(recipe(tmp_path)), data)
    assert str(err.value).startswith("the first training batch of data 'fashion_mnist' holds 1568 NaN values "
                                     "(of 1568 in a [2, 1, 28, 28] tensor)")
