"""The three data sets' distill recipes share one set of defaults: they differ only in name and data."""

from pathlib import Path

import pytest
import yaml
from conftest import load_script

from hintdistill.config import SyntheticConfig, load_recipe, recipe_from_dict

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("bccd", "raccoon", "synthetic")


def tree(dataset: str) -> dict:
    return yaml.safe_load((ROOT / "recipes" / f"{dataset}_yolo_distill.yaml").read_text())


def test_distill_recipes_differ_only_in_name_and_data():
    trees = {d: tree(d) for d in DATASETS}
    rest = {d: {k: v for k, v in t.items() if k not in ("name", "data")} for d, t in trees.items()}
    assert rest["raccoon"] == rest["bccd"] and rest["synthetic"] == rest["bccd"]
    assert [t["name"] for t in trees.values()] == [f"{d}_yolo_distill" for d in DATASETS]
    for d in DATASETS:
        recipe = load_recipe(ROOT / "recipes" / f"{d}_yolo_distill.yaml")  # each one validates
        assert recipe.task == "detection" and recipe.data.image_size == 256


def test_data_sections_name_their_data():
    assert tree("raccoon")["data"]["data_dir"].endswith("shared/data/raccoon")
    synthetic = load_recipe(ROOT / "recipes/synthetic_yolo_distill.yaml").data
    assert synthetic.name == "synthetic" and synthetic.synthetic == SyntheticConfig()  # the documented default set
    for d in ("bccd", "raccoon"):
        folder = ROOT / tree(d)["data"]["data_dir"]  # relative to the repository root, where recipes are run
        if not (ROOT.parent / "shared/data").exists():
            pytest.skip("the shared data folder is not here")
        assert (folder / "ImageSets/Main/train.txt").is_file()


def test_teacher_recipes_share_the_distill_recipes_teacher_and_differ_only_in_data():
    teachers = {d: yaml.safe_load((ROOT / "recipes" / f"{d}_yolo_teacher.yaml").read_text()) for d in DATASETS}
    for d, t in teachers.items():
        assert t["teacher"] == tree(d)["teacher"] and t["data"] == tree(d)["data"]
        assert t["distill"][0]["epochs"] == 0 and load_recipe(ROOT / "recipes" / f"{d}_yolo_teacher.yaml")
    rest = {d: {k: v for k, v in t.items() if k not in ("name", "data")} for d, t in teachers.items()}
    assert rest["raccoon"] == rest["bccd"] == rest["synthetic"]


def test_the_recipes_are_what_the_generator_writes():
    make = load_script("scripts/make_detection_recipes.py")
    for d in DATASETS:
        for kind in ("teacher", "distill"):
            assert (ROOT / "recipes" / f"{d}_yolo_{kind}.yaml").read_text() == make.recipe(d, kind), (d, kind)


def test_the_distill_recipes_train_what_the_benchmark_measured():
    """The benchmark swaps each row's terms into the recipe; the recipe's own terms must be the row they cite
    (chen_kd + neck_hints), default for default: the recipes once ran chen_kd's bounded regression (nu 0.5, the
    term's default) while every figure in their header was measured with nu 0."""
    rows = load_script("benchmarks/detection.py").STUDENT_ROWS

    def terms(stage_terms, row):
        t = tree("bccd")
        t["distill"] = [dict(t["distill"][0], terms=rows[row][1])]
        return [term.model_dump() for term in recipe_from_dict(t).distill[0].terms], [
            term.model_dump() for term in stage_terms]

    recipe = load_recipe(ROOT / "recipes/bccd_yolo_distill.yaml")
    measured, shipped = terms(recipe.distill[0].terms, "chen_kd_hints")
    assert shipped == measured and shipped[0]["nu"] == 0
    measured, shipped = terms(recipe.baseline.terms, "baseline")
    assert shipped == measured
