"""Shared fixtures: tiny models and recipes that keep the classification suite fast on 2 shared cores."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch

from hintdistill.data.classification import DEBIAN_DIRS

# tiny tensors: more threads than one only fight the other jobs on a 2-core machine
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


def load_script(path: str):
    """A benchmark or script (not part of the package) as a module, by its path from the repository root."""
    spec = importlib.util.spec_from_file_location(f"script_{Path(path).stem}", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FASHION_DIR = Path(DEBIAN_DIRS["fashion_mnist"])
HAVE_FASHION = (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file()
needs_fashion = pytest.mark.skipif(not HAVE_FASHION, reason=f"Fashion-MNIST not installed in {FASHION_DIR} "
                                   "(apt-get install dataset-fashion-mnist)")

SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4}

TINY_RECIPE = {
    "name": "tiny",
    "seed": 0,
    "device": "cpu",
    "data": {"name": "fashion_mnist", "train_subset": 512, "test_subset": 256, "workers": 0},
    "teacher": {"name": "cnn", "args": {"widths": [8, 16], "depth": 1, "first_stride": 2},
                "train": {"epochs": 1, "batch_size": 64, "optimizer": SGD}},
    "student": {"name": "cnn", "args": {"widths": [4, 8], "depth": 1, "first_stride": 2}},
    "distill": [{"name": "kd", "epochs": 2, "batch_size": 64, "optimizer": SGD,
                 "terms": [{"type": "ce", "weight": 0.1}, {"type": "kd", "temperature": 4.0, "weight": 0.9}]}],
    "eval_batch_size": 256,
}


@pytest.fixture
def tiny_recipe(tmp_path) -> dict:
    """A whole recipe (teacher 1 epoch, distilled student 2 epochs) on 512 Fashion-MNIST images."""
    tree = copy.deepcopy(TINY_RECIPE)
    tree["output_dir"] = str(tmp_path / "run")
    return tree


@pytest.fixture
def small_cnn():
    """``small_cnn(widths, num_classes, seed, **args)``: a seeded ``cnn`` of depth 1 from the registry."""
    from hintdistill.models import build_model

    def make(widths=(4, 8), num_classes: int = 10, seed: int = 0, **kw) -> torch.nn.Module:
        torch.manual_seed(seed)
        return build_model("cnn", {"widths": list(widths), "depth": 1, "num_classes": num_classes, **kw})

    return make
