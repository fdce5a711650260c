"""VOC / COCO readers: output format, letterbox, warnings for bad annotations, errors for bad folders."""

import json
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from hintdistill.data.voc import CocoDetection, VOCDetection, detection_collate
from hintdistill.detection.anchors import kmeans_anchors
from hintdistill.errors import DataError

# tiny tensors: more threads than one only fight the other jobs on a 2-core machine
torch.set_num_threads(1)

BCCD = Path(__file__).resolve().parents[2] / "shared/data/bccd"


def write_voc(root: Path, objects: dict, size=(64, 32)):
    """objects: image id → list of (name, xmin, ymin, xmax, ymax)."""
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for image_id, objs in objects.items():
        Image.new("RGB", size, (200, 100, 50)).save(root / "JPEGImages" / f"{image_id}.jpg")
        xml = "".join(f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
                      f"<ymax>{d}</ymax></bndbox></object>" for n, a, b, c, d in objs)
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename><size><width>{size[0]}</width>"
            f"<height>{size[1]}</height></size>{xml}</annotation>")
    (root / "ImageSets/Main/train.txt").write_text("\n".join(objects) + "\n")


def test_voc_output_format_and_letterbox(tmp_path):
    write_voc(tmp_path, {"a": [("dog", 10, 4, 30, 20)], "b": [("cat", 0, 0, 64, 32), ("dog", 1, 1, 9, 9)]})
    ds = VOCDetection(tmp_path, image_size=32)
    assert ds.classes == ["cat", "dog"] and len(ds) == 2
    image, target = ds[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    # 64 × 32 → scale 0.5 → 32 × 16, padded 8 px above and below
    torch.testing.assert_close(target["boxes"], torch.tensor([[5.0, 10.0, 15.0, 18.0]]))
    assert target["labels"].tolist() == [1] and target["scale"] == 0.5 and target["pad"].tolist() == [0, 8]
    images, targets = detection_collate([ds[0], ds[1]])
    assert images.shape == (2, 3, 32, 32) and targets[1]["labels"].tolist() == [0, 1]
    torch.manual_seed(0)
    train = VOCDetection(tmp_path, image_size=32, train=True, mosaic=True)
    image, target = train[1]
    assert image.shape == (3, 32, 32) and target["boxes"].shape[1] == 4


def test_voc_bad_boxes_and_unknown_classes_warn_with_file_and_count(tmp_path):
    write_voc(tmp_path, {"a": [("dog", 5, 5, 5, 5), ("dog", 70, 40, 90, 60), ("dog", 1, 1, 9, 9)],
                         "b": [("bird", 1, 1, 9, 9), ("cat", 1, 1, 9, 9)]})
    with pytest.warns(UserWarning) as record:
        ds = VOCDetection(tmp_path, image_size=32, classes=["cat", "dog"])
    messages = " | ".join(str(w.message) for w in record)
    assert "skipped 2 boxes with zero or negative size or outside the image" in messages and "a.xml" in messages
    assert "skipped 1 boxes with an unknown class name" in messages and "b.xml ('bird')" in messages
    assert [len(r.boxes) for r in ds.records] == [1, 1]


def test_voc_unreadable_image_is_dropped_when_opened_not_replaced(tmp_path):
    write_voc(tmp_path, {"a": [("dog", 1, 1, 9, 9)], "b": [("cat", 1, 1, 9, 9)]})
    (tmp_path / "JPEGImages/a.jpg").write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable or truncated images \(left out, not replaced\): "
                                         r"a\.jpg \(not an image file PIL can read\)"):
        ds = VOCDetection(tmp_path, image_size=32)
    assert len(ds) == 1 and ds.dropped == ["a.jpg (not an image file PIL can read)"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image, target = ds[0]
    assert target["labels"].tolist() == [0]  # b, the only image left, is a cat


def test_voc_missing_folder_or_split_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="Annotations/"):
        VOCDetection(tmp_path / "nowhere")
    write_voc(tmp_path, {"a": [("dog", 1, 1, 9, 9)]})
    with pytest.raises(DataError, match=r"ImageSets/Main/val\.txt.*split='val'"):
        VOCDetection(tmp_path, split="val")


def test_coco_reader(tmp_path):
    Image.new("RGB", (64, 32)).save(tmp_path / "x.jpg")
    (tmp_path / "ann.json").write_text(json.dumps({
        "images": [{"id": 7, "file_name": "x.jpg", "width": 64, "height": 32}],
        "annotations": [{"image_id": 7, "bbox": [10, 4, 20, 16], "category_id": 3, "iscrowd": 0},
                        {"image_id": 7, "bbox": [10, 4, 0, 16], "category_id": 3, "iscrowd": 0}],
        "categories": [{"id": 3, "name": "dog"}, {"id": 1, "name": "cat"}]}))
    with pytest.warns(UserWarning, match=r"skipped 1 boxes .*x\.jpg"):
        ds = CocoDetection(tmp_path, tmp_path / "ann.json", image_size=32)
    assert ds.classes == ["cat", "dog"]
    _, target = ds[0]
    torch.testing.assert_close(target["boxes"], torch.tensor([[5.0, 10.0, 15.0, 18.0]]))
    assert target["labels"].tolist() == [1]
    with pytest.raises(DataError, match="instances json"):
        CocoDetection(tmp_path, tmp_path / "missing.json")


@pytest.mark.skipif(not BCCD.exists(), reason=f"BCCD not found at {BCCD}")
def test_bccd_reads_with_its_degenerate_box_reported():
    with pytest.warns(UserWarning, match=r"BloodImage_00343\.xml \(RBC \[181, 329, 181, 329\]"):
        ds = VOCDetection(BCCD, "train", image_size=160)
    assert ds.classes == ["Platelets", "RBC", "WBC"] and len(ds) == 205
    image, target = ds[0]
    assert image.shape == (3, 160, 160) and len(target["boxes"]) == len(target["labels"]) > 0
    anchors = kmeans_anchors(ds.box_sizes(), iters=20)
    assert anchors.shape == (9, 2) and torch.all(anchors.prod(1).diff() >= 0)
