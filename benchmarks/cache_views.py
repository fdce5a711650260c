"""Cached augmentation views (``speed.cache_views``) against a fresh augmentation every epoch (issue 11).

    OMP_NUM_THREADS=1 python benchmarks/cache_views.py [--out-dir benchmarks/runs/cache_views] [--seeds 6]

The demo recipe (recipes/demo.yaml: a CNN teacher on 20k Fashion-MNIST images, a 9x smaller student on 2,000
of them, a hint stage then soft targets) with its KD stage trained three ways, on one shared teacher, for each
seed: ``plain`` (the recipe as it is, no augmentation: its teacher logits are cached), ``fresh`` (jitter, drawn
anew every epoch: the cache is refused and the teacher runs every step) and ``views4`` (jitter from 4 stored
views per sample, ``speed.cache_views: 4``: cached after 4 epochs). Prints each arm's test errors and KD-stage
seconds; writes benchmarks/results/cache_views.json. Resumable: finished runs are skipped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from hintdistill.metrics import cpu_model

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"plain": [], "fresh": ["--set", "distill.1.augment=[jitter]"],
        "views4": ["--set", "distill.1.augment=[jitter]", "--set", "speed.cache_views=4"]}


def hintdistill(out: Path, *args: str) -> None:
    """One ``hintdistill run`` of the demo recipe into ``out`` (skipped when it finished before)."""
    if (out / "summary.json").is_file():
        return
    cmd = [sys.executable, "-m", "hintdistill.cli", "run", str(ROOT / "recipes/demo.yaml"), "--output-dir", str(out),
           *args]
    with open(out.with_suffix(".log"), "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)


def kd_stage(run: Path) -> tuple[int, float]:
    """The distilled student's test errors after the KD stage, and the stage's training seconds."""
    records = [json.loads(line) for line in (run / "distilled" / "metrics.jsonl").read_text().splitlines()]
    kd = [r for r in records if r["stage"] == "kd"]
    return int(kd[-1]["test/errors"]), sum(r["epoch_s"] for r in kd)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks/runs/cache_views"))
    p.add_argument("--seeds", type=int, default=6)
    p.add_argument("--json", default=str(ROOT / "benchmarks/results/cache_views.json"))
    args = p.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    teacher = out / "teacher"
    hintdistill(teacher, "--set", "baseline=null", "--set", "distill.0.epochs=0", "--set", "distill.1.epochs=0")
    rows = []
    for arm, extra in ARMS.items():
        errors, seconds = [], []
        for seed in range(args.seeds):
            run = out / f"{arm}_s{seed}"
            print(f"{run.name} ...", flush=True)
            hintdistill(run, "--set", f"teacher.checkpoint={teacher / 'teacher' / 'model.pt'}", "--set",
                        "baseline=null", "--set", f"seed={seed}", *extra)
            e, s = kd_stage(run)
            errors.append(e)
            seconds.append(round(s, 1))
        rows.append({"arm": arm, "seeds": list(range(args.seeds)), "test_errors": errors,
                     "errors_mean": round(statistics.mean(errors), 1),
                     "errors_std": round(statistics.stdev(errors), 1) if len(errors) > 1 else 0.0,
                     "kd_stage_s": seconds, "kd_stage_s_median": statistics.median(seconds)})
    print("\n| KD stage | test errors per seed | mean ± std | KD-stage seconds (median) |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['arm']} | {' / '.join(map(str, r['test_errors']))} | {r['errors_mean']:.0f} ± "
              f"{r['errors_std']:.0f} | {r['kd_stage_s_median']} |")
    meta = {"command": "OMP_NUM_THREADS=1 python benchmarks/cache_views.py", "date": time.strftime("%Y-%m-%d"),
            "machine": cpu_model()}
    Path(args.json).write_text(json.dumps({"run": meta, "rows": rows}, indent=1) + "\n")
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
