"""BCCD detection distillation benchmark: YOLO-m teacher, YOLO-n students, Chen et al. 2017's Table 4 ablation.

    python benchmarks/detection.py [--seeds 3] [--ablation-seeds K] [--rows ...] [--teacher-epochs N]
        [--student-epochs N] [--epochs-scale F] [--input-size S] [--batch-size B] [--eval-every E]
        [--threads T] [--merge]

The run recorded in benchmarks/RESULTS.md (about 2 h on 2 cores: the main rows and the ablations as two
1-thread processes side by side, each writing its rows into the same JSON):

    C="--input-size 192 --teacher-epochs 40 --student-epochs 30 --batch-size 8 --eval-every 5 --merge"
    python benchmarks/detection.py --rows teacher $C --threads 2      # first: the teacher both others load
    C="$C --threads 1"
    python benchmarks/detection.py --seeds 3 --rows teacher baseline kd kd_hint $C &
    python benchmarks/detection.py --seeds 1 --rows ablation/cls ablation/cls_w ablation/l2 ablation/l2_b \
        ablation/hints ablation/hints_a $C

Per epoch of 205 images at 192 px, batch 8, measured here: YOLO-m teacher ~40 s (2 threads, alone), YOLO-n
~12 s, n distilled from m ~21-28 s (the teacher's forward pass), the narrow hint teacher ~17 s (1 thread).
The recipe's own schedule (256 px, 60 teacher / 40 student epochs, 3 seeds, every row) is about 14 h here.

Rows (test split, 72 images), all built from recipes/bccd_yolo_distill.yaml:

- ``teacher``: YOLO-m, trained once (its recipe's teacher section) and loaded by every student run;
- ``baseline``: YOLO-n, detection loss alone;
- ``kd``: + Chen et al.'s output distillation (``chen_kd``: soft class CE with w_bg = 1.5, teacher-bounded
  regression, ν = 0.5); ``kd_hint``: + neck hints through 1x1 adaptation layers, γ = 0.5;
- ``pkd``: detection loss + Pearson-correlation feature KD on the neck levels (Cao et al. 2022: per-channel
  standardised maps, ½·MSE summed over P3-P5, weight 6; 1x1 adapters since m and n differ in channels);
- ``ablation/cls`` vs ``ablation/cls_w``: soft CE with w_bg = 1.0 vs 1.5 (no regression term, ν = 0);
- ``ablation/l2`` vs ``ablation/l2_b``: soft CE (w_bg 1.5) + unbounded ‖R_s − R_t‖² vs teacher-bounded L_b
  (``l2_b`` is the ``kd`` configuration, so it reuses those runs);
- ``ablation/hints`` vs ``ablation/hints_a``: detection loss + neck hints without (identity) vs with a 1x1
  adaptation layer. Identity needs equal channels, so these two use a narrow teacher of the student's
  width (YOLO depth 1.0, width 0.25: ``hint_teacher`` in the JSON), trained like the main teacher.

Every student row uses the same stage (epochs, optimizer, schedule, augmentation) and, for a given seed, the
same initial weights and data order; only the loss terms differ. Students run over ``--seeds`` seeds (mean,
std). Runs live in benchmarks/runs/detection/<scale>/<row>/seed<k> and resume where they stopped; rerunning
the command skips finished runs. Results: benchmarks/results/detection.json and a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

from hintdistill.build import build_data
from hintdistill.config import load_recipe, recipe_from_dict
from hintdistill.engine.checkpoint import load_model
from hintdistill.engine.pipeline import run_recipe
from hintdistill.terms.detection import ChenDetectionKD

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes/bccd_yolo_distill.yaml"
DATA_DIR = ROOT.parent / "shared/data/bccd"
HINT_TEACHER_ARGS = {"size": "l", "width": 0.25}  # neck channels equal to yolo n's: identity hints possible

DET = {"type": "detection"}
CHEN = {"type": "chen_kd", "mu": 0.5, "temperature": 1.0, "background_weight": 1.5, "margin": 0.0, "nu": 0.5}
HINTS = {"type": "neck_hints", "weight": 0.5, "adapter": "conv1x1", "distance": "l2"}
PKD = {"type": "pkd", "weight": 6.0}  # levels: the YOLO neck's P3-P5 (the term's default)

# row -> (teacher, terms); identical configurations share runs (see ALIASES)
STUDENT_ROWS: dict[str, tuple[str, list[dict]]] = {
    "baseline": ("teacher", [DET]),
    "kd": ("teacher", [DET, CHEN]),
    "kd_hint": ("teacher", [DET, CHEN, HINTS]),
    "pkd": ("teacher", [DET, PKD]),
    "ablation/cls": ("teacher", [DET, dict(CHEN, background_weight=1.0, nu=0.0)]),
    "ablation/cls_w": ("teacher", [DET, dict(CHEN, nu=0.0)]),
    "ablation/l2": ("teacher", [DET, dict(CHEN, regression="l2")]),
    "ablation/l2_b": ("teacher", [DET, CHEN]),
    "ablation/hints": ("hint_teacher", [DET, dict(HINTS, adapter="identity")]),
    "ablation/hints_a": ("hint_teacher", [DET, HINTS]),
}
ALIASES = {"ablation/l2_b": "kd"}
SUFFIX = {"batch_size": "bs", "eval_every": "ee"}  # overridden stage fields in the run folder's name: _bs8_ee5
ROWS = ["teacher", *STUDENT_ROWS]


CHEN_TABLE4 = {"cls": "57.4 -> 57.7", "l2": "54.6 -> 55.9", "hints": "56.9 -> 58.0"}  # PASCAL mAP, VGG16 -> Tucker


def run(tree: dict) -> dict:
    """run_recipe, or the summary of an identical finished run (no teacher re-evaluation, no latency rerun)."""
    recipe = recipe_from_dict(tree)
    folder = recipe.run_dir()
    same = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
    if (folder / "summary.json").is_file() and (folder / "recipe.yaml").is_file() \
            and (folder / "recipe.yaml").read_text() == same:
        print(f"finished earlier: {folder}", flush=True)
        return json.loads((folder / "summary.json").read_text())
    return run_recipe(recipe)


def with_per_class(row: dict, folder: Path, phase: str) -> dict:
    """The row with ``ap50_per_class``; runs finished before phases kept it are evaluated again from model.pt."""
    if "ap50_per_class" not in row:
        data = build_data(load_recipe(folder / "recipe.yaml"))
        model, _ = load_model(folder / phase / "model.pt")
        row = {**row, "ap50_per_class": data.evaluate(model, torch.device("cpu"))["ap50_per_class"]}
    return row


def scaled(epochs: int, scale: float, override: int | None) -> int:
    return override if override is not None else max(1, round(epochs * scale))


class Bench:
    """Recipe trees for every row at one scale, and the runs behind them."""

    def __init__(self, a: argparse.Namespace):
        self.base = yaml.safe_load(RECIPE.read_text())
        self.base["data"]["data_dir"] = str(DATA_DIR)  # the recipe's path is relative to the repository root
        self.size = a.input_size or self.base["data"]["image_size"]
        self.base["data"]["image_size"] = self.size
        if a.workers is not None:
            self.base["data"]["workers"] = a.workers
        self.overrides = {k: v for k, v in (("batch_size", a.batch_size), ("eval_every", a.eval_every))
                          if v is not None}
        subsets = ""
        for key in ("train_subset", "test_subset"):
            if getattr(a, key):
                self.base["data"][key] = getattr(a, key)
                subsets += f"_{key.split('_')[0]}{getattr(a, key)}"
        self.teacher_epochs = scaled(self.base["teacher"]["train"]["epochs"], a.epochs_scale, a.teacher_epochs)
        self.student_epochs = scaled(self.base["distill"][0]["epochs"], a.epochs_scale, a.student_epochs)
        extra = "".join(f"_{SUFFIX[k]}{v}" for k, v in self.overrides.items())
        self.out = Path(a.out) / f"s{self.size}_t{self.teacher_epochs}_e{self.student_epochs}{subsets}{extra}"
        self.teacher_ckpt: dict[str, str] = {}

    def with_epochs(self, stage: dict, epochs: int) -> dict:
        # a scaled-down run keeps the warm-up at most a fifth of its epochs
        stage = copy.deepcopy(stage)
        stage.update(self.overrides, epochs=epochs)
        schedule = stage.setdefault("schedule", {})
        schedule["warmup_epochs"] = min(schedule.get("warmup_epochs", 0), epochs // 5)
        return stage

    def tree(self, name: str, folder: Path, seed: int) -> dict:
        tree = copy.deepcopy(self.base)
        tree.update(name=name, seed=seed, output_dir=str(folder), baseline=None)
        return tree

    def teacher(self, which: str) -> tuple[dict, str]:
        """Train (or find) a teacher; returns its summary row and model.pt path."""
        folder = self.out / which
        tree = self.tree(f"bccd-{which}", folder, 0)
        tree["teacher"]["train"] = self.with_epochs(tree["teacher"]["train"], self.teacher_epochs)
        if which == "hint_teacher":
            tree["teacher"]["args"] = dict(HINT_TEACHER_ARGS)
        # the schema needs a distill stage: 0 epochs trains no student
        tree["distill"] = [{"name": "none", "epochs": 0, "terms": [DET]}]
        summary = run(tree)
        path = str(folder / "teacher" / "model.pt")
        self.teacher_ckpt[which] = path
        return with_per_class(next(r for r in summary["rows"] if r["model"] == "teacher"), folder, "teacher"), path

    def student(self, row: str, seed: int) -> dict:
        teacher, terms = STUDENT_ROWS[row]
        key = ALIASES.get(row, row).replace("/", "_")
        folder = self.out / key / f"seed{seed}"
        tree = self.tree(f"bccd-{key}-seed{seed}", folder, seed)
        tree["teacher"]["checkpoint"] = self.teacher_ckpt[teacher]
        if teacher == "hint_teacher":
            tree["teacher"]["args"] = dict(HINT_TEACHER_ARGS)
        stage = self.with_epochs(self.base["distill"][0], self.student_epochs)
        stage.update(name="train" if row == "baseline" else "distill", terms=copy.deepcopy(terms))
        tree["distill"] = [stage]
        summary = run(tree)
        row = with_per_class(next(r for r in summary["rows"] if r["model"] == "distilled"), folder, "distilled")
        return {**row, "seed": seed}


def supported(row: str) -> str | None:
    """Why a row cannot run with this checkout's schema, or None."""
    if row == "ablation/l2" and "regression" not in ChenDetectionKD.Config.model_fields:
        return "chen_kd has no 'regression' field in config.py yet (ChenKDTerm.regression: bounded | l2)"
    return None


def entry(name: str, runs: list[dict], epochs: int, size: int) -> dict:
    m50, m = [r["map50"] for r in runs], [r["map"] for r in runs]
    return {
        "name": name, "arch": runs[0]["arch"], "params": runs[0]["params"], "gflops": runs[0]["gflops"],
        "cpu_ms_per_image": statistics.median(r["cpu_ms_per_image"] for r in runs),
        "map50_mean": statistics.mean(m50), "map50_std": statistics.stdev(m50) if len(m50) > 1 else 0.0,
        "map_mean": statistics.mean(m), "map_std": statistics.stdev(m) if len(m) > 1 else 0.0,
        "ap50_per_class_mean": {c: statistics.mean(r["ap50_per_class"][c] for r in runs)
                                for c in runs[0]["ap50_per_class"]},
        "seeds": [r.get("seed", 0) for r in runs], "epochs": epochs, "input_size": size,
        "wall_s": statistics.mean(r["train_s"] for r in runs),
    }


def in_order(results: list[dict]) -> list[dict]:
    """Teacher rows first, then the student rows in ROWS order, whichever invocation wrote them."""
    order = ["teacher", "hint_teacher", *STUDENT_ROWS]
    return sorted(results, key=lambda e: order.index(e["name"]) if e["name"] in order else len(order))


def markdown(results: list[dict]) -> str:
    results = in_order(results)
    lines = ["| row | params | GFLOPs | mAP@0.5 | mAP@[.5:.95] | seeds | epochs | input | CPU ms/img | train wall |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['params'] / 1e6:.2f}M | {r['gflops']:.2f} | {r['map50_mean']:.4f} ± "
            f"{r['map50_std']:.4f} | {r['map_mean']:.4f} ± {r['map_std']:.4f} | {len(r['seeds'])} | {r['epochs']} | "
            f"{r['input_size']} | {r['cpu_ms_per_image']:.1f} | {r['wall_s'] / 60:.1f} min |")
    classes = list(results[0]["ap50_per_class_mean"]) if results else []
    lines += ["", "AP@0.5 per class (mean over seeds):", "",
              "| row | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    lines += [f"| {r['name']} | " + " | ".join(f"{r['ap50_per_class_mean'][c]:.4f}" for c in classes) + " |"
              for r in results]
    by = {r["name"]: r for r in results}
    t, b = by.get("teacher"), by.get("baseline")
    for row in ("kd", "kd_hint", "pkd"):
        s = by.get(row)
        if t and b and s and t["map50_mean"] != b["map50_mean"]:
            closed = (s["map50_mean"] - b["map50_mean"]) / (t["map50_mean"] - b["map50_mean"])
            lines.append(f"\n{row}: {100 * (s['map50_mean'] - b['map50_mean']):+.1f} mAP@0.5 points over the "
                         f"baseline, {100 * closed:.0f}% of the baseline-to-teacher gap.")
    for without, with_ in (("cls", "cls_w"), ("l2", "l2_b"), ("hints", "hints_a")):
        x, y = by.get(f"ablation/{without}"), by.get(f"ablation/{with_}")
        if x and y:
            lines.append(f"\nablation {without} -> {with_}: mAP@0.5 {x['map50_mean']:.4f} -> {y['map50_mean']:.4f} "
                         f"({100 * (y['map50_mean'] - x['map50_mean']):+.1f} points; Chen et al. Table 4 PASCAL: "
                         f"{CHEN_TABLE4[without]})")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3, help="student seeds 0..N-1 (default 3)")
    p.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS)
    p.add_argument("--epochs-scale", type=float, default=1.0, help="multiply the recipe's epochs")
    p.add_argument("--teacher-epochs", type=int, default=None, help="override (after --epochs-scale)")
    p.add_argument("--student-epochs", type=int, default=None, help="override (after --epochs-scale)")
    p.add_argument("--input-size", type=int, default=None, help="letterboxed input size (default: the recipe's)")
    p.add_argument("--train-subset", type=int, default=None, help="first N training images (smoke tests)")
    p.add_argument("--test-subset", type=int, default=None, help="first N test images (smoke tests)")
    p.add_argument("--ablation-seeds", type=int, default=None,
                   help="run the ablation rows for the first N seeds only (default: all --seeds)")
    p.add_argument("--merge", action="store_true",
                   help="keep the rows of --results that this invocation does not produce (e.g. ablations run "
                        "later with fewer seeds)")
    p.add_argument("--batch-size", type=int, default=None, help="override every stage's batch size")
    p.add_argument("--eval-every", type=int, default=None,
                   help="test every N epochs (the last epoch always; default: the recipe's)")
    p.add_argument("--workers", type=int, default=None, help="data loader processes (default: the recipe's)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: with 2 threads a training step was 3-7x slower while other "
                        "jobs shared the 2 cores)")
    p.add_argument("--results", default=str(ROOT / "benchmarks/results/detection.json"))
    p.add_argument("--out", default=str(ROOT / "benchmarks/runs/detection"))
    p.add_argument("--table-only", action="store_true", help="print the table of --results and exit (no training)")
    a = p.parse_args()
    if a.table_only:
        print(markdown(json.loads(Path(a.results).read_text())))
        return 0
    torch.set_num_threads(a.threads)
    t0 = time.time()
    bench = Bench(a)
    students = [r for r in a.rows if r != "teacher"]
    skipped = {r: why for r in students if (why := supported(r))}
    for row, why in skipped.items():
        print(f"skipping {row}: {why}", flush=True)
    students = [r for r in students if r not in skipped]
    ablation_seeds = a.seeds if a.ablation_seeds is None else a.ablation_seeds
    teachers = []
    if "teacher" in a.rows or any(STUDENT_ROWS[r][0] == "teacher" for r in students):
        t_row, _ = bench.teacher("teacher")
        if "teacher" in a.rows:
            teachers.append(entry("teacher", [t_row], bench.teacher_epochs, bench.size))
    if any(STUDENT_ROWS[r][0] == "hint_teacher" for r in students) and ablation_seeds > 0:
        h_row, _ = bench.teacher("hint_teacher")
        teachers.append(entry("hint_teacher", [h_row], bench.teacher_epochs, bench.size))
    dest = Path(a.results)
    dest.parent.mkdir(parents=True, exist_ok=True)
    produced = {e["name"] for e in teachers} | set(students)

    def kept() -> list[dict]:
        # --merge: the rows another invocation wrote (read again at every write: two may run side by side)
        if not (a.merge and dest.is_file()):
            return []
        return [e for e in json.loads(dest.read_text()) if e["name"] not in produced]

    runs: dict[str, list[dict]] = {}
    results = kept() + teachers
    for seed in range(a.seeds):
        for row in students:
            if row.startswith("ablation/") and seed >= ablation_seeds:
                continue
            runs.setdefault(row, []).append(bench.student(row, seed))
        print(json.dumps({k: [round(v["map50"], 4) for v in vs] for k, vs in runs.items()}), flush=True)
        # written after every seed, so a run cut short still leaves its finished rows behind
        results = kept() + teachers + [entry(row, runs[row], bench.student_epochs, bench.size) for row in students
                              if row in runs]
        dest.write_text(json.dumps(in_order(results), indent=2))
    print(f"\nmachine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
          f"total {(time.time() - t0) / 60:.1f} min; command: python {' '.join(sys.argv)}\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
