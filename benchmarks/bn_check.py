"""Does a trained detector depend on BatchNorm's batch statistics? Test mAP@0.5 three ways, nothing retrained.

    python benchmarks/bn_check.py RECIPE.yaml MODEL.pt [MODEL.pt ...] [--set key=value ...] [--batch 16]

For each model (a phase's ``model.pt``; the recipe gives the data set and its splits):
- ``deployed``: as saved, BatchNorm normalising with its running statistics (how the model ships);
- ``recomputed``: every BatchNorm's running statistics replaced by their average over one pass of the training
  split without augmentation (Wu & Johnson's "precise BN"); the weights unchanged;
- ``batch``: each test batch of ``--batch`` images normalised with its own statistics (BatchNorm as in
  training). A diagnostic only: a deployed detector sees one image at a time.

A student far better with ``batch`` than ``deployed`` and ``recomputed`` computes with its batches' own statistics,
which no fixed statistics reproduce (benchmarks/RESULTS.md, "BatchNorm: raccoon students that depend on batch
statistics"); training its last epochs with ``bn_frozen_epochs: N`` removes that. A detection run makes the
``batch`` test itself at the end of each phase and warns on a gap (``hintdistill.engine.batchnorm``).
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import DataLoader

from hintdistill.config import load_recipe
from hintdistill.data.voc import detection_collate
from hintdistill.detection.build import open_split
from hintdistill.detection.evaluate import evaluate_detector
from hintdistill.engine.batchnorm import recomputed_statistics, with_batch_statistics
from hintdistill.engine.checkpoint import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipe")
    ap.add_argument("models", nargs="+", help="phase model.pt files")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--batch", type=int, default=16, help="test batch size for the 'batch' column (default 16)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    recipe = load_recipe(a.recipe, a.overrides)
    d = recipe.data
    train = DataLoader(open_split(recipe, d.train_split), 8, shuffle=True,
                       generator=torch.Generator().manual_seed(0), collate_fn=detection_collate)
    test = DataLoader(open_split(recipe, d.test_split), a.batch, collate_fn=detection_collate)
    print("| model | deployed | recomputed on train | each test batch's own |\n|---|---|---|---|")
    for path in a.models:
        model = load_model(path)[0].eval()
        figures = [evaluate_detector(m, test)["map50"]
                   for m in (model, recomputed_statistics(model, train), with_batch_statistics(model))]
        print(f"| {path} | " + " | ".join(f"{x:.3f}" for x in figures) + " |", flush=True)


if __name__ == "__main__":
    main()
