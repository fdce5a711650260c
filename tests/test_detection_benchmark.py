"""The detection benchmark's bookkeeping: rows paired with their baseline by seed, new seeds pooled with a
recorded row (benchmarks/detection.py; its runs themselves are measured, not tested)."""

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


def bench_module():
    return load_script("benchmarks/detection.py")


def test_benchmark_pairs_a_row_with_its_baseline_seed_by_seed():
    bench_mod = bench_module()
    base = {"seeds": [0, 1, 2], "map50_per_seed": [0.653, 0.595, 0.652]}
    row = {"seeds": [0, 1, 2], "map50_per_seed": [0.688, 0.679, 0.714]}  # BCCD objectness_kd
    # +3.5 / +8.4 / +6.2: mean 6.03, std 2.45, t(2) 2.920 -> half-width 4.13
    assert bench_mod.paired(row, base) == (" Paired by seed: +3.5 / +8.4 / +6.2 points, better on 3 of 3 seeds, "
                                           "mean +6.0 (90% interval +1.9 to +10.2).")
    assert bench_mod.paired({"seeds": [0], "map50_per_seed": [0.7]}, base) == ""  # one seed: no interval


def test_a_variant_row_is_compared_with_the_baseline_of_its_own_variant():
    bench_mod = bench_module()

    def row(name, per_seed):
        return {"name": name, "params": 1e6, "gflops": 0.3, "map50_mean": sum(per_seed) / len(per_seed),
                "map50_std": 0.0, "map_mean": 0.3, "map_std": 0.0, "seeds": list(range(len(per_seed))),
                "map50_per_seed": per_seed, "epochs": 60, "input_size": 192, "cpu_ms_per_image": 10.0,
                "wall_s": 60.0, "ap50_per_class_mean": {"raccoon": 0.5}}
    table = bench_mod.dataset_markdown([
        row("teacher", [0.74]), row("baseline", [0.40, 0.50]), row("chen_kd", [0.45, 0.55]),
        row("baseline_e60_bnf5", [0.60, 0.60]), row("chen_kd_hints_e60_bnf5", [0.62, 0.66]),
        row("objectness_kd_iou_e60_bnf5", [0.58, 0.64])])
    assert "chen_kd: +5.0 mAP@0.5 points over baseline," in table
    assert "chen_kd_hints_e60_bnf5: +4.0 mAP@0.5 points over baseline_e60_bnf5," in table
    assert "objectness_kd_iou_e60_bnf5: +1.0 mAP@0.5 points over baseline_e60_bnf5," in table
    assert "\nbaseline_e60_bnf5:" not in table and "\nteacher:" not in table


def test_the_interval_uses_students_t_for_15_seeds_not_the_normal():
    bench_mod = bench_module()
    assert bench_mod.t_90(2) == 2.920 and bench_mod.t_90(14) == 1.761
    assert bench_mod.t_90(22) == 1.725 and bench_mod.t_90(31) == 1.645  # the entry below (wider); the normal past 30
    base = {"seeds": list(range(15)), "map50_per_seed": [0.5] * 15}
    row = {"seeds": list(range(15)), "map50_per_seed": [0.5 + d / 100 for d in [1, 3] * 7 + [2]]}
    # differences +1/+3 x7 and +2: mean 2.0, std 1.0351 -> half-width 1.761 * 1.0351 / sqrt(15) = 0.47
    assert bench_mod.paired(row, base).endswith("mean +2.0 (90% interval +1.5 to +2.5).")


def test_benchmark_pools_new_seeds_with_a_recorded_row():
    bench_mod = bench_module()
    maps = [0.20, 0.25, 0.30, 0.22, 0.28]  # mAP@[.5:.95] of five seeds
    old = {"name": "baseline", "seeds": [0, 1, 2], "map50_per_seed": [0.4, 0.5, 0.6], "map50_mean": 0.5,
           "map_mean": 0.25, "map_std": 0.05, "ap50_per_class_mean": {"a": 0.5}, "wall_s": 60.0,
           "map50_boot90_seed0": [0.3, 0.7]}
    new = {"name": "baseline", "seeds": [3, 4], "map50_per_seed": [0.45, 0.55], "map50_mean": 0.5,
           "map_mean": 0.25, "map_std": 0.0424264, "ap50_per_class_mean": {"a": 0.6}, "wall_s": 120.0}
    got = bench_mod.pooled(old, new, 3)
    assert got["seeds"] == [0, 1, 2, 3, 4] and got["map50_per_seed"] == [0.4, 0.5, 0.6, 0.45, 0.55]
    assert got["map_std"] == pytest.approx(torch.tensor(maps).std().item(), abs=1e-6)  # as if from the 5 values
    assert got["ap50_per_class_mean"]["a"] == pytest.approx(0.54) and got["wall_s"] == pytest.approx(84.0)
    assert got["map50_boot90_seed0"] == [0.3, 0.7]
    with pytest.raises(SystemExit, match="pooling needs every recorded seed below 3"):  # not with itself
        bench_mod.pooled(got, new, 3)
    with pytest.raises(SystemExit, match="pooling needs every recorded seed below 2"):
        bench_mod.pooled(old, new, 2)


def test_a_results_write_keeps_other_rows_and_the_recorded_seeds():
    bench_mod = bench_module()
    row = lambda name, seeds, ds="raccoon": {"dataset": ds, "name": name, "seeds": seeds,  # noqa: E731
                                            "map50_per_seed": [0.5] * len(seeds), "map50_mean": 0.5, "map_mean": 0.2,
                                            "map_std": 0.0, "ap50_per_class_mean": {"a": 0.5}, "wall_s": 1.0}
    recorded = [row("teacher", [0]), row("baseline", [0, 1, 2]), row("chen_kd", [0, 1, 2]),
                row("baseline", [0, 1, 2], "bccd")]
    produced = {("raccoon", "teacher"), ("raccoon", "baseline"), ("raccoon", "chen_kd")}
    # the first write holds only the teacher: the recorded student rows stay (they are pooled later)
    first = bench_mod.merged(recorded, [row("teacher", [0])], produced, first_seed=3)
    assert [(e["dataset"], e["name"], e["seeds"]) for e in first] == [
        ("bccd", "baseline", [0, 1, 2]), ("raccoon", "teacher", [0]), ("raccoon", "baseline", [0, 1, 2]),
        ("raccoon", "chen_kd", [0, 1, 2])]
    second = bench_mod.merged(first, [row("teacher", [0]), row("baseline", [3])], produced, 3, recorded)
    assert {e["name"]: e["seeds"] for e in second if e["dataset"] == "raccoon"} == {
        "teacher": [0], "baseline": [0, 1, 2, 3], "chen_kd": [0, 1, 2]}
    # the next write, over the file the second one left: pooled with the seeds recorded at the start, not again
    third = bench_mod.merged(second, [row("teacher", [0]), row("baseline", [3, 4])], produced, 3, recorded)
    assert {e["name"]: e["seeds"] for e in third if e["dataset"] == "raccoon"}["baseline"] == [0, 1, 2, 3, 4]
    # without --first-seed a produced row replaces the recorded one
    plain = bench_mod.merged(recorded, [row("teacher", [0]), row("baseline", [0])], produced)
    assert {e["name"]: e["seeds"] for e in plain if e["dataset"] == "raccoon"} == {"teacher": [0], "baseline": [0]}


def test_importing_the_benchmark_leaves_the_cpu_kernels_alone(monkeypatch):
    # the AVX2 pin is for the benchmark's own process; set by an import, it reached the runs test_kill starts
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    bench_module()
    assert "ATEN_CPU_CAPABILITY" not in os.environ and "ONEDNN_MAX_CPU_ISA" not in os.environ


def test_a_finished_run_reports_the_cpu_kernels_it_ran_with(tmp_path):
    # a row's cpu_kernels and cpu are its own run's (summary.json), not the kernels of the process that reads it later
    import argparse
    import json

    import yaml

    from hintdistill.config import recipe_from_dict

    bench_mod = bench_module()
    args = argparse.Namespace(teacher_size=None, input_size=192, workers=None, batch_size=None, eval_every=None,
                              train_subset=None, test_subset=None, epochs_scale=1.0, teacher_epochs=None,
                              student_epochs=None, out=str(tmp_path), bn_frozen_epochs=None)
    tree = bench_mod.Bench(args, "raccoon").student_tree("baseline", 0)
    recipe = recipe_from_dict(tree)
    folder = recipe.run_dir()
    folder.mkdir(parents=True)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    row = {"model": "distilled", "map50": 0.5}
    from hintdistill.metrics import cpu_model
    here = (torch.backends.cpu.get_cpu_capability(), cpu_model())
    for recorded, expected in ((("AVX512", "AMD EPYC family 25 model 17"),) * 2, (None, here)):
        summary = {"rows": [row], **({"cpu_kernels": recorded[0], "cpu": recorded[1]} if recorded else {})}
        (folder / "summary.json").write_text(json.dumps(summary))
        assert bench_mod.run(tree)["rows"] == [{**row, "cpu_kernels": expected[0], "cpu": expected[1]}]


def test_bn_frozen_epochs_reach_the_students_only_and_name_the_run_folder(tmp_path):
    import argparse

    bench_mod = bench_module()
    args = argparse.Namespace(teacher_size="s", input_size=192, workers=None, batch_size=8, eval_every=5,
                              train_subset=None, test_subset=None, epochs_scale=1.0, teacher_epochs=60,
                              student_epochs=30, out=str(tmp_path), bn_frozen_epochs=5)
    bench = bench_mod.Bench(args, "raccoon")
    assert bench.out.name == "s192_t60_s_e30_bs8_ee5_bnf5"
    assert bench.student_tree("chen_kd", 3)["distill"][0]["bn_frozen_epochs"] == 5
    assert "bn_frozen_epochs" not in bench.teacher_tree("teacher")["teacher"]["train"]
    # the teacher is the one trained without the option: same folder, no copy or link needed
    plain = tmp_path / "raccoon" / "s192_t60_s_e30_bs8_ee5"
    assert bench.teacher_tree("teacher")["output_dir"] == str(plain / "teacher")
    assert bench.student_tree("chen_kd", 3)["teacher"]["checkpoint"] == str(plain / "teacher/teacher/model.pt")
    assert bench.student_tree("chen_kd", 3)["output_dir"] == str(bench.out / "chen_kd/seed3")
    args.bn_frozen_epochs = 0  # off: the folder of the runs before the option
    assert bench_mod.Bench(args, "raccoon").out.name == "s192_t60_s_e30_bs8_ee5"
    args.bn_frozen_epochs = None  # the recipe's own setting names the folder the same way
    recipe_n = bench_mod.Bench(args, "raccoon").base["distill"][0].get("bn_frozen_epochs", 0)
    assert bench_mod.Bench(args, "raccoon").out.name == "s192_t60_s_e30_bs8_ee5" + (f"_bnf{recipe_n}" if recipe_n else "")


def test_pool_joins_per_seed_files_into_one_renamed_row(tmp_path):
    bench_mod = bench_module()
    row = lambda name, seed, m50: {"dataset": "raccoon", "name": name, "seeds": [seed],  # noqa: E731
                                   "map50_per_seed": [m50], "map50_mean": m50, "map_mean": m50 / 2, "map_std": 0.0,
                                   "ap50_per_class_mean": {"raccoon": m50}, "wall_s": 10.0 * (seed + 1)}
    files = []
    for seed, m50 in ((2, 0.62), (0, 0.60), (1, 0.58)):  # written in any order, one seed each
        files.append(tmp_path / f"s{seed}.json")
        files[-1].write_text(json.dumps([row("teacher", 0, 0.74), row("baseline", seed, m50)]))
    (got,) = bench_mod.pool_files([str(f) for f in files], "_e60")
    assert got["name"] == "baseline_e60" and got["seeds"] == [0, 1, 2]
    assert got["map50_per_seed"] == [0.60, 0.58, 0.62] and got["map50_mean"] == pytest.approx(0.60)
    assert got["map50_std"] == pytest.approx(0.02) and got["map_std"] == pytest.approx(0.01)
    assert got["wall_s"] == pytest.approx(20.0)
    with pytest.raises(SystemExit, match="pooling needs every recorded seed below 0"):  # seed 0 twice
        bench_mod.pool_files([str(files[1]), str(files[1])])
