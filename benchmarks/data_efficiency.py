"""Soft targets from little labelled data (Hinton, Vinyals & Dean 2015, Table 5): a student distilled on a
small fraction of the training set against the same student trained alone on that fraction.

    python benchmarks/data_efficiency.py [--recipe recipes/fashion_mnist_fitnets.yaml] [--fraction 0.03]
        [--seeds 0 1 2] [--subset-epochs 50] [--teacher TEACHER.pt] [--out benchmarks/runs/data_efficiency]

1. The recipe on its whole training set (seed 0): the teacher, the baseline and the distilled student at 100%.
   ``--teacher`` loads a trained teacher instead and skips this run (and its 100% rows).
2. Per seed, the recipe on the first ``fraction`` of that training set, for ``--subset-epochs`` epochs (few
   images: more epochs for a comparable number of steps), the teacher loaded from step 1: "baseline" is the
   student trained on those labels alone, "distilled" the same student, same initial weights and batches,
   taught by the recipe's distillation stages on the same images. Hinton's teacher, like this one, saw the
   whole training set; only the student's data shrinks.

Every run goes through ``hintdistill``'s own pipeline and resumes when interrupted. Results:
``OUT/data_efficiency.json`` and a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import yaml

from hintdistill.config import recipe_from_dict
from hintdistill.data.classification import load_tensors
from hintdistill.engine.pipeline import run_recipe

ROOT = Path(__file__).resolve().parents[1]


def train_size(tree: dict) -> int:
    """Images the recipe trains on: its ``train_subset`` or the whole built-in training set."""
    data = tree["data"]
    full = len(load_tensors(data["name"], "train", data.get("data_dir"), data.get("download", False))[1])
    return min(data.get("train_subset") or full, full)


def subset_tree(tree: dict, images: int, epochs: int, teacher: str, seed: int, out: Path) -> dict:
    """The recipe on its first ``images`` training images for ``epochs`` epochs (every phase and stage,
    schedules scaled with them), the teacher loaded from ``teacher``."""
    tree = copy.deepcopy(tree)
    tree["data"]["train_subset"] = images
    tree["teacher"]["checkpoint"] = teacher
    stages = [tree["baseline"]] + tree["distill"]
    total = sum(s.get("epochs", 10) for s in tree["distill"])
    for stage in stages:
        own = stage.get("epochs", 10)
        # the distilled phase's stages keep their share of its epochs; the baseline gets them all
        stage["epochs"] = epochs if stage is tree["baseline"] else max(1, round(epochs * own / total))
        for term in stage.get("terms", []):
            if isinstance(term.get("weight"), dict):  # an annealed weight ends where its stage ends
                term["weight"]["epochs"] = stage["epochs"]
    return {**tree, "seed": seed, "name": f"{tree['name']}-subset-seed{seed}", "output_dir": str(out)}


def rows_of(summary: dict, label: str, seed: int) -> list[dict]:
    return [{**r, "row": f"{r['model']} ({label})", "seed": seed} for r in summary["rows"]]


def run(args) -> list[dict]:
    tree = yaml.safe_load(Path(args.recipe).read_text())
    if tree.get("teachers"):
        raise SystemExit("--recipe: this script loads one teacher; give a recipe with a single `teacher`")
    tree.setdefault("baseline", {})
    full = train_size(tree)
    images = max(1, round(args.fraction * full))
    out, rows, teacher = Path(args.out), [], args.teacher
    if teacher is None:
        whole = {**copy.deepcopy(tree), "seed": args.seeds[0], "output_dir": str(out / "full")}
        rows += rows_of(run_recipe(recipe_from_dict(whole)), "100%", args.seeds[0])
        teacher = str(out / "full" / "teacher" / "model.pt")
    label = f"{100 * images / full:.3g}%"
    for seed in args.seeds:
        sub = subset_tree(tree, images, args.subset_epochs, teacher, seed, out / f"subset_seed{seed}")
        rows += [r for r in rows_of(run_recipe(recipe_from_dict(sub)), label, seed) if r["model"] != "teacher"]
    return rows


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and sample standard deviation of test errors and accuracy per row, in first-seen order."""
    out = []
    for name in dict.fromkeys(r["row"] for r in rows):
        runs = [r for r in rows if r["row"] == name]
        errs, accs = [r["errors"] for r in runs], [r["accuracy"] for r in runs]
        out.append({"row": name, "params": runs[0]["params"], "seeds": [r["seed"] for r in runs],
                    "errors_mean": statistics.mean(errs), "errors_std": statistics.stdev(errs) if len(errs) > 1 else 0.0,
                    "accuracy_mean": statistics.mean(accs),
                    "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "errors": errs})
    return out


def markdown(results: list[dict], label: str) -> str:
    """The table, and how much of the accuracy lost by training on the fraction alone the soft targets recover."""
    lines = ["| row | params | test errors | accuracy | seeds | per seed |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['row']} | {r['params'] / 1e3:.0f}K | {r['errors_mean']:.1f} ± {r['errors_std']:.1f} | "
                     f"{100 * r['accuracy_mean']:.2f}% ± {100 * r['accuracy_std']:.2f} | {len(r['seeds'])} | "
                     f"{' / '.join(str(e) for e in r['errors'])} |")
    by = {r["row"]: r for r in results}
    full, alone, soft = by.get("baseline (100%)"), by.get(f"baseline ({label})"), by.get(f"distilled ({label})")
    if alone and soft:
        lines.append(f"\nOn {label} of the labels the soft targets save "
                     f"{alone['errors_mean'] - soft['errors_mean']:.1f} test errors")
        if full and alone["errors_mean"] > full["errors_mean"]:
            recovered = (alone["errors_mean"] - soft["errors_mean"]) / (alone["errors_mean"] - full["errors_mean"])
            lines[-1] += (f", {100 * recovered:.0f}% of the {alone['errors_mean'] - full['errors_mean']:.1f} lost by "
                          f"training on {label} instead of 100% (Hinton's Table 5: 3% alone 44.5%, with soft "
                          f"targets 57.0%, 100% 58.9% frame accuracy: 87% recovered)")
        lines[-1] += "."
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default=str(ROOT / "recipes/fashion_mnist_fitnets.yaml"))
    p.add_argument("--fraction", type=float, default=0.03, help="of the recipe's training images (Hinton: 3%%)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--subset-epochs", type=int, default=50, help="epochs of every phase on the fraction")
    p.add_argument("--teacher", help="a trained teacher's model.pt; skips the 100%% run")
    p.add_argument("--out", default=str(ROOT / "benchmarks/runs/data_efficiency"))
    a = p.parse_args(argv)
    if not 0 < a.fraction < 1:
        p.error(f"--fraction must be between 0 and 1 (exclusive), got {a.fraction}")
    t0 = time.time()
    results = aggregate(run(a))
    label = next(r["row"].split("(")[1][:-1] for r in results if r["row"].startswith("distilled (") and
                 "100%" not in r["row"])
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "data_efficiency.json").write_text(json.dumps(results, indent=2))
    print(f"\ntotal {(time.time() - t0) / 60:.1f} min; command: python {' '.join(sys.argv)}\n")
    print(markdown(results, label))
    return 0


if __name__ == "__main__":
    sys.exit(main())
