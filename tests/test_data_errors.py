"""Bad images and annotations in users' own data: truncated or unreadable images, empty folders, class-name
typos. Each is a DataError naming the folder or file and the fix, or (a bad VOC image) dropped and counted,
never replaced by another image."""

import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_detection_data import write_voc

from hintdistill.build import build_data
from hintdistill.config import recipe_from_dict
from hintdistill.data.classification import image_folder_loader
from hintdistill.data.sanity import dropped_note, image_problem, one_edit_apart, suspicious_names
from hintdistill.data.voc import VOCDetection
from hintdistill.engine.pipeline import run_recipe
from hintdistill.errors import ConfigError, DataError


def noisy_jpeg(path: Path, size=(48, 32), seed=0) -> bytes:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy()
    Image.fromarray(pixels).save(path, quality=95)
    return path.read_bytes()


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_image_problem_tells_truncated_from_fine(tmp_path):
    jpg, png = tmp_path / "a.jpg", tmp_path / "b.png"
    noisy_jpeg(jpg)
    Image.open(jpg).save(png)
    assert image_problem(jpg) is None and image_problem(png) is None
    (tmp_path / "tail.jpg").write_bytes(jpg.read_bytes() + b"\0" * 200)  # padding after the end marker: still fine
    assert image_problem(tmp_path / "tail.jpg") is None
    truncate(jpg)
    truncate(png)
    assert image_problem(jpg).startswith("truncated or corrupt: image file is truncated")
    assert image_problem(png).startswith("truncated or corrupt")
    (tmp_path / "c.jpg").write_bytes(b"not an image")
    assert image_problem(tmp_path / "c.jpg") == "not an image file PIL can read"
    assert image_problem(tmp_path / "missing.jpg").startswith("cannot be opened")


def test_one_edit_and_typo_rule():
    assert one_edit_apart("rbc", "wbc") and one_edit_apart("dog", "dogs") and one_edit_apart("dogs", "dog")
    assert not one_edit_apart("dog", "dog") and not one_edit_apart("dog", "god") and not one_edit_apart("a", "abc")
    assert suspicious_names(Counter({"RBC": 300, "RBc": 1, "WBC": 30})) == {"RBc": "RBC"}
    # BCCD's real counts: WBC is one letter from RBC but a class of its own (1/11 as frequent)
    assert suspicious_names(Counter({"RBC": 4155, "WBC": 372, "Platelets": 361})) == {}
    assert suspicious_names(Counter({"Platelets": 361, "Platelet": 3})) == {"Platelet": "Platelets"}
    assert suspicious_names(Counter({"car": 50, "Car": 50})) == {"Car": "car"}  # case only: always


def write_image_folder(root: Path, classes=("cat", "dog"), n=2, splits=("train", "test")):
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                noisy_jpeg(root / split / c / f"{i}.jpg", seed=i)


def test_image_folder_errors_name_the_folder_and_fix(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty has no class sub-folders; put each class's images in .*/<class name>/"):
        image_folder_loader(str(tmp_path / "empty"), 2, False, 16, 0, workers=0)
    write_image_folder(tmp_path / "a", splits=("train",))
    (tmp_path / "a/train/bird").mkdir()
    (tmp_path / "a/train/bird/notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"the class folder\(s\) bird hold no images \(looked for .jpg"):
        image_folder_loader(str(tmp_path / "a/train"), 2, False, 16, 0, workers=0)
    (tmp_path / "a/train/bird/notes.txt").unlink()
    (tmp_path / "a/train/bird").rmdir()
    truncate(tmp_path / "a/train/dog/1.jpg")
    with pytest.raises(DataError, match=r"1 of 4 images cannot be read: dog/1\.jpg \(truncated or corrupt: image "
                                        r"file is truncated.*Delete them or replace them with complete copies"):
        image_folder_loader(str(tmp_path / "a/train"), 2, False, 16, 0, workers=0)


def folder_recipe(root: Path, tmp_path: Path, student_args=None) -> dict:
    train = {"epochs": 1, "batch_size": 2}
    return {"name": "f", "device": "cpu", "output_dir": str(tmp_path / "run"),
            "data": {"name": "image_folder", "data_dir": str(root), "image_size": 16, "workers": 0},
            "teacher": {"name": "cnn", "args": {"widths": [4], "in_channels": 3}, "train": train},
            "student": {"name": "cnn", "args": {"widths": [4], **(student_args or {})}},
            "distill": [{**train, "terms": [{"type": "ce"}]}], "eval_batch_size": 4}


def test_rgb_image_folder_with_the_cnn_default_stops_before_training(tmp_path):
    write_image_folder(tmp_path / "d")
    recipe = recipe_from_dict(folder_recipe(tmp_path / "d", tmp_path))
    with pytest.raises(ConfigError, match=r"the student \(SmallCNN\) expects 1-channel images .* but data "
                                          r"'image_folder' gives 3 channels \(3x16x16\): set in_channels: 3"):
        run_recipe(recipe, log=lambda *a: None)
    assert not (tmp_path / "run/teacher").exists()


def test_image_folder_refuses_subsets_instead_of_ignoring_them(tmp_path):
    write_image_folder(tmp_path / "d")
    tree = folder_recipe(tmp_path / "d", tmp_path, {"in_channels": 3})
    tree["data"]["train_subset"] = 2
    with pytest.raises(ConfigError, match="train_subset / test_subset are not available for an image folder"):
        build_data(recipe_from_dict(tree))
    del tree["data"]["train_subset"]
    data = build_data(recipe_from_dict(tree))
    with pytest.raises(ConfigError, match="train_subset on a training phase needs tensor or detection data"):
        data.train_loader(2, [], 0, 0, 1, subset=2)


def test_image_folder_train_and_test_with_different_classes(tmp_path):
    write_image_folder(tmp_path / "d")
    write_image_folder(tmp_path / "d", classes=("emu",), splits=("test",))
    recipe = recipe_from_dict(folder_recipe(tmp_path / "d", tmp_path, {"in_channels": 3}))
    with pytest.raises(DataError, match=r"different class folders \(\['cat', 'dog'\] vs \['cat', 'dog', 'emu'\]\)"):
        build_data(recipe)


def voc_with_images(root: Path, ids, names=None):
    objects = {i: [((names or {}).get(i, "dog"), 1, 1, 30, 20)] for i in ids}
    write_voc(root, objects, size=(48, 32))
    for i in ids:
        noisy_jpeg(root / "JPEGImages" / f"{i}.jpg", seed=hash(i) % 1000)


def test_truncated_voc_image_is_dropped_and_counted_not_replaced(tmp_path):
    voc_with_images(tmp_path, ["a", "b", "c"])
    truncate(tmp_path / "JPEGImages/b.jpg")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable or truncated images \(left out, not replaced\): "
                                         r"b\.jpg \(truncated"):
        ds = VOCDetection(tmp_path, image_size=32)
    assert len(ds) == 2 and [r.image.name for r in ds.records] == ["a.jpg", "c.jpg"]
    assert len(ds.dropped) == 1 and ds.dropped[0].startswith("b.jpg (truncated or corrupt")
    loader = torch.utils.data.DataLoader(ds, 2)
    assert dropped_note(loader).startswith("\n1 unreadable test image(s) left out (not replaced; the numbers are "
                                           "over the rest): b.jpg (truncated")
    assert dropped_note(torch.utils.data.DataLoader(list(range(3)))) == ""


def test_image_that_fails_only_mid_epoch_is_an_error_not_a_substitute(tmp_path):
    voc_with_images(tmp_path, ["a", "b"])
    ds = VOCDetection(tmp_path, image_size=32)
    (tmp_path / "JPEGImages/a.jpg").write_bytes(b"gone bad since")
    with pytest.raises(DataError, match=r"image .*a\.jpg cannot be decoded .*Delete or re-save it, then rerun"):
        ds[0]


def test_every_training_image_truncated_or_no_images_at_all(tmp_path):
    voc_with_images(tmp_path, ["a", "b"])
    for i in "ab":
        truncate(tmp_path / f"JPEGImages/{i}.jpg")
    with warnings.catch_warnings(), pytest.raises(DataError, match=r"no usable image in .*split 'train' \(2 ids "
                                                                   r"listed\): 2 unreadable or truncated images"):
        warnings.simplefilter("ignore")
        VOCDetection(tmp_path)
    for i in "ab":
        (tmp_path / f"JPEGImages/{i}.jpg").unlink()
    with pytest.raises(DataError, match=r"JPEGImages is empty: put the images there, named as in the annotations"):
        VOCDetection(tmp_path)


def test_class_name_typo_is_an_error_without_data_classes(tmp_path):
    ids = [f"{i:03d}" for i in range(25)]
    voc_with_images(tmp_path, ids, {"007": "dOg"})
    with pytest.raises(DataError, match=r"'dOg' \(1x, in 007\.xml\) looks like 'dog' \(24x\).*list every class in "
                                        r"data\.classes"):
        VOCDetection(tmp_path)
    with pytest.warns(UserWarning, match=r"skipped 1 boxes with an unknown class name: 007\.xml \('dOg'\)"):
        ds = VOCDetection(tmp_path, classes=["dog"])
    assert ds.classes == ["dog"] and len(ds) == 25


def test_split_file_that_is_not_text(tmp_path):
    voc_with_images(tmp_path, ["a"])
    (tmp_path / "ImageSets/Main/train.txt").write_bytes(bytes(range(128, 256)))
    with pytest.raises(DataError, match=r"train\.txt cannot be read as a text list of image ids"):
        VOCDetection(tmp_path)


def test_filename_cannot_point_outside_jpegimages(tmp_path):
    voc_with_images(tmp_path, ["a"])
    xml = tmp_path / "Annotations/a.xml"
    xml.write_text(xml.read_text().replace("<filename>a.jpg</filename>", "<filename>../../a.jpg</filename>"))
    noisy_jpeg(tmp_path.parent / "a.jpg")
    ds = VOCDetection(tmp_path)
    assert ds.records[0].image == tmp_path / "JPEGImages/a.jpg"


def test_detection_data_drops_a_truncated_test_image_and_the_summary_counts_it(tmp_path):
    ids = [f"{i:02d}" for i in range(12)]
    voc_with_images(tmp_path, ids)
    (tmp_path / "ImageSets/Main/test.txt").write_text("00\n01\n02\n")
    truncate(tmp_path / "JPEGImages/01.jpg")
    tree = {"name": "v", "task": "detection", "device": "cpu",
            "data": {"name": "voc", "data_dir": str(tmp_path), "image_size": 32, "workers": 0},
            "teacher": {"name": "yolo"}, "student": {"name": "yolo"}, "distill": [{"terms": [{"type": "detection"}]}]}
    with pytest.warns(UserWarning, match=r"01\.jpg \(truncated"):
        data = build_data(recipe_from_dict(tree))
    test_set = data.test_loader.dataset
    assert [r.image.stem for r in test_set.records] == ["00", "02"] and len(test_set.dropped) == 1
    assert sum(len(t["labels"]) for _, targets in data.test_loader for t in targets) == 2  # 01 is not evaluated
    assert dropped_note(data.test_loader).startswith("\n1 unreadable test image(s) left out")


def test_image_damaged_inside_is_named_even_from_a_loader_worker(tmp_path):
    from hintdistill.cli import user_message

    write_image_folder(tmp_path, splits=("train",))
    good = tmp_path / "train/cat/0.jpg"
    bad = tmp_path / "train/cat/2.png"
    Image.open(good).save(bad)
    data = bytearray(bad.read_bytes())
    for i in range(200, 400):  # damage inside the compressed data; the header and the IEND end marker stay
        data[i] ^= 0x5A
    bad.write_bytes(bytes(data))
    assert image_problem(bad) is None  # the cheap check on opening cannot see it
    loader, _ = image_folder_loader(str(tmp_path / "train"), 8, False, 16, 0, workers=1)
    with pytest.raises(DataError) as info:
        list(loader)
    assert "Original Traceback" in str(info.value)  # torch's re-raise from the worker
    assert user_message(info.value) == (f"image {bad} cannot be decoded (unrecognized data stream contents when "
                                        f"reading image file) although its header is fine: delete or re-save it, "
                                        f"then rerun the same command (the run resumes from its last checkpoint).")
