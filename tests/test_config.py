"""The recipe schema: a bad recipe names the field path, the value and what was expected."""

from pathlib import Path

import pytest
import yaml

from hintdistill.build import build_terms
from hintdistill.config import load_recipe, recipe_from_dict
from hintdistill.errors import ConfigError
from hintdistill.models import build_model
from hintdistill.schema import LinearRamp
from hintdistill.terms import CrossEntropy, HintLoss, SoftTargetKD

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


def config_error(tree, overrides=None) -> str:
    with pytest.raises(ConfigError) as err:
        recipe_from_dict(tree, overrides)
    return str(err.value)


def test_tiny_recipe_is_valid(tiny_recipe):
    recipe = recipe_from_dict(tiny_recipe)
    assert len(recipe.teachers) == 1 and recipe.teachers[0].name == "cnn"
    assert recipe.distill[0].terms[1].temperature == 4.0
    assert recipe.run_dir() == Path(tiny_recipe["output_dir"])


def test_bad_values_name_path_value_and_expectation(tiny_recipe):
    tiny_recipe["distill"][0]["terms"][1]["temperature"] = -1
    tiny_recipe["distill"][0]["epochs"] = "many"
    tiny_recipe["distill"][0]["optimizer"]["name"] = "adagrad"
    message = config_error(tiny_recipe)
    assert "distill.0.terms.1.kd.temperature: Input should be greater than 0 (got -1)" in message
    assert "distill.0.epochs: Input should be a valid integer" in message and "(got 'many')" in message
    assert "distill.0.optimizer.name" in message and "'sgd'" in message and "(got 'adagrad')" in message


def test_unknown_and_missing_fields(tiny_recipe):
    tiny_recipe["student"]["nmae"] = "cnn"
    del tiny_recipe["data"]["name"]
    tiny_recipe["distill"][0]["terms"][0]["type"] = "kdd"
    message = config_error(tiny_recipe)
    assert "student.nmae: Extra inputs are not permitted (got 'cnn')" in message
    assert "data.name: Field required" in message
    assert "distill.0.terms.0" in message and "'kdd'" in message and "'ce', 'kd', 'hint'" in message


def test_single_teacher_errors_use_the_recipes_own_path(tiny_recipe):
    tiny_recipe["teacher"]["train"]["epochs"] = -1
    assert "  teacher.train.epochs: Input should be greater than or equal to 0 (got -1)" in config_error(tiny_recipe)
    tiny_recipe["teachers"] = [tiny_recipe["teacher"]]
    assert "either 'teacher' or 'teachers'" in config_error(tiny_recipe)


def test_up_to_guided_needs_a_hint_term(tiny_recipe):
    tiny_recipe["distill"][0]["trainable"] = "up_to_guided"
    assert "distill.0: Value error, trainable: up_to_guided needs a 'hint' term" in config_error(tiny_recipe)


def test_set_overrides_with_list_indices(tiny_recipe):
    recipe = recipe_from_dict(tiny_recipe, [
        "distill.0.terms.1.temperature=2.5", "distill.0.epochs=3", "teacher.train.augment=[jitter, hflip]",
        "seed=7", "data.train_subset=100", "distill.0.optimizer.lr=1.0e-3",
        "distill.0.terms.1.weight={start: 4, end: 1, epochs: 10}"])
    assert recipe.distill[0].terms[1].temperature == 2.5
    assert recipe.distill[0].epochs == 3
    assert recipe.teachers[0].train.augment == ["jitter", "hflip"]
    assert (recipe.seed, recipe.data.train_subset, recipe.distill[0].optimizer.lr) == (7, 100, 1e-3)
    terms = build_terms(recipe.distill[0].terms)
    assert isinstance(terms["ce"][0], CrossEntropy) and terms["ce"][1] == 0.1
    assert isinstance(terms["kd"][0], SoftTargetKD) and terms["kd"][0].temperature == 2.5
    assert terms["kd"][1] == LinearRamp(4.0, 1.0, 10.0)


def test_unquoted_on_and_off_mean_the_words(tiny_recipe):
    # YAML reads an unquoted off as False: `teacher_cache: off` in a file or --set must still mean "off"
    text = yaml.safe_dump(tiny_recipe) + "speed: {teacher_cache: off, autocast: off}\n"
    tree = yaml.safe_load(text)
    assert tree["speed"] == {"teacher_cache": False, "autocast": False}
    recipe = recipe_from_dict(tree, ["distill.0.teacher_cache=on"])
    assert (recipe.speed.teacher_cache, recipe.speed.autocast, recipe.distill[0].teacher_cache) == ("off", "off", "on")
    assert recipe_from_dict(tiny_recipe, ["speed.teacher_cache=off"]).speed.teacher_cache == "off"
    assert "bf16" in config_error(tiny_recipe, ["speed.autocast=on"])  # no "on" for autocast: say what is


def test_bad_overrides(tiny_recipe):
    assert "'5' is not a valid index of a list of 1" in config_error(tiny_recipe, ["distill.5.epochs=1"])
    assert "'x' is not a valid index" in config_error(tiny_recipe, ["distill.x.epochs=1"])
    assert "key.path=value" in config_error(tiny_recipe, ["seed"])
    assert "distill.0.epochs" in config_error(tiny_recipe, ["distill.0.epochs=-2"])
    assert "'seed' is not a mapping or list" in config_error(tiny_recipe, ["seed.value=1"])


def test_second_term_of_a_type_gets_a_numbered_name(tiny_recipe):
    tiny_recipe["distill"][0]["terms"] = [
        {"type": "hint", "hint": "features.stage1", "guided": "features.stage1"},
        {"type": "hint", "hint": "features.stage2", "guided": "features.stage2", "adapter": "regressor"}]
    terms = build_terms(recipe_from_dict(tiny_recipe).distill[0].terms)
    assert list(terms) == ["hint", "hint_1"]
    assert isinstance(terms["hint_1"][0], HintLoss) and terms["hint_1"][0].adapter_kind == "regressor"


def test_load_recipe_file_errors(tmp_path, tiny_recipe):
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_recipe(bad)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(tiny_recipe))
    assert load_recipe(good, ["seed=3"]).seed == 3


def test_unknown_model_names_the_closest():
    with pytest.raises(ConfigError, match=r"unknown model 'cnnn'\. Closest: cnn"):
        build_model("cnnn")
    with pytest.raises(ConfigError, match="torchvision has no classification model 'resnet19'. Closest: resnet18"):
        build_model("torchvision:resnet19")
    with pytest.raises(ConfigError, match="does not accept these arguments"):
        build_model("cnn", {"widht": [4]})


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_bundled_recipes_are_valid(path):
    recipe = load_recipe(path)
    assert recipe.name and recipe.distill
