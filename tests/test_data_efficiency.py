"""benchmarks/data_efficiency.py (Hinton's Table 5 idea) on a tiny size: the runs it makes and its table."""

import copy
import json
from pathlib import Path

import pytest
import yaml
from conftest import SGD, TINY_RECIPE, load_script, needs_fashion

ROOT = Path(__file__).resolve().parents[1]
de = load_script("benchmarks/data_efficiency.py")


def test_subset_recipe_scales_every_stage_and_its_anneal():
    tree = yaml.safe_load((ROOT / "recipes/fashion_mnist_fitnets.yaml").read_text())  # hint 2 + kd 20 epochs
    tree["distill"][1]["terms"][1]["weight"] = {"start": 4.0, "end": 1.0, "epochs": 10}  # an annealed weight
    sub = de.subset_tree(tree, 1800, 50, "t.pt", 2, Path("o"))
    assert sub["data"]["train_subset"] == 1800 and sub["teacher"]["checkpoint"] == "t.pt" and sub["seed"] == 2
    assert sub["baseline"]["epochs"] == 50
    assert [s["epochs"] for s in sub["distill"]] == [5, 45]  # 50 * 2/22 and 50 * 20/22, rounded
    assert sub["distill"][1]["terms"][1]["weight"] == {"start": 4.0, "end": 1.0, "epochs": 45}
    assert tree["distill"][1]["epochs"] == 20  # the recipe itself is untouched


@needs_fashion
def test_tiny_run_writes_rows_per_seed_and_the_saving(tmp_path, capsys):
    tree = copy.deepcopy(TINY_RECIPE)
    tree["baseline"] = {"epochs": 1, "batch_size": 64, "optimizer": SGD}
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tree))
    out = tmp_path / "out"
    assert de.main(["--recipe", str(recipe), "--fraction", "0.25", "--seeds", "0", "1", "--subset-epochs", "2",
                    "--out", str(out)]) == 0
    results = {r["row"]: r for r in json.loads((out / "data_efficiency.json").read_text())}
    assert list(results) == ["teacher (100%)", "baseline (100%)", "distilled (100%)", "baseline (25%)",
                             "distilled (25%)"]
    for seed in (0, 1):
        run = out / f"subset_seed{seed}"
        used = yaml.safe_load((run / "recipe.yaml").read_text())
        assert used["data"]["train_subset"] == 128 and used["seed"] == seed  # 25% of 512
        assert used["teachers"][0]["checkpoint"] == str(out / "full" / "teacher" / "model.pt")
        assert used["baseline"]["epochs"] == 2 and used["distill"][0]["epochs"] == 2
        rows = {r["model"]: r["errors"] for r in json.loads((run / "summary.json").read_text())["rows"]}
        assert results["baseline (25%)"]["errors"][seed] == rows["baseline"]
        assert results["distilled (25%)"]["errors"][seed] == rows["distilled"]
    alone, soft = results["baseline (25%)"]["errors"], results["distilled (25%)"]["errors"]
    assert results["baseline (25%)"]["errors_mean"] == pytest.approx(sum(alone) / 2)
    assert results["baseline (25%)"]["errors_std"] == pytest.approx(abs(alone[0] - alone[1]) / 2 ** 0.5)
    printed = capsys.readouterr().out
    assert f"On 25% of the labels the soft targets save {(sum(alone) - sum(soft)) / 2:.1f} test errors" in printed
