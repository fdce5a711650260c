"""benchmarks/classification.py: the rows it builds from the recipes, one baseline per seed on the recipe's
schedule, and the gap-closed lines of its table (no training: run_recipe is replaced by a recorder)."""

from pathlib import Path

import yaml
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
cb = load_script("benchmarks/classification.py")


def cnn_recipe() -> dict:
    return yaml.safe_load((ROOT / cb.PAIRS["cnn"]).read_text())


def test_pinned_rows_keep_the_schedule_they_were_measured_with():
    base = cnn_recipe()
    kd_epochs = base["distill"][-1]["epochs"]
    assert kd_epochs != cb.MEASURED_EPOCHS  # otherwise this test shows nothing
    v = cb.variants("cnn", base)
    assert [s["epochs"] for s in v["kd"]["distill"]] == [kd_epochs]  # the hint stage dropped, the KD stage's epochs
    assert v["hint_kd"] is base
    for row in cb.PINNED:
        assert [s["epochs"] for s in v[row]["distill"]] == [cb.MEASURED_EPOCHS]
        assert v[row]["distill"][0]["optimizer"] == base["distill"][-1]["optimizer"]


def fake_runs(monkeypatch) -> list:
    """Replace the pipeline by a recorder that returns one row per phase the recipe would train."""
    seen = []

    def run_recipe(recipe):
        seen.append(recipe)
        rows = [{"model": "teacher"}] + ([{"model": "baseline"}] if recipe.baseline else []) + [{"model": "distilled"}]
        return {"rows": [dict(r, accuracy=0.9, arch="cnn") for r in rows]}
    monkeypatch.setattr(cb, "run_recipe", run_recipe)
    return seen


def teacher_run(tmp_path: Path) -> Path:
    (tmp_path / "t" / "teacher").mkdir(parents=True)
    (tmp_path / "t" / "teacher" / "model.pt").write_bytes(b"")
    return tmp_path / "t"


def test_a_pinned_row_alone_trains_no_baseline(monkeypatch, tmp_path):
    seen = fake_runs(monkeypatch)
    rows = cb.run_pair("cnn", [0], tmp_path / "out", only=["at"], teacher_run=teacher_run(tmp_path))
    assert [r.distill[0].name for r in seen] == ["at"] and seen[0].baseline is None
    assert "baseline" not in rows and [r["seed"] for r in rows["at"]] == [0]  # the saved 20-epoch baseline is kept


def test_the_baseline_comes_with_the_first_row_on_the_recipe_schedule(monkeypatch, tmp_path):
    seen = fake_runs(monkeypatch)
    rows = cb.run_pair("cnn", [0, 1], tmp_path / "out", only=["kd", "at"], teacher_run=teacher_run(tmp_path))
    assert [(r.seed, r.distill[0].name, r.baseline is not None) for r in seen] == [
        (0, "kd", True), (0, "at", False), (1, "kd", True), (1, "at", False)]
    assert seen[0].baseline.epochs == cnn_recipe()["baseline"]["epochs"]
    assert [r["seed"] for r in rows["baseline"]] == [0, 1] and len(rows["teacher"]) == 1


def test_table_says_how_much_of_the_gap_each_row_closes_and_skips_pinned_rows():
    def row(name, errors):
        return {"name": name, "params": 31e3, "test_errors_mean": errors, "test_errors_std": 0.0,
                "accuracy_mean": 1 - errors / 1e4, "accuracy_std": 0.0, "seeds": [0], "epochs": 20,
                "cpu_ms_per_image": 1.0, "wall_s": 60.0}
    text = cb.markdown([row("cnn/teacher", 746), row("cnn/baseline", 846), row("cnn/kd", 766),
                        row("cnn/at", 800)])
    assert "cnn/kd closes 80% of the baseline-to-teacher error gap (target: 50%)." in text
    assert f"cnn/at: measured with {cb.MEASURED_EPOCHS} student epochs" in text and "cnn/at closes" not in text
