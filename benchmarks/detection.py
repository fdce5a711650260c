"""Detection distillation benchmark on three data sets: YOLO teacher, YOLO-n students, one set of recipe defaults.

    python benchmarks/detection.py [--datasets bccd raccoon synthetic] [--seeds 3] [--rows ...]
        [--teacher-size S] [--teacher-epochs N] [--student-epochs N] [--epochs-scale F] [--input-size S]
        [--batch-size B] [--eval-every E] [--ablation-seeds K] [--threads T] [--merge] [--table-only]
    python benchmarks/detection.py --pool FILE... [--suffix _e60_bnf5] [--results R]   # join one-seed runs

Each data set's recipe is recipes/<dataset>_yolo_distill.yaml; the three differ only in their data section,
so every row uses the same defaults everywhere (data-derived settings such as k-means anchors aside). The
command of each recorded run is in benchmarks/RESULTS.md.

Rows (test split of each data set), every student built from its recipe's distill stage:

- ``teacher``: trained once per data set and loaded by every student run;
- ``baseline``: YOLO-n, detection loss alone;
- ``chen_kd``: Chen et al. 2017 in one-stage form as the recipes set it (hard loss with mu, weighted soft class
  CE with w_bg = 1.5, nu = 0: no teacher-bounded regression, which hurt on raccoon; ``quality: iou``: the
  teacher's soft foreground scaled by the IoU of the student's box with the teacher's at each cell);
  ``chen_kd_hints``: + neck hints through 1x1 adaptation layers, gamma = 0.05 (mean over channels and
  locations); ``chen_kd_paper`` and ``chen_kd_paper_hints``: the paper's soft targets (``quality: none``) and
  gamma 0.5, as measured before; ``objectness_kd``: detection loss + Mehta & Ozturk's objectness-scaled KD in the
  paper's YOLOv2 forms (``units: paper``, the term's default until 2026-12-07);
  ``objectness_kd_iou``: the same with ``quality: iou`` (the objectness target scaled by the boxes' IoU, as chen_kd's);
  ``objectness_kd_nobox``: the same without its teacher-box part (``box_weight: 0``, as chen_kd's nu 0);
  ``objectness_kd_det``: the term's default, each teacher part the detection loss's own function and gain
  (``units: detection``: objectness level balance, class and CIoU box losses over the teacher's objectness mass);
  ``objectness_kd_det_nobox``: that without its teacher-box part (``box_weight: 0``);
  ``objectness_kd_hints``: ``objectness_kd`` + neck hints at gamma 0.5 (as measured);
- ``pkd``: detection loss + Pearson-correlation feature KD on the neck levels (Cao et al. 2022: per-channel
  standardised maps, ½·MSE summed over P3-P5, weight 6; 1x1 adapters where teacher and student channels differ);
- ablations after Chen et al.'s Table 4 (``--rows ablation/...``, BCCD's hint teacher for the hint pair; the paper's
  soft targets):
  ``ablation/cls`` vs ``ablation/cls_w`` (soft CE with w_bg 1.0 vs 1.5, no regression term),
  ``ablation/l2`` vs ``ablation/l2_b`` (unbounded L2 to the teacher vs the paper's teacher-bounded L2 on the
  head's box parameters; ``ablation/l2_b_iou``: the bounded term in the box loss's units), ``ablation/hints`` vs ``ablation/hints_a`` (neck hints without / with a 1x1 adapter;
  identity needs equal channels, so these use a narrow teacher of the student's width: ``hint_teacher``).

- Darknet rows (BCCD only; code, not run yet), whose data is BCCD converted to YOLO-txt (``data/convert.py``,
  into the scale's run folder) and read by the YOLO-txt reader: ``darknet_student`` (the yolov4-tiny-3l-style cfg
  recipes/cfg/yolov4-tiny-3l-bccd.cfg alone, detection loss), ``darknet_student_kd`` (that student distilled from
  the yolo teacher with chen_kd), ``darknet_teacher_kd`` (the Darknet-cfg teacher recipes/cfg/yolov4-quarter-bccd.cfg,
  trained once as ``darknet_teacher``, distilled into the yolo n student with chen_kd). Students take their
  teacher's anchors (the head layouts match), so chen_kd compares the heads anchor by anchor.

Every student row of a data set uses the same stage (epochs, optimizer, schedule, augmentation) and, for a
given seed, the same initial weights and data order; only the loss terms differ. Students run over ``--seeds``
seeds (mean, std, each seed's mAP@0.5, and for seed 0 and the teacher a bootstrap 90% interval of mAP@0.5 over the
test images: detection/bootstrap.py, 1000 resamples). Runs live in
benchmarks/runs/detection/<dataset>/<scale>/<row>/seed<k> and resume where they stopped; rerunning the
command skips finished runs. Results: benchmarks/results/detection.json (every row has ``dataset``) and a
Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

# The float rounding of a convolution depends on the instruction set its kernel uses, and over 30 epochs on 130
# images a last-bit difference grows into a different run: the raccoon baseline, seed 0, scores 0.465 with AVX2
# kernels and 0.516 with AVX-512 ones, same code and seed (benchmarks/RESULTS.md). So the runs pin PyTorch's and
# oneDNN's CPU kernels to AVX2, which every x86-64 machine of this kind has, and repeat on any of one CPU family
# (an AMD EPYC of family 26 gave another run than family 25's, same code: benchmarks/RESULTS.md);
# ``--isa native`` lets each library choose (faster where AVX-512 exists, not comparable across machines).
# Set before torch loads, which reads them once; only when run as the benchmark, so that importing this module (the
# tests do) changes nothing for the importing process and the processes it starts.
if __name__ == "__main__" and not any(opt in " ".join(sys.argv) for opt in ("--isa native", "--isa=native")):
    os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

import torch  # noqa: E402
import yaml  # noqa: E402

from hintdistill.build import build_data
from hintdistill.config import load_recipe, recipe_from_dict
from hintdistill.data.convert import voc_to_yolo
from hintdistill.detection.bootstrap import bootstrap_map50, image_matches
from hintdistill.engine.checkpoint import load_model
from hintdistill.engine.pipeline import run_recipe
from hintdistill.metrics import cpu_model

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("bccd", "raccoon", "synthetic")
HINT_TEACHER_ARGS = {"size": "l", "width": 0.25}  # neck channels equal to yolo n's: identity hints possible

DET = {"type": "detection"}
CHEN_PAPER = {"type": "chen_kd", "mu": 0.5, "temperature": 1.0, "background_weight": 1.5, "margin": 0.0, "nu": 0.0,
              "quality": "none"}
CHEN = dict(CHEN_PAPER, quality="iou")  # the teacher's soft foreground scaled by IoU(student box, teacher box)
# gamma 0.05: with the mean over channels and locations the hints then start near the detection loss's size
# (at 0.5 they started at 10x it on raccoon and cost 3-34 points on every seed; the rows measured at 0.5 keep it)
HINTS = {"type": "neck_hints", "weight": 0.05, "adapter": "conv1x1", "distance": "l2"}
HINTS_W05 = dict(HINTS, weight=0.5)
OKD = {"type": "objectness_kd", "lambda_d": 1.0, "fm_nms": True, "units": "paper"}  # the rows measured before
OKD_DET = dict(OKD, units="detection")  # the term's default since 2026-12-07
PKD = {"type": "pkd", "weight": 6.0}  # levels: the YOLO neck's P3-P5 (the term's default)

# row -> (teacher, terms); identical configurations share runs (see ALIASES)
STUDENT_ROWS: dict[str, tuple[str, list[dict]]] = {
    "baseline": ("teacher", [DET]),
    "chen_kd": ("teacher", [CHEN]),
    "objectness_kd": ("teacher", [DET, OKD]),
    "objectness_kd_iou": ("teacher", [DET, dict(OKD, quality="iou")]),
    "objectness_kd_nobox": ("teacher", [DET, dict(OKD, box_weight=0.0)]),
    "objectness_kd_det": ("teacher", [DET, OKD_DET]),
    "objectness_kd_det_nobox": ("teacher", [DET, dict(OKD_DET, box_weight=0.0)]),
    "chen_kd_hints": ("teacher", [CHEN, HINTS]),
    "chen_kd_paper": ("teacher", [CHEN_PAPER]),
    "chen_kd_paper_hints": ("teacher", [CHEN_PAPER, HINTS_W05]),
    "objectness_kd_hints": ("teacher", [DET, OKD, HINTS_W05]),  # as measured, before gamma 0.05
    "pkd": ("teacher", [DET, PKD]),
    "ablation/cls": ("teacher", [dict(CHEN_PAPER, background_weight=1.0, nu=0.0)]),
    "ablation/cls_w": ("teacher", [dict(CHEN_PAPER, nu=0.0)]),
    "ablation/l2": ("teacher", [dict(CHEN_PAPER, nu=0.5, regression="l2")]),
    "ablation/l2_b": ("teacher", [dict(CHEN_PAPER, nu=0.5, regression="bounded")]),
    "ablation/l2_b_iou": ("teacher", [dict(CHEN_PAPER, nu=0.5)]),  # the bounded term in the box loss's units
    "ablation/hints": ("hint_teacher", [DET, dict(HINTS_W05, adapter="identity")]),
    "ablation/hints_a": ("hint_teacher", [DET, HINTS_W05]),
}
# Darknet rows: BCCD only (the cfgs carry BCCD's anchors), data as YOLO-txt; a row's student model if not the recipe's
DARKNET_STUDENT = {"name": "darknet", "args": {"cfg": str(ROOT / "recipes/cfg/yolov4-tiny-3l-bccd.cfg")}}
DARKNET_TEACHER = {"name": "darknet", "args": {"cfg": str(ROOT / "recipes/cfg/yolov4-quarter-bccd.cfg")}}
STUDENT_ROWS.update({
    "darknet_student": ("teacher", [DET]),
    "darknet_student_kd": ("teacher", [CHEN_PAPER]),  # as measured (before quality="iou")
    "darknet_teacher_kd": ("darknet_teacher", [CHEN_PAPER]),
})
STUDENT_MODELS = {"darknet_student": DARKNET_STUDENT, "darknet_student_kd": DARKNET_STUDENT}
# A Darknet model (exp box decoding) trains with recipes/darknet_distill.yaml's optimizer and gradient clipping,
# whichever side it is on; the yolo n student of darknet_teacher_kd keeps the common stage, as chen_kd's does.
DARKNET_STAGE = ("optimizer", "grad_clip_norm")
DARKNET_RECIPE = yaml.safe_load((ROOT / "recipes/darknet_distill.yaml").read_text())
TEACHER_MODELS = {"hint_teacher": {"name": "yolo", "args": HINT_TEACHER_ARGS}, "darknet_teacher": DARKNET_TEACHER}
TEACHER_ROWS = ("teacher", *TEACHER_MODELS)  # every other row is a student
YOLO_TXT_ROWS = {"darknet_student", "darknet_student_kd", "darknet_teacher_kd", "darknet_teacher"}
BCCD_ONLY = YOLO_TXT_ROWS
ALIASES: dict[str, str] = {}
SUFFIX = {"batch_size": "bs", "eval_every": "ee"}  # overridden stage fields in the run folder's name: _bs8_ee5
ROWS = ["teacher", *STUDENT_ROWS]
DISTILLED_ROWS = [r for r in STUDENT_ROWS if r != "baseline" and not r.startswith(("ablation/", "darknet"))]


CHEN_TABLE4 = {"cls": "57.4 -> 57.7", "l2": "54.6 -> 55.9", "hints": "56.9 -> 58.0"}  # PASCAL mAP, VGG16 -> Tucker


def run(tree: dict) -> dict:
    """run_recipe, or the summary of an identical finished run (no teacher re-evaluation, no latency rerun)."""
    recipe = recipe_from_dict(tree)
    folder = recipe.run_dir()
    same = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
    if (folder / "summary.json").is_file() and (folder / "recipe.yaml").is_file() \
            and (folder / "recipe.yaml").read_text() == same:
        print(f"finished earlier: {folder}", flush=True)
        summary = json.loads((folder / "summary.json").read_text())
    else:
        summary = run_recipe(recipe)
    # each row says which CPU kernels its run used (runs older than that record: this process's, as before)
    kernels = summary.get("cpu_kernels", torch.backends.cpu.get_cpu_capability())
    cpu = summary.get("cpu", cpu_model())
    return {**summary, "rows": [{**r, "cpu_kernels": kernels, "cpu": cpu} for r in summary["rows"]]}


def with_per_class(row: dict, folder: Path, phase: str) -> dict:
    """The row with ``ap50_per_class``; runs finished before phases kept it are evaluated again from model.pt."""
    if "ap50_per_class" not in row:
        data = build_data(load_recipe(folder / "recipe.yaml"))
        model, _ = load_model(folder / phase / "model.pt")
        row = {**row, "ap50_per_class": data.evaluate(model, torch.device("cpu"))["ap50_per_class"]}
    return row


def with_interval(row: dict, folder: Path, phase: str) -> dict:
    """The row with ``map50_boot90``: a bootstrap 90% interval of mAP@0.5 over the test images (1000 resamples)."""
    if "map50_boot90" not in row:
        data = build_data(load_recipe(folder / "recipe.yaml"))
        model, _ = load_model(folder / phase / "model.pt")
        row = {**row, "map50_boot90": list(bootstrap_map50(image_matches(model, data.test_loader)))}
    return row


def scaled(epochs: int, scale: float, override: int | None) -> int:
    return override if override is not None else max(1, round(epochs * scale))


class Bench:
    """Recipe trees for every row at one scale, and the runs behind them."""

    def __init__(self, a: argparse.Namespace, dataset: str):
        self.dataset = dataset
        self.base = yaml.safe_load((ROOT / "recipes" / f"{dataset}_yolo_distill.yaml").read_text())
        # the recipe's data_dir is relative to the repository root
        self.base["data"]["data_dir"] = str((ROOT / self.base["data"]["data_dir"]).resolve())
        if a.teacher_size:
            self.base["teacher"]["args"]["size"] = a.teacher_size
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
        teacher = f"_{a.teacher_size}" if a.teacher_size else ""
        # the teachers' folder: settings that change only the students leave it out of its name
        self.teacher_out = (Path(a.out) / dataset /
                            f"s{self.size}_t{self.teacher_epochs}{teacher}_e{self.student_epochs}{subsets}{extra}")
        # students only (the teacher is shared): their last N epochs with BatchNorm in eval mode; the option, else
        # the recipe's distill stage, decides, and a non-zero N names the students' folder
        self.bn_frozen = a.bn_frozen_epochs
        frozen = a.bn_frozen_epochs if a.bn_frozen_epochs is not None else self.base["distill"][0].get(
            "bn_frozen_epochs", 0)
        self.out = self.teacher_out.with_name(self.teacher_out.name + (f"_bnf{frozen}" if frozen else ""))
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

    def yolo_txt_dir(self) -> Path:
        """Where this scale's YOLO-txt copy of the data set lives (written by ``ensure_yolo_txt``)."""
        return self.out / f"{self.dataset}_yolo_txt"

    def ensure_yolo_txt(self) -> None:
        """Convert the VOC folder to YOLO-txt once, so the Darknet rows read it through the YOLO-txt reader."""
        if not self.yolo_txt_dir().is_dir():
            voc_to_yolo(self.base["data"]["data_dir"], self.yolo_txt_dir())

    def with_data(self, tree: dict, row: str) -> dict:
        if row in YOLO_TXT_ROWS:
            tree["data"].update(name="yolo", data_dir=str(self.yolo_txt_dir()))
        return tree

    def teacher_tree(self, which: str) -> dict:
        """The recipe tree that trains teacher ``which`` (and no student)."""
        tree = self.tree(f"{self.dataset}-{which}", self.teacher_out / which, 0)
        tree["teacher"]["train"] = self.with_epochs(tree["teacher"]["train"], self.teacher_epochs)
        if which in TEACHER_MODELS:
            tree["teacher"].update(copy.deepcopy(TEACHER_MODELS[which]))
        if tree["teacher"]["name"] == "darknet":
            tree["teacher"]["train"].update(darknet_stage(DARKNET_RECIPE["teacher"]["train"]))
        # the schema needs a distill stage: 0 epochs trains no student
        tree["distill"] = [{"name": "none", "epochs": 0, "terms": [DET]}]
        return self.with_data(tree, which)

    def teacher(self, which: str) -> tuple[dict, str]:
        """Train (or find) a teacher; returns its summary row and model.pt path."""
        folder = self.teacher_out / which
        if which in YOLO_TXT_ROWS:
            self.ensure_yolo_txt()
        summary = run(self.teacher_tree(which))
        path = str(folder / "teacher" / "model.pt")
        self.teacher_ckpt[which] = path
        row = with_per_class(next(r for r in summary["rows"] if r["model"] == "teacher"), folder, "teacher")
        return self.with_bflops(with_interval(row, folder, "teacher"), folder / "teacher"), path

    def with_bflops(self, row: dict, phase: Path) -> dict:
        """A Darknet model's row with Darknet's own operation count, as its printout and `hintdistill inspect`
        give it (2 x weights x output pixels per conv)."""
        if row["arch"] != "darknet":
            return row
        model, _ = load_model(phase / "model.pt")
        return {**row, "darknet_bflops": model.darknet_table(self.size, self.size)[1]}

    def student_tree(self, row: str, seed: int) -> dict:
        """The recipe tree of one student row and seed (its teacher loaded from the teacher's model.pt)."""
        teacher, terms = STUDENT_ROWS[row]
        key = ALIASES.get(row, row).replace("/", "_")
        tree = self.tree(f"{self.dataset}-{key}-seed{seed}", self.out / key / f"seed{seed}", seed)
        if teacher in TEACHER_MODELS:
            tree["teacher"].update(copy.deepcopy(TEACHER_MODELS[teacher]))
        tree["teacher"]["checkpoint"] = self.teacher_ckpt.get(teacher, str(self.teacher_out / teacher / "teacher/model.pt"))
        if row in STUDENT_MODELS:
            tree["student"] = copy.deepcopy(STUDENT_MODELS[row])
        stage = self.with_epochs(self.base["distill"][0], self.student_epochs)
        stage.update(name="train" if STUDENT_ROWS[row][1] == [DET] else "distill", terms=copy.deepcopy(terms))
        if self.bn_frozen is not None:
            stage["bn_frozen_epochs"] = self.bn_frozen
        if tree["student"]["name"] == "darknet":
            stage.update(darknet_stage(DARKNET_RECIPE["distill"][0]))
        tree["distill"] = [stage]
        return self.with_data(tree, row)

    def student(self, row: str, seed: int) -> dict:
        if row in YOLO_TXT_ROWS:
            self.ensure_yolo_txt()
        tree = self.student_tree(row, seed)
        summary = run(tree)
        folder = Path(tree["output_dir"])
        row = with_per_class(next(r for r in summary["rows"] if r["model"] == "distilled"), folder, "distilled")
        if seed == 0:
            row = with_interval(row, folder, "distilled")
        return {**self.with_bflops(row, folder / "distilled"), "seed": seed}


def darknet_stage(stage: dict) -> dict:
    """The DARKNET_STAGE settings of one stage of recipes/darknet_distill.yaml."""
    return {k: copy.deepcopy(stage[k]) for k in DARKNET_STAGE}


def entry(name: str, runs: list[dict], epochs: int, size: int, dataset: str) -> dict:
    m50, m = [r["map50"] for r in runs], [r["map"] for r in runs]
    return {
        "dataset": dataset, "name": name, "arch": runs[0]["arch"], "params": runs[0]["params"], "gflops": runs[0]["gflops"],
        "cpu_ms_per_image": statistics.median(r["cpu_ms_per_image"] for r in runs),
        "map50_mean": statistics.mean(m50), "map50_std": statistics.stdev(m50) if len(m50) > 1 else 0.0,
        "map_mean": statistics.mean(m), "map_std": statistics.stdev(m) if len(m) > 1 else 0.0,
        "ap50_per_class_mean": {c: statistics.mean(r["ap50_per_class"][c] for r in runs)
                                for c in runs[0]["ap50_per_class"]},
        "seeds": [r.get("seed", 0) for r in runs], "map50_per_seed": m50, "epochs": epochs, "input_size": size,
        **({"map50_boot90_seed0": runs[0]["map50_boot90"]} if "map50_boot90" in runs[0] else {}),
        "wall_s": statistics.mean(r["train_s"] for r in runs),
        "cpu_kernels": ", ".join(sorted({r["cpu_kernels"] for r in runs})),  # what the float rounding depends on
        "cpu": ", ".join(sorted({r.get("cpu", "") for r in runs})),  # and the CPU family (RESULTS.md)
        **({"darknet_bflops": runs[0]["darknet_bflops"]} if "darknet_bflops" in runs[0] else {}),
    }


def pooled(recorded: dict | None, new: dict, first_seed: int) -> dict:
    """``new`` (seeds >= first_seed) pooled with the seeds below first_seed of the ``recorded`` row: the per-seed
    mAP@0.5 lists joined, means weighted by seed count, the mAP@[.5:.95] std from the two groups' means and stds
    (exact); teacher rows and rows without earlier seeds come back as they are."""
    if not recorded or new["name"] == "teacher" or "seeds" not in recorded:
        return new
    old = [s for s in recorded["seeds"] if s < first_seed]
    if old != recorded["seeds"]:
        raise SystemExit(f"--first-seed {first_seed}: the recorded {new['name']} row has seeds {recorded['seeds']}; "
                         f"pooling needs every recorded seed below {first_seed}")
    n1, n2 = len(old), len(new["seeds"])
    mean = lambda key: (n1 * recorded[key] + n2 * new[key]) / (n1 + n2)  # noqa: E731
    m50 = recorded["map50_per_seed"] + new["map50_per_seed"]
    ss = sum((n - 1) * e["map_std"] ** 2 + n * (e["map_mean"] - mean("map_mean")) ** 2
             for n, e in ((n1, recorded), (n2, new)))
    return {**new, "seeds": old + new["seeds"], "map50_per_seed": m50, "map50_mean": statistics.mean(m50),
            "map50_std": statistics.stdev(m50), "map_mean": mean("map_mean"), "map_std": (ss / (n1 + n2 - 1)) ** 0.5,
            "ap50_per_class_mean": {c: (n1 * recorded["ap50_per_class_mean"][c] + n2 * v) / (n1 + n2)
                                    for c, v in new["ap50_per_class_mean"].items()},
            "map50_boot90_seed0": recorded.get("map50_boot90_seed0"), "wall_s": mean("wall_s")}


def pool_files(paths: list[str], suffix: str = "") -> list[dict]:
    """The student rows of results files written by separate runs (``--first-seed K --seeds K+1`` each, e.g. two
    processes side by side), joined per (data set, row) over their seeds with ``pooled`` and renamed
    ``<row><suffix>``; teacher rows are left out. A seed found twice is an error."""
    groups: dict[tuple, list[dict]] = {}
    for path in paths:
        for e in json.loads(Path(path).read_text()):
            if e["name"] not in TEACHER_ROWS:  # darknet_teacher_kd is a student row
                groups.setdefault((e.get("dataset", "bccd"), e["name"]), []).append(e)
    rows = []
    for (_, name), entries in groups.items():
        entries.sort(key=lambda e: min(e["seeds"]))
        row = entries[0]
        for e in entries[1:]:
            row = pooled(row, e, min(e["seeds"]))
        rows.append({**row, "name": name + suffix})
    return rows


def merged(recorded: list[dict], rows: list[dict], produced: set, first_seed: int = 0,
           at_start: list[dict] | None = None) -> list[dict]:
    """What the results file holds after a write: the recorded rows this invocation does not produce, and its own
    rows (``produced``: (dataset, name) pairs); with ``first_seed`` its rows pooled with the seeds below it of
    the rows recorded when it started (``at_start``, default ``recorded``: the file is rewritten after every
    run, so its own rows must not be pooled again), and a recorded row that has no new seed yet kept as it is."""
    key = lambda e: (e.get("dataset", "bccd"), e["name"])  # noqa: E731
    kept = [e for e in recorded if key(e) not in produced]
    mine = [e for e in rows if key(e) in produced]
    if first_seed:
        by_key = {key(e): e for e in (recorded if at_start is None else at_start)}
        mine = [pooled(by_key.get(key(e)), e, first_seed) for e in mine]
        have = {key(e) for e in mine}
        kept += [e for e in recorded if key(e) in produced and key(e) not in have]
    return in_order(kept + mine)


def in_order(results: list[dict]) -> list[dict]:
    """By data set, then teacher rows first and the student rows in ROWS order, whichever invocation wrote them."""
    order = [*TEACHER_ROWS, *STUDENT_ROWS]

    def key(e: dict) -> tuple:
        ds = e.get("dataset", "bccd")
        return (DATASETS.index(ds) if ds in DATASETS else len(DATASETS), ds,
                order.index(e["name"]) if e["name"] in order else len(order))
    return sorted(results, key=key)


def markdown(results: list[dict]) -> str:
    """One table per data set."""
    results = in_order(results)
    datasets = list(dict.fromkeys(r.get("dataset", "bccd") for r in results))
    return "\n\n".join(f"### {ds}\n\n" + dataset_markdown([r for r in results if r.get("dataset", "bccd") == ds])
                        for ds in datasets)


# Student's t, 95% one-sided (a two-sided 90% interval), by degrees of freedom
T_90 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 6: 1.943, 7: 1.895, 8: 1.860, 9: 1.833, 10: 1.812,
        11: 1.796, 12: 1.782, 13: 1.771, 14: 1.761, 15: 1.753, 16: 1.746, 17: 1.740, 18: 1.734, 19: 1.729,
        20: 1.725, 25: 1.708, 30: 1.697}  # the normal's 1.645 past 30; a missing df takes the next one below


def t_90(df: int) -> float:
    """Student's t for a two-sided 90% interval with ``df`` degrees of freedom (the table's entry at or below)."""
    if df > 30:
        return 1.645
    return T_90[max(k for k in T_90 if k <= df)]


def paired(row: dict, baseline: dict) -> str:
    """The per-seed differences against the same seed's baseline (same initial weights and batches): how many
    seeds gain, their mean and a 90% t-interval of the mean difference (seeds as independent draws)."""
    base = dict(zip(baseline.get("seeds", []), baseline.get("map50_per_seed", []), strict=False))
    diffs = [100 * (v - base[k]) for k, v in zip(row.get("seeds", []), row.get("map50_per_seed", []), strict=False)
             if k in base]
    if len(diffs) < 2:
        return ""
    mean, half = statistics.mean(diffs), t_90(len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
    return (f" Paired by seed: {' / '.join(f'{d:+.1f}' for d in diffs)} points, better on "
            f"{sum(d > 0 for d in diffs)} of {len(diffs)} seeds, mean {mean:+.1f} (90% interval {mean - half:+.1f} "
            f"to {mean + half:+.1f}).")


def dataset_markdown(results: list[dict]) -> str:
    lines = ["| row | params | GFLOPs | mAP@0.5 | per seed | seed 0: 90% bootstrap | mAP@[.5:.95] | seeds | epochs | "
             "input | CPU ms/img | train wall |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        per_seed = " / ".join(f"{v:.3f}" for v in r.get("map50_per_seed", []))
        boot = "{:.3f}-{:.3f}".format(*r["map50_boot90_seed0"]) if "map50_boot90_seed0" in r else "-"
        lines.append(
            f"| {r['name']} | {r['params'] / 1e6:.2f}M | {r['gflops']:.2f} | {r['map50_mean']:.4f} ± "
            f"{r['map50_std']:.4f} | {per_seed} | {boot} | {r['map_mean']:.4f} ± {r['map_std']:.4f} | "
            f"{len(r['seeds'])} | {r['epochs']} | {r['input_size']} | {r['cpu_ms_per_image']:.1f} | "
            f"{r['wall_s'] / 60:.1f} min |")
    classes = list(results[0]["ap50_per_class_mean"]) if results else []
    lines += ["", "AP@0.5 per class (mean over seeds):", "",
              "| row | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    lines += [f"| {r['name']} | " + " | ".join(f"{r['ap50_per_class_mean'][c]:.4f}" for c in classes) + " |"
              for r in results]
    darknet = [f"{r['name']} {r['darknet_bflops']:.2f}" for r in results if "darknet_bflops" in r]
    if darknet:
        lines += ["", f"Darknet BFLOPs at {results[0]['input_size']} px (Darknet's own count): {', '.join(darknet)}."]
    by = {r["name"]: r for r in results}
    t = by.get("teacher")
    for name, s in by.items():  # a variant row (<row>_bnf5, <row>_e60_bnf5) against the baseline of its variant
        suffix = next((name[len(row):] for row in sorted(DISTILLED_ROWS, key=len, reverse=True)
                       if name.startswith(row) and (name == row or name[len(row)] == "_")), None)
        b = by.get(f"baseline{suffix}") if suffix is not None else None
        if t and b and t["map50_mean"] != b["map50_mean"]:
            closed = (s["map50_mean"] - b["map50_mean"]) / (t["map50_mean"] - b["map50_mean"])
            lines.append(f"\n{name}: {100 * (s['map50_mean'] - b['map50_mean']):+.1f} mAP@0.5 points over "
                         f"baseline{suffix}, {100 * closed:.0f}% of the baseline-to-teacher gap.{paired(s, b)}")
    for without, with_ in (("cls", "cls_w"), ("l2", "l2_b"), ("hints", "hints_a")):
        x, y = by.get(f"ablation/{without}"), by.get(f"ablation/{with_}")
        if x and y:
            lines.append(f"\nablation {without} -> {with_}: mAP@0.5 {x['map50_mean']:.4f} -> {y['map50_mean']:.4f} "
                         f"({100 * (y['map50_mean'] - x['map50_mean']):+.1f} points; Chen et al. Table 4 PASCAL: "
                         f"{CHEN_TABLE4[without]})")
    return "\n".join(lines)


def run_dataset(a: argparse.Namespace, dataset: str, results: list[dict], write) -> list[dict]:
    """Every requested row of one data set; ``write(results)`` is called after every seed."""
    bench = Bench(a, dataset)
    students = [r for r in a.rows if r != "teacher" and (dataset == "bccd" or r not in BCCD_ONLY)]
    ablation_seeds = a.seeds if a.ablation_seeds is None else a.ablation_seeds
    teachers = []
    if "teacher" in a.rows or any(STUDENT_ROWS[r][0] == "teacher" for r in students):
        t_row, _ = bench.teacher("teacher")
        if "teacher" in a.rows:
            teachers.append(entry("teacher", [t_row], bench.teacher_epochs, bench.size, dataset))
    if any(STUDENT_ROWS[r][0] == "hint_teacher" for r in students) and ablation_seeds > 0:
        h_row, _ = bench.teacher("hint_teacher")
        teachers.append(entry("hint_teacher", [h_row], bench.teacher_epochs, bench.size, dataset))
    if any(STUDENT_ROWS[r][0] == "darknet_teacher" for r in students):
        d_row, _ = bench.teacher("darknet_teacher")
        teachers.append(entry("darknet_teacher", [d_row], bench.teacher_epochs, bench.size, dataset))
    produced = {e["name"] for e in teachers} | set(students)
    others = [e for e in results if (e.get("dataset", "bccd"), e["name"]) not in {(dataset, n) for n in produced}]
    runs: dict[str, list[dict]] = {}
    current = others + teachers
    write(current, {(dataset, n) for n in produced})
    for seed in range(a.first_seed, a.seeds):
        for row in students:
            if row.startswith("ablation/") and seed >= ablation_seeds:
                continue
            runs.setdefault(row, []).append(bench.student(row, seed))
            current = others + teachers + [entry(r, runs[r], bench.student_epochs, bench.size, dataset)
                                           for r in students if r in runs]
            write(current, {(dataset, n) for n in produced})  # after every run: a cut leaves its rows behind
        print(json.dumps({k: [round(v["map50"], 4) for v in vs] for k, vs in runs.items()}), flush=True)
    return current


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--seeds", type=int, default=3, help="student seeds 0..N-1 (default 3)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="run seeds K..N-1 only; with --merge a row's recorded seeds below K are kept and pooled "
                        "with the new ones (more seeds for a recorded table without rerunning it)")
    p.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS)
    p.add_argument("--epochs-scale", type=float, default=1.0, help="multiply the recipe's epochs")
    p.add_argument("--teacher-epochs", type=int, default=None, help="override (after --epochs-scale)")
    p.add_argument("--student-epochs", type=int, default=None, help="override (after --epochs-scale)")
    p.add_argument("--teacher-size", default=None, help="override the recipes' teacher size (yolo n/s/m/l)")
    p.add_argument("--input-size", type=int, default=None, help="letterboxed input size (default: the recipe's)")
    p.add_argument("--train-subset", type=int, default=None, help="first N training images (smoke tests)")
    p.add_argument("--test-subset", type=int, default=None, help="first N test images (smoke tests)")
    p.add_argument("--ablation-seeds", type=int, default=None,
                   help="run the ablation rows for the first N seeds only (default: all --seeds)")
    p.add_argument("--merge", action="store_true",
                   help="keep the rows of --results that this invocation does not produce (e.g. another data "
                        "set, or ablations run later with fewer seeds)")
    p.add_argument("--batch-size", type=int, default=None, help="override every stage's batch size")
    p.add_argument("--eval-every", type=int, default=None,
                   help="test every N epochs (the last epoch always; default: the recipe's)")
    p.add_argument("--workers", type=int, default=None, help="data loader processes (default: the recipe's)")
    p.add_argument("--bn-frozen-epochs", type=int, default=None,
                   help="students train their last N epochs with BatchNorm in eval mode (default: the recipe's); "
                        "the students' run folder gets _bnfN; the teachers are the same as without the option")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: with 2 threads a training step was 3-7x slower while other "
                        "jobs shared the 2 cores)")
    p.add_argument("--results", default=str(ROOT / "benchmarks/results/detection.json"))
    p.add_argument("--out", default=str(ROOT / "benchmarks/runs/detection"))
    p.add_argument("--isa", choices=["avx2", "native"], default="avx2",
                   help="CPU kernels: avx2 (default; runs repeat on every x86-64 machine of this kind) or native")
    p.add_argument("--table-only", action="store_true", help="print the table of --results and exit (no training)")
    p.add_argument("--pool", nargs="+", metavar="FILE", default=None,
                   help="no training: join the student rows of these results files (one seed each, from separate "
                        "runs) per row, rename them <row><--suffix>, write them into --results and print the table")
    p.add_argument("--suffix", default="", help="with --pool: appended to each row's name (e.g. _e60_bnf5)")
    a = p.parse_args()
    dest = Path(a.results)
    if a.table_only:
        print(markdown(json.loads(dest.read_text())))
        return 0
    if a.pool:
        rows = pool_files(a.pool, a.suffix)
        recorded = json.loads(dest.read_text()) if dest.is_file() else []
        dest.write_text(json.dumps(merged(recorded, rows, {(e.get("dataset", "bccd"), e["name"]) for e in rows}), indent=2) + "\n")
        print(markdown(json.loads(dest.read_text())))
        return 0
    torch.set_num_threads(a.threads)
    t0 = time.time()
    dest.parent.mkdir(parents=True, exist_ok=True)

    results = json.loads(dest.read_text()) if a.merge and dest.is_file() else []
    at_start = list(results)  # what --first-seed pools with

    def write(rows: list[dict], produced: set) -> None:
        # --merge: keep the rows another invocation wrote (read again at every write: two may run side by side)
        recorded = json.loads(dest.read_text()) if a.merge and dest.is_file() else []
        dest.write_text(json.dumps(merged(recorded, rows, produced, a.first_seed, at_start), indent=2) + "\n")

    for dataset in a.datasets:
        results = run_dataset(a, dataset, results, write)
    print(f"\nmachine: {platform.machine()}, {torch.backends.cpu.get_cpu_capability()} kernels, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}; "
          f"total {(time.time() - t0) / 60:.1f} min; command: python {' '.join(sys.argv)}\n")
    print(markdown(json.loads(dest.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
