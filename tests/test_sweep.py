"""hintdistill sweep: grid and tie parsing, ranking by hand, and a resumable 2x1 sweep of the tiny recipe."""

import copy
import json
import math

import pytest
import yaml
from conftest import TINY_RECIPE, needs_fashion

from hintdistill.cli import main
from hintdistill.engine import pipeline
from hintdistill.errors import ConfigError
from hintdistill.sweep import combo_name, evaluate_tie, markdown, parse_grid, parse_ties, rank, short_labels

T, KD_W, CE_W = "distill.0.terms.1.temperature", "distill.0.terms.1.weight", "distill.0.terms.0.weight"


def test_grid_values_are_yaml_and_bad_items_are_named():
    assert parse_grid([f"{T}=2,4.5,8", "distill.0.augment=[]"]) == {T: [2, 4.5, 8], "distill.0.augment": [[]]}
    for item, match in [(T, "expects KEY=V1,V2"), (f"{T}=", "expects KEY=V1,V2"), ("seed=1,2", "use --seeds")]:
        with pytest.raises(ConfigError, match=match):
            parse_grid([item])
    with pytest.raises(ConfigError, match="given twice"):
        parse_grid([f"{T}=2", f"{T}=4"])
    with pytest.raises(ConfigError, match="needs at least one --grid"):
        parse_grid([])
    with pytest.raises(ConfigError, match="already set by another --grid"):
        parse_ties([f"{T}=2*{KD_W}"], {T: [2]})


def test_tie_expressions_read_fields_and_allow_only_arithmetic():
    tree = {"distill": [{"terms": [{"type": "ce"}, {"type": "kd", "weight": 0.9, "temperature": 4}]}]}
    assert evaluate_tie(CE_W, f"1-{KD_W}", tree, {}) == 0.1  # rounded: not 0.09999999999999998
    assert evaluate_tie("x", f"2*{T}**2 + 1e-1", tree, {}) == pytest.approx(32.1)
    assert evaluate_tie("x", f"-({KD_W} / 0.3)", tree, {}) == pytest.approx(-3.0)
    defaults = {"distill": [{"epochs": 10}]}  # a field the YAML leaves to its default
    assert evaluate_tie("x", "distill.0.epochs / 2", tree, defaults) == 5
    with pytest.raises(ConfigError, match="has no field 'distill.0.terms.1.alpha'"):
        evaluate_tie("x", "1-distill.0.terms.1.alpha", tree, {})
    with pytest.raises(ConfigError, match="'distill.0.terms.1.type' is 'kd', not a number"):
        evaluate_tie("x", "distill.0.terms.1.type", tree, {})
    with pytest.raises(ConfigError, match="has no field '__import__'"):  # names are fields, never Python
        evaluate_tie("x", "__import__('os').getcwd()", tree, {})
    for expr in ("(1, 2)", "1 < 2", "[1][0]", "7 // 2"):
        with pytest.raises(ConfigError, match="only numbers, field names"):
            evaluate_tie("x", expr, tree, {})
    with pytest.raises(ConfigError, match="cannot evaluate"):
        evaluate_tie("x", "1/0", tree, {})


def test_labels_and_folder_names_are_short_and_distinct():
    labels = short_labels([T, KD_W, CE_W, "teacher.train.optimizer.lr"])
    assert labels == {T: "temperature", KD_W: "terms.1.weight", CE_W: "terms.0.weight", "teacher.train.optimizer.lr": "lr"}
    assert combo_name({T: 4, KD_W: 0.9}, labels) == "temperature=4_terms.1.weight=0.9"
    assert combo_name({"teacher.train.optimizer.lr": "1/2 x"}, labels) == "lr=1-2-x"


def cell(name, seed, accuracy=None, errors=None, status="done", **combo):
    rows = {"distilled": {"accuracy": accuracy, "errors": errors}} if status == "done" else {}
    return {"name": name, "seed": seed, "combo": combo, "status": status, "rows": rows,
            "trains_teacher": False, "trains_baseline": False}


def test_rank_orders_combinations_by_mean_accuracy_over_seeds():
    cells = [cell("a", 0, 0.80, 200, t=2), cell("a", 1, 0.90, 100, t=2),
             cell("b", 0, 0.88, 120, t=4), cell("b", 1, 0.86, 140, t=4),
             cell("c", 0, status="pending", t=8), cell("d", 0, status="diverged", t=16)]
    ranking = rank(cells, "classification")
    assert [r["combination"] for r in ranking][:2] == ["b", "a"]  # 0.87 beats 0.85
    b, a = ranking[0], ranking[1]
    assert b["accuracy"]["mean"] == pytest.approx(0.87) and b["accuracy"]["std"] == pytest.approx(math.sqrt(2e-4))
    assert a["errors"] == {"mean": 150, "std": pytest.approx(math.sqrt(5000)), "n": 2}  # stdev of 200, 100
    assert [r["rank"] for r in ranking] == [1, 2, None, None] and ranking[3]["diverged"] == [0]
    table = markdown(ranking, {"teacher": [{"accuracy": 0.95, "errors": 50}]}, "classification", ["t"], [], {"t": "T"})
    lines = table.splitlines()
    assert lines[0] == "| rank | T | accuracy | errors | seeds |"
    assert lines[2] == "| 1 | 4 | 87.00% ± 1.41 | 130.0 ± 14.1 | 2 |"
    assert lines[3] == "| 2 | 2 | 85.00% ± 7.07 | 150.0 ± 70.7 | 2 |"
    assert lines[5] == "| - | 16 | - | - | 0 (1 diverged) |"
    assert lines[6] == "| - | teacher | 95.00% | 50.0 | 1 |"


@needs_fashion
def test_sweep_runs_each_cell_once_shares_teacher_and_baseline_and_resumes(tmp_path, monkeypatch, capsys):
    tree = copy.deepcopy(TINY_RECIPE)
    tree["baseline"] = {"epochs": 1, "batch_size": 64, "optimizer": {"name": "sgd", "lr": 0.05}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tree))
    out = tmp_path / "sweep"
    args = ["sweep", str(tmp_path / "tiny.yaml"), "--grid", "distill.0.optimizer.lr=0.2,0.001", "--grid", f"{KD_W}=0.8",
            "--tie", f"{CE_W}=1-{KD_W}", "--output-dir", str(out)]
    real, calls = pipeline.run_recipe, []

    def counting(recipe, log=print, interrupt_at=None):
        calls.append(recipe.output_dir)

        def watch(line):  # Ctrl-C in the middle of the second cell's distillation
            if interrupt_at and interrupt_at in str(line):
                raise KeyboardInterrupt
            log(line)
        return real(recipe, log=watch)

    monkeypatch.setattr(pipeline, "run_recipe", lambda r, log=print: counting(
        r, log, "[distilled/kd] epoch 2/2" if len(calls) == 1 else None))
    assert main(args) == 130  # interrupted
    state = json.loads((out / "sweep.json").read_text())
    assert [c["status"] for c in state["cells"].values()] == ["done", "pending"]

    calls.clear()
    assert main(args) == 0
    assert len(calls) == 1 and calls[0].endswith("lr=0.001_terms.1.weight=0.8/seed0")  # only the unfinished cell
    assert "resuming from" in capsys.readouterr().out

    first, second = out / "lr=0.2_terms.1.weight=0.8/seed0", out / "lr=0.001_terms.1.weight=0.8/seed0"
    assert (first / "teacher/model.pt").is_file() and (first / "baseline/model.pt").is_file()
    assert not (second / "teacher").exists() and not (second / "baseline").exists()  # trained once, shared
    recipe2 = yaml.safe_load((second / "recipe.yaml").read_text())
    assert recipe2["teachers"][0]["checkpoint"] == str(first / "teacher/model.pt") and recipe2["baseline"] is None
    assert recipe2["distill"][0]["terms"][0]["weight"] == pytest.approx(0.2)  # the tie: 1 - 0.8

    calls.clear()
    assert main(args) == 0 and calls == []  # everything finished: nothing runs again
    printed = capsys.readouterr().out
    accuracy = {f.parent.name: json.loads((f / "summary.json").read_text())["rows"][-1]["accuracy"]
                for f in (first, second)}
    ranking = json.loads((out / "sweep.json").read_text())["ranking"]
    assert [r["accuracy"]["mean"] for r in ranking] == sorted(accuracy.values(), reverse=True)
    best = ranking[0]["combination"]
    assert accuracy[best] == max(accuracy.values())
    table = printed[printed.index("| rank |"):]
    assert table.splitlines()[2].startswith(f"| 1 | {ranking[0]['values']['distill.0.optimizer.lr']} | 0.8 | 0.2 |")
    assert "| - | teacher |" in table and "| - | baseline |" in table
    assert (out / "sweep.md").read_text().count("| rank |") == 1
