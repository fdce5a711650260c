"""YOLO-txt reader (Ultralytics data.yaml, Darknet obj.data), its warnings and errors, the VOC -> YOLO converter
and the recipe path (``data: {name: yolo}``)."""

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from hintdistill.build import build_data
from hintdistill.config import recipe_from_dict
from hintdistill.data.convert import voc_to_yolo
from hintdistill.data.voc import VOCDetection
from hintdistill.data.yolo_txt import YoloTxtDetection, label_path
from hintdistill.errors import DataError

torch.set_num_threads(1)

BCCD = Path(__file__).resolve().parents[2] / "shared/data/bccd"
needs_bccd = pytest.mark.skipif(not BCCD.exists(), reason=f"BCCD not found at {BCCD}")


def image(path: Path, size=(64, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 30)).save(path)
    return path


def label(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def ultralytics(root: Path, names=("cat", "dog"), **extra) -> Path:
    image(root / "images/train/a.jpg")
    label(root / "labels/train/a.txt", "1 0.5 0.5 0.25 0.5\n0 0.125 0.25 0.25 0.5\n")
    image(root / "images/train/sub/b.png", (32, 32))
    label(root / "labels/train/sub/b.txt", "")  # empty: background
    image(root / "images/train/c.jpg")  # no label file: background
    image(root / "images/val/d.jpg")
    label(root / "labels/val/d.txt", "0 0.5 0.5 1 1\n")
    config = {"path": ".", "train": "images/train", "val": "images/val", "names": names, **extra}
    (root / "data.yaml").write_text(yaml.safe_dump(config))
    return root / "data.yaml"


def test_ultralytics_layout_boxes_in_pixels_backgrounds_and_letterbox(tmp_path):
    ds = YoloTxtDetection(ultralytics(tmp_path, names={0: "cat", 1: "dog"}), "train", image_size=32)
    assert ds.classes == ["cat", "dog"]
    assert [r.image.name for r in ds.records] == ["a.jpg", "c.jpg", "b.png"]  # sorted paths, recursive
    # 64 x 32 image: dog centre (32, 16), size 16 x 16; cat centre (8, 8), size 16 x 16
    torch.testing.assert_close(ds.records[0].boxes, torch.tensor([[24.0, 8.0, 40.0, 24.0], [0.0, 0.0, 16.0, 16.0]]))
    assert ds.records[0].labels.tolist() == [1, 0]
    assert [len(r.boxes) for r in ds.records[1:]] == [0, 0]
    _, target = ds[0]  # letterboxed to 32: scale 0.5, 8 px grey above
    torch.testing.assert_close(target["boxes"], torch.tensor([[12.0, 12.0, 20.0, 20.0], [0.0, 8.0, 8.0, 16.0]]))
    # recipe split "test" with no test key: the val split, with a warning that says so
    with pytest.warns(UserWarning, match="no test split; testing on its validation split"):
        test = YoloTxtDetection(tmp_path, "test", image_size=32)  # the folder: its data.yaml
    torch.testing.assert_close(test.records[0].boxes, torch.tensor([[0.0, 0.0, 64.0, 32.0]]))


def test_ultralytics_split_as_a_list_of_folders_and_image_lists(tmp_path):
    ultralytics(tmp_path / "set", train=["images/train", "extra.txt"])
    (tmp_path / "set/extra.txt").write_text("./images/val/d.jpg\n")  # relative to the list file
    ds = YoloTxtDetection(tmp_path / "set", "train")
    assert [r.image.name for r in ds.records] == ["a.jpg", "c.jpg", "b.png", "d.jpg"]
    assert ds.records[-1].labels.tolist() == [0]


def test_darknet_obj_data_with_image_lists_and_both_label_rules(tmp_path):
    image(tmp_path / "data/obj/x1.jpg", (100, 50))
    label(tmp_path / "data/obj/x1.txt", "2 0.5 0.5 0.2 0.4\n")  # next to the image
    image(tmp_path / "data/JPEGImages/x2.jpg", (100, 50))
    label(tmp_path / "data/labels/x2.txt", "0 0.1 0.1 0.2 0.2\n")  # JPEGImages -> labels
    (tmp_path / "data/train.txt").write_text("data/obj/x1.jpg\r\ndata/JPEGImages/x2.jpg\n\n")  # relative to the root
    (tmp_path / "data/valid.txt").write_text(f"{tmp_path / 'data/obj/x1.jpg'}\n")  # absolute
    (tmp_path / "data/obj.names").write_text("a\nb\nc\n")
    (tmp_path / "data/obj.data").write_text("classes = 3\ntrain = data/train.txt\nvalid = data/valid.txt\n"
                                            "names = data/obj.names\nbackup = backup/  # weights\n")
    ds = YoloTxtDetection(tmp_path / "data/obj.data", "train")
    assert ds.classes == ["a", "b", "c"] and [r.labels.tolist() for r in ds.records] == [[2], [0]]
    torch.testing.assert_close(ds.records[0].boxes, torch.tensor([[40.0, 15.0, 60.0, 35.0]]))
    torch.testing.assert_close(ds.records[1].boxes, torch.tensor([[0.0, 0.0, 20.0, 10.0]]))
    val = YoloTxtDetection(tmp_path / "data", "val")  # val -> valid=
    assert [r.image.name for r in val.records] == ["x1.jpg"]
    assert label_path(tmp_path / "data/JPEGImages/x2.jpg") == tmp_path / "data/labels/x2.txt"


def test_bad_label_lines_are_skipped_and_reported_with_file_line_and_count(tmp_path):
    config = ultralytics(tmp_path)
    label(tmp_path / "labels/train/a.txt", "\n".join([
        "5 0.5 0.5 0.1 0.1",        # 1: class out of range
        "0 0.5 0.5 0 0.1",          # 2: zero width
        "0 1.2 0.5 0.1 0.1",        # 3: centre outside [0, 1]
        "0 0.5 0.5 0.1",            # 4: four fields
        "x 0.5 0.5 0.1 0.1",        # 5: not a number
        "1 0.998 0.5 0.008 0.5",    # 6: right edge 1.002, within tolerance: kept, clipped
        "0 0.9 0.5 0.4 0.5",        # 7: right edge 1.1: outside
        "1.5 0.5 0.5 0.1 0.1",      # 8: fractional class
        "0 0.5 0.5 0.5 0.5",        # 9: fine
    ]) + "\n")
    with pytest.warns(UserWarning) as record:
        ds = YoloTxtDetection(config, "train", image_size=32)
    messages = " | ".join(str(w.message) for w in record)
    assert "skipped 2 label lines that cannot be parsed" in messages
    assert "a.txt:4 ('0 0.5 0.5 0.1': 4 fields, expected 5" in messages and "a.txt:5" in messages
    assert "skipped 2 boxes with a class index out of range" in messages and "a.txt:1" in messages
    assert "a.txt:8" in messages
    assert "skipped 1 boxes with zero or negative size" in messages and "a.txt:2" in messages
    assert "skipped 2 boxes with coordinates outside [0, 1]" in messages and "a.txt:3" in messages
    assert "a.txt:7" in messages
    assert ds.records[0].labels.tolist() == [1, 0]
    torch.testing.assert_close(ds.records[0].boxes[0], torch.tensor([63.616, 8.0, 64.0, 24.0]))


def test_bad_configs_are_data_errors_naming_the_file_and_fix(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        YoloTxtDetection(tmp_path / "missing.yaml")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no YOLO data file"):
        YoloTxtDetection(tmp_path / "empty")
    config = ultralytics(tmp_path / "u", names=None)
    with pytest.raises(DataError, match="names no classes"):
        YoloTxtDetection(config)
    with pytest.raises(DataError, match="data.classes lists 3 names but .* has 2"):
        YoloTxtDetection(ultralytics(tmp_path / "v"), classes=["a", "b", "c"])
    with pytest.raises(DataError, match="nc is 3 but names lists 2"):
        YoloTxtDetection(ultralytics(tmp_path / "w", nc=3))
    with pytest.raises(DataError, match=r"no 'extra' split \(it has \['train', 'val'\]\)"):
        YoloTxtDetection(ultralytics(tmp_path / "x"), "extra")
    (tmp_path / "d.data").write_text("train = nowhere.txt\nnames\n")
    with pytest.raises(DataError, match=r"d.data:2: expected key = value"):
        YoloTxtDetection(tmp_path / "d.data")


def mini_voc(root: Path, splits: dict[str, int]) -> Path:
    """The first few images of each BCCD split, as a VOC folder of their own."""
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True)
    for split, n in splits.items():
        ids = (BCCD / "ImageSets/Main" / f"{split}.txt").read_text().split()[:n]
        for i in ids:
            shutil.copy(BCCD / "Annotations" / f"{i}.xml", root / "Annotations")
            shutil.copy(next((BCCD / "JPEGImages").glob(f"{i}.*")), root / "JPEGImages")
        (root / "ImageSets/Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


@needs_bccd
def test_voc_to_yolo_gives_back_the_voc_boxes_and_classes(tmp_path):
    voc = mini_voc(tmp_path / "voc", {"train": 3, "test": 2})
    counts = voc_to_yolo(voc, tmp_path / "yolo")
    assert counts == {"train": 3, "test": 2}
    config = yaml.safe_load((tmp_path / "yolo/data.yaml").read_text())
    assert config["train"] == "images/train" and "val" not in config
    for split in ("train", "test"):
        a, b = VOCDetection(voc, split), YoloTxtDetection(tmp_path / "yolo", split)
        assert a.classes == b.classes and len(a.records) == len(b.records)
        for ra, rb in zip(a.records, b.records, strict=True):
            assert ra.image.name == rb.image.name and ra.labels.tolist() == rb.labels.tolist()
            assert len(ra.boxes) > 5
            torch.testing.assert_close(ra.boxes, rb.boxes, atol=1e-3, rtol=0)  # 6 decimals of 640 px
    with pytest.raises(DataError, match="already exists"):
        voc_to_yolo(voc, tmp_path / "yolo")


@needs_bccd
def test_yolo_recipe_builds_detection_data(tmp_path):
    voc_to_yolo(mini_voc(tmp_path / "voc", {"train": 3, "test": 2}), tmp_path / "yolo")
    recipe = recipe_from_dict({
        "name": "y", "task": "detection",
        "data": {"name": "yolo", "data_dir": str(tmp_path / "yolo/data.yaml"), "image_size": 64, "workers": 0},
        "teacher": {"name": "yolo", "args": {"size": "n"}},
        "student": {"name": "yolo", "args": {"size": "n"}},
        "distill": [{"terms": [{"type": "detection"}]}]})
    data = build_data(recipe)
    assert data.num_classes == 3 and data.class_names == ["Platelets", "RBC", "WBC"]
    assert len(data.model_defaults["anchors"]) == 9
    images, targets = next(iter(data.test_loader))
    assert images.shape == (2, 3, 64, 64) and len(targets[0]["boxes"]) > 5
