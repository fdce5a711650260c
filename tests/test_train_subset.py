"""A phase's ``train_subset``: the students train on the first N examples while the teacher trains on all."""

import copy
from pathlib import Path

import pytest
import torch

from hintdistill.build import build_data
from hintdistill.config import StageConfig, recipe_from_dict
from hintdistill.data.classification import TensorLoader
from hintdistill.data.task import TaskData
from hintdistill.engine.distributed import Dist
from hintdistill.engine.loop import Phase
from hintdistill.engine.stage import PhaseTrainer
from hintdistill.errors import ConfigError
from tests.conftest import TINY_RECIPE, needs_fashion


@needs_fashion
def test_a_phase_reads_the_first_n_examples_of_the_recipes_training_set():
    data = build_data(recipe_from_dict(copy.deepcopy(TINY_RECIPE)))  # data.train_subset 512
    whole, part = data.train_loader(64, [], 0, 0, 1), data.train_loader(64, [], 0, 0, 1, subset=100)
    assert whole.num_examples == 512 and part.num_examples == 100 and len(part) == 2  # 64 + 36
    assert torch.equal(part.images, whole.images[:100]) and torch.equal(part.labels, whole.labels[:100])
    with pytest.raises(ConfigError, match="train_subset: 600 is more than the 512 training examples"):
        data.train_loader(64, [], 0, 0, 1, subset=600)


def test_the_recipe_takes_train_subset_on_any_phase_and_refuses_zero():
    tree = copy.deepcopy(TINY_RECIPE)
    tree["baseline"] = {"epochs": 1, "train_subset": 128}
    tree["distill"][0]["train_subset"] = 128
    recipe = recipe_from_dict(tree)
    assert recipe.baseline.train_subset == 128 and recipe.distill[0].train_subset == 128
    assert recipe.teachers[0].train.train_subset is None
    tree["distill"][0]["train_subset"] = 0
    with pytest.raises(ConfigError, match="distill.0.train_subset"):
        recipe_from_dict(tree)


def test_a_stage_trains_on_its_subset_only(tmp_path, small_cnn):
    """The stage asks the task for its loader with the stage's subset (the dry-run batch for the whole set)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8, generator=g), torch.arange(32) % 10
    asked = []

    def train_loader(bs, aug, seed, rank, world, subset=None):
        asked.append(subset)
        return TensorLoader(x[:subset], y[:subset], bs, (0.5,), (0.5,), shuffle=True, seed=seed)

    data = TaskData("classification", train_loader, TensorLoader(x, y, 16, (0.5,), (0.5,)), 10, (1, 8, 8))
    stage = StageConfig(name="kd", epochs=1, batch_size=8, train_subset=20, terms=[{"type": "kd"}])
    student, teacher = small_cnn((4, 8), seed=0), small_cnn((8, 16), seed=1)
    trainer = PhaseTrainer(Phase("distilled", student, {"name": "cnn", "args": {}}, [stage], [teacher]),
                           data, tmp_path, torch.device("cpu"), Dist(), 0, log=lambda _: None)
    trainer.train()
    assert asked.count(20) == 1 and set(asked) == {None, 20}


BCCD = Path(__file__).resolve().parents[2] / "shared/data/bccd"


@pytest.mark.skipif(not BCCD.exists(), reason=f"BCCD not found at {BCCD}")
def test_a_detection_phase_reads_the_first_n_images(tmp_path):
    recipe = recipe_from_dict({
        "name": "subset", "task": "detection", "output_dir": str(tmp_path),
        "data": {"name": "voc", "data_dir": str(BCCD), "image_size": 64, "train_subset": 6, "workers": 0},
        "teacher": {"name": "yolo", "args": {"size": "n"}}, "student": {"name": "yolo", "args": {"size": "n"}},
        "distill": [{"name": "distill", "train_subset": 4, "terms": [{"type": "detection"}]}]})
    data = build_data(recipe)
    whole, part = data.train_loader(2, [], 0, 0, 1), data.train_loader(2, [], 0, 0, 1, subset=4)
    assert len(whole.dataset) == 6 and len(part.dataset) == 4
    assert part.dataset.records == whole.dataset.records[:4]
    with pytest.raises(ConfigError, match="train_subset: 7 is more than the 6 training examples"):
        data.train_loader(2, [], 0, 0, 1, subset=7)
