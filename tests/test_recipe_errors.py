"""Recipes that are not recipes (random bytes, deep nesting, alias bombs, odd keys, huge files) and bad --set
values: each is a ConfigError naming the file or option, the problem and the fix, never a traceback."""

import copy
import os

import pytest
import yaml
from conftest import TINY_RECIPE

from hintdistill.config import MAX_DEPTH, MAX_VALUES, load_recipe, parse_overrides, recipe_from_dict
from hintdistill.errors import ConfigError

BOMB = "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True))
BAD_FILES = {  # name: (content, what the message must say)
    "random_bytes": (bytes(range(128, 256)) * 4, r"not UTF-8 text \(byte 0x80 at offset 0\).*right file"),
    "utf16": ("name: x".encode("utf-16"), r"not UTF-8 text \(byte 0xff at offset 0\)"),
    "deep_flow": (b"[" * 5000 + b"]" * 5000, "nested too deeply for YAML to read; check the brackets"),
    "deep_block": ("".join(f"{' ' * i}k{i}:\n" for i in range(60)).encode() + b" " * 60 + b"v: 1\n",
                   f"nested more than {MAX_DEPTH} levels deep at 'k0.k1.k2"),
    "alias_bomb": (b"a: &a [x, x, x, x, x, x, x, x, x]\n" + BOMB.encode(), f"more than {MAX_VALUES} values.*aliases"),
    "self_alias": (b"name: &n [1, *n]\n", "the value at 'name.1' contains itself"),
    "int_key": (b"name: x\n3: y\n", r"the key 3 is not a field name .*quote it \('3'\)"),
    "bool_key": (b"name: x\nyes: y\n", r"the key True is not a field name"),
    "nan": (b"name: x\nseed: .nan\n", r"nan at 'seed' is not a finite number"),
    "huge_int": (b"name: x\nseed: " + b"9" * 40 + b"\n", "the number at 'seed' has 40 digits"),
    "two_documents": (b"name: x\n---\nname: y\n", "not valid YAML: expected a single document"),
    "list": (b"- name: x\n", "must be a mapping of fields"),
    "empty": (b"", "must be a mapping of fields"),
    "tab": (b"\tname: x\n", "not valid YAML"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_recipe_file_is_a_config_error_naming_the_file(tmp_path, name):
    content, message = BAD_FILES[name]
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as info:
        load_recipe(path)
    assert str(path) in str(info.value)


def test_huge_file_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * 2_000_000)
    with pytest.raises(ConfigError, match=r"big\.yaml is 2\.0 MB; a recipe is a few KB"):
        load_recipe(path)


def test_folder_and_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="is a folder; give the recipe's .yaml file"):
        load_recipe(tmp_path)
    path = tmp_path / "locked.yaml"
    path.write_text("name: x\n")
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(ConfigError, match=r"locked\.yaml cannot be read \(Permission denied\); check its permissions"):
            load_recipe(path)
    finally:
        path.chmod(0o644)


def test_a_bomb_inside_a_field_stops_before_validation(tmp_path):
    tree = copy.deepcopy(TINY_RECIPE)
    tree["data"]["classes"] = yaml.safe_load("a: &a [x, x, x, x, x, x, x, x, x]\n" + BOMB)["h"]
    with pytest.raises(ConfigError, match=f"recipe <dict> expands to more than {MAX_VALUES} values"):
        recipe_from_dict(tree)


def test_validation_error_shows_a_long_value_shortened():
    tree = copy.deepcopy(TINY_RECIPE)
    tree["data"]["classes"] = list(range(5000))
    with pytest.raises(ConfigError) as info:
        recipe_from_dict(tree)
    assert "... and 4980 more" in str(info.value) and len(str(info.value)) < 2000
    assert "data.classes.0: Input should be a valid string (got 0)" in str(info.value)


@pytest.mark.parametrize("item, message", [
    ("epochs", "--set expects key.path=value, got 'epochs'"),
    ("=3", "the key path '' has an empty part"),
    ("distill..epochs=3", "the key path 'distill..epochs' has an empty part"),
    ("data.name=[", r"--set data.name: the value '\[' is not valid YAML .*put it in quotes: --set 'data.name=\"\[\"'"),
    ("seed=!!python/object:os.system x", "not valid YAML .*could not determine a constructor"),
    ("seed=.inf", r"--set seed: inf is not a finite number"),
    ("data.classes=&a [*a]", "--set data.classes: the value at '0' contains itself"),
])
def test_bad_overrides(item, message):
    with pytest.raises(ConfigError, match=message):
        parse_overrides([item])


def test_good_overrides_still_apply(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(TINY_RECIPE).encode())  # a BOM, as some editors write
    recipe = load_recipe(path, ["distill.0.epochs=5", "data.classes=[a, b]", "seed=7"])
    assert recipe.distill[0].epochs == 5 and recipe.data.classes == ["a", "b"] and recipe.seed == 7
    with pytest.raises(ConfigError, match="must be a mapping of fields, got a list"):
        recipe_from_dict([TINY_RECIPE])
