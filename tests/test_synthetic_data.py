"""The generated detection set: deterministic from its seed, boxes that are the items' visible extent, balanced
classes, regenerated only when a parameter changes, and read through the normal detection data path."""

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import needs_fashion

from hintdistill.build import build_data
from hintdistill.cli import main
from hintdistill.config import SyntheticConfig, recipe_from_dict
from hintdistill.data.synthetic import (
    boxes_from_owner,
    composite,
    ensure_synthetic,
    find_place,
    synthetic_classes,
)
from hintdistill.errors import ConfigError, DataError

torch.set_num_threads(1)

TINY = {"train": 8, "val": 4, "test": 4, "image_size": 96}


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "synthetic.json"}


def objects(root: Path, split: str) -> list[list[tuple[str, list[int]]]]:
    """Per image of the split: (class name, [xmin, ymin, xmax, ymax])."""
    out = []
    for image_id in (root / "ImageSets/Main" / f"{split}.txt").read_text().split():
        tree = ET.parse(root / "Annotations" / f"{image_id}.xml").getroot()
        out.append([(o.findtext("name"), [int(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")])
                    for o in tree.iter("object")])
    return out


@needs_fashion
def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    assert ensure_synthetic(tmp_path / "a", SyntheticConfig(**TINY)) is True
    ensure_synthetic(tmp_path / "b", SyntheticConfig(**TINY))
    ensure_synthetic(tmp_path / "c", SyntheticConfig(**TINY, seed=1))
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert len(a) == 2 * 16 + 3 and a == b
    assert a.keys() == c.keys()
    differing = [k for k in a if k.startswith("JPEGImages") and a[k] != c[k]]
    assert len(differing) == 16
    assert objects(tmp_path / "a", "train") != objects(tmp_path / "c", "train")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temporary folders left


@needs_fashion
def test_boxes_inside_the_image_sized_as_asked_classes_balanced_some_images_empty(tmp_path):
    spec = SyntheticConfig(**TINY)
    ensure_synthetic(tmp_path, spec)
    names = synthetic_classes(spec)
    assert names == ["tshirt", "trouser", "sandal", "bag", "ankle_boot"]
    sizes, empty = [], 0
    for split in ("train", "val", "test"):
        per_image = objects(tmp_path, split)
        empty += sum(not objs for objs in per_image)
        counts = [sum(name == c for objs in per_image for name, _ in objs) for c in names]
        assert max(counts) - min(counts) <= 1 and sum(counts) > 0
        for objs in per_image:
            assert len(objs) <= spec.max_objects
            for _, (x1, y1, x2, y2) in objs:
                assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 96
                sizes.append(max(x2 - x1, y2 - y1))
    assert empty >= 1
    # longest sides drawn from 10..48 px (an occluded item's visible part may be smaller, never larger)
    assert max(sizes) <= 48 and min(sizes) >= 4 and max(sizes) >= 25


def test_boxes_are_the_visible_extent_and_occlusion_is_bounded():
    """Three shapes on a black canvas, each painted its own colour: a box must be exactly the extent of the
    pixels that still show its colour, and no shape may lose more than max_occlusion of its area."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:24, 0:18]
    shapes = [(yy > 4) & (xx < 8) | (yy > 19),   # an L
              (yy - 12) ** 2 + (xx - 9) ** 2 < 64,  # a disc
              np.ones((24, 18), bool)]
    colours = [np.array(c, float) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    placed = occluded = 0
    for trial in range(20):
        canvas, owner = np.zeros((48, 48, 3)), np.full((48, 48), -1, np.int16)
        areas = []
        for mask, colour in zip(shapes, colours, strict=True):
            xy = find_place(owner, mask, areas, 0.3, rng)
            if xy is not None:
                composite(canvas, mask, np.broadcast_to(colour, (*mask.shape, 3)), xy, owner, len(areas))
                areas.append(int(mask.sum()))
        placed += len(areas)
        for index, box in enumerate(boxes_from_owner(owner, len(areas))):
            ys, xs = np.nonzero((canvas == colours[index]).all(-1))
            assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], trial
            assert len(ys) >= 0.7 * areas[index]
            occluded += len(ys) < areas[index]
    assert placed >= 45 and occluded >= 5  # crowded enough that the bound was tested


@needs_fashion
def test_parameters_decide_reuse_or_regeneration_and_foreign_folders_are_kept(tmp_path):
    spec = SyntheticConfig(**TINY)
    assert ensure_synthetic(tmp_path / "s", spec) is True
    before = files(tmp_path / "s")
    assert ensure_synthetic(tmp_path / "s", SyntheticConfig(**TINY, source_dir=None)) is False
    assert ensure_synthetic(tmp_path / "s", SyntheticConfig(**dict(TINY, test=2))) is True
    after = files(tmp_path / "s")
    assert len(after) == len(before) - 4 and "JPEGImages/test_00003.jpg" not in after
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not made by the synthetic generator"):
        ensure_synthetic(tmp_path / "mine", spec)
    assert (tmp_path / "mine/notes.txt").read_text() == "keep me"


@needs_fashion
def test_synthetic_recipe_loads_through_the_detection_data_path(tmp_path):
    recipe = recipe_from_dict({
        "name": "s", "task": "detection",
        "data": {"name": "synthetic", "data_dir": str(tmp_path / "syn"), "image_size": 64, "workers": 0,
                 "synthetic": dict(TINY, classes=["Trouser", "bag", "ankle_boot"], max_objects=3)},
        "teacher": {"name": "yolo", "args": {"size": "n"}},
        "student": {"name": "yolo", "args": {"size": "n"}},
        "distill": [{"terms": [{"type": "detection"}]}]})
    data = build_data(recipe)
    assert data.num_classes == 3 and data.class_names == ["trouser", "bag", "ankle_boot"]
    assert data.model_defaults["num_classes"] == 3 and len(data.model_defaults["anchors"]) == 9
    images, targets = next(iter(data.test_loader))
    assert images.shape == (4, 3, 64, 64)
    expected = [[box for _, box in objs] for objs in objects(tmp_path / "syn", "test")]
    for target, boxes in zip(targets, expected, strict=True):  # 96 px letterboxed to 64: scale 2/3
        torch.testing.assert_close(target["boxes"], torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4) * 2 / 3)


def test_bad_synthetic_settings_are_config_errors(tmp_path):
    base = {"name": "s", "task": "detection", "teacher": {"name": "yolo"}, "student": {"name": "yolo"},
            "distill": [{"terms": [{"type": "detection"}]}]}
    with pytest.raises(ConfigError, match="data.synthetic describes a generated set; it needs name: synthetic"):
        recipe_from_dict(dict(base, data={"name": "voc", "synthetic": {"seed": 1}}))
    with pytest.raises(ConfigError, match="min_object_size 40 is larger than"):
        recipe_from_dict(dict(base, data={"name": "synthetic", "synthetic": {"image_size": 64, "min_object_size": 40}}))
    with pytest.raises(ConfigError, match="'shoe' is not a Fashion-MNIST class; choose from tshirt, trouser"):
        ensure_synthetic(tmp_path, SyntheticConfig(classes=["bag", "shoe"]))


@needs_fashion
def test_make_data_command_writes_then_keeps_and_rejects_bad_options(tmp_path, capsys):
    args = ["make-data", "synthetic", str(tmp_path / "s"), "--train", "3", "--val", "1", "--test", "2",
            "--image-size", "64", "--classes", "bag", "Trouser", "--seed", "3"]
    assert main(args) == 0
    assert f"wrote {tmp_path / 's'}: images train 3, val 1, test 2;" in capsys.readouterr().out
    assert synthetic_classes(SyntheticConfig(classes=["bag", "Trouser"])) == ["bag", "trouser"]
    assert "<name>bag</name>" in "".join(p.read_text() for p in (tmp_path / "s/Annotations").iterdir())
    assert main(args) == 0 and "up to date (same parameters), kept" in capsys.readouterr().out
    assert main(["make-data", "synthetic", str(tmp_path / "t"), "--image-size", "16"]) == 2
    assert "--image-size: Input should be greater than or equal to 32" in capsys.readouterr().err
