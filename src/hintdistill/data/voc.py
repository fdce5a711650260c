"""Detection data sets: any Pascal VOC folder (``VOCDetection``) or COCO json (``CocoDetection``).

Both return ``(image, target)``: ``image`` a float tensor ``[3, S, S]`` in 0..1, letterboxed (longest side
resized to S, the rest padded with grey 114); ``target`` a dict with ``boxes`` (float ``[N, 4]``, xyxy in
pixels of the letterboxed image), ``labels`` (long ``[N]``, 0-based index into ``dataset.classes``),
``image_id``, ``orig_size`` (h, w), ``scale`` and ``pad`` (left, top) to map boxes back to the original.
With ``train=True``: horizontal flip and colour jitter (and mosaic with probability ``mosaic``), all
through ``torchvision.transforms.v2`` with ``tv_tensors.BoundingBoxes`` so the boxes follow the image.

Bad annotations never stop an epoch: a box with zero or negative size or outside the image, an unknown
class name, a missing or unreadable annotation or image is skipped with one warning per kind that names
the files and the total count. Images are checked when the data set is opened (header and end-of-file
marker, ``sanity.image_problem``): an unreadable or truncated image is dropped and counted in
``dataset.dropped`` (train and test alike), never replaced by another image, so a test set's numbers do not
move; one that still fails to decode mid-epoch is a DataError naming the file. With no ``classes`` given, a
class name that looks like a typo of a frequent one (``RBc`` next to 300 ``RBC``) is a DataError naming the
files (``sanity.check_class_names``).
"""

from __future__ import annotations

import glob
import json
import math
import random
import warnings
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ..errors import DataError
from .sanity import check_class_names, scan_images

PAD_VALUE = 114


@dataclass
class Record:
    image: Path
    boxes: torch.Tensor  # [N, 4] xyxy pixels of the original image
    labels: torch.Tensor  # [N]


class Issues:
    """Collects skipped boxes and images by kind; ``report`` emits one warning per kind with the count."""

    def __init__(self, source: str):
        self.source = source
        self.items: dict[str, list[str]] = defaultdict(list)

    def add(self, kind: str, detail: str) -> None:
        self.items[kind].append(detail)

    def report(self) -> None:
        for kind, details in self.items.items():
            shown = "; ".join(details[:10]) + (f"; ... and {len(details) - 10} more" if len(details) > 10 else "")
            warnings.warn(f"{self.source}: skipped {len(details)} {kind}: {shown}", stacklevel=3)


def check_box(box: Sequence[float], width: float | None, height: float | None) -> tuple[list[float] | None, str]:
    """The box clipped to the image, or None with the reason it is unusable."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 <= x1 or y2 <= y1:
        return None, "zero or negative size"
    if width is not None and height is not None:
        x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
        y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
        if x2 <= x1 or y2 <= y1:
            return None, "outside the image"
    return [x1, y1, x2, y2], ""


def detection_collate(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """Stack images into ``[B, 3, S, S]``; keep targets as a list of dicts (box counts differ)."""
    images, targets = zip(*batch, strict=True)
    return torch.stack(images), list(targets)


class DetectionDataset(Dataset):
    """Records (image path, boxes, labels) → letterboxed, optionally augmented samples."""

    def __init__(self, records: list[Record], classes: list[str], image_size: int = 320, train: bool = False,
                 mosaic: bool | float = False, source: str = "dataset", dropped: list[str] | None = None):
        self.records, self.classes = records, list(classes)
        self.dropped = list(dropped or [])  # "file (reason)" of each image left out when the set was opened
        self.image_size, self.train, self.source = image_size, train, source
        self.mosaic = float(mosaic) if train else 0.0
        self.augment = T.Compose([T.RandomHorizontalFlip(0.5),
                                  T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.015)])
        self.sanitize = T.Compose([T.ClampBoundingBoxes(), T.SanitizeBoundingBoxes(min_size=2)])

    def __len__(self) -> int:
        return len(self.records)

    def box_sizes(self) -> torch.Tensor:
        """(w, h) of every box as letterboxed to ``image_size`` (for k-means anchors), from the annotations
        and image headers only."""
        sizes = []
        for r in self.records:
            if len(r.boxes):
                h, w = self._image_size_of(r)
                sizes.append((r.boxes[:, 2:] - r.boxes[:, :2]) * self.image_size / max(h, w))
        return torch.cat(sizes) if sizes else torch.zeros(0, 2)

    def _image_size_of(self, r: Record) -> tuple[int, int]:
        with Image.open(r.image) as im:
            return im.height, im.width

    def load(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.BoundingBoxes, torch.Tensor]:
        r = self.records[index]
        with Image.open(r.image) as im:
            image = tv_tensors.Image(TF.pil_to_tensor(im.convert("RGB")))
        boxes = tv_tensors.BoundingBoxes(r.boxes.clone(), format="XYXY", canvas_size=tuple(image.shape[-2:]))
        return image, boxes, r.labels.clone()

    def letterbox(self, image, boxes):
        """Resize the longest side to ``image_size``, pad the rest; returns image, boxes, scale, (left, top)."""
        h, w = image.shape[-2:]
        s = self.image_size
        scale = s / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        image, boxes = TF.resize(image, [nh, nw], antialias=True), TF.resize(boxes, [nh, nw])
        left, top = (s - nw) // 2, (s - nh) // 2
        padding = [left, top, s - nw - left, s - nh - top]
        return TF.pad(image, padding, fill=PAD_VALUE), TF.pad(boxes, padding), scale, (left, top)

    def load_checked(self, index: int):
        """``load(index)``; an image that passed the check on opening but fails to decode now is a DataError:
        substituting another image would silently change the data (a test image counted twice)."""
        try:
            return (index, *self.load(index))
        except (RuntimeError, OSError, ValueError, SyntaxError) as e:
            raise DataError(f"{self.source}: image {self.records[index].image} cannot be decoded ({e}) although its "
                            f"header is fine. Delete or re-save it, then rerun the same command: the run resumes "
                            f"from its last checkpoint.") from None

    def sample(self, index: int, augment: bool = True) -> tuple[dict, float, tuple[int, int], tuple[int, int], int]:
        index, image, boxes, labels = self.load_checked(index)
        orig = tuple(image.shape[-2:])
        image, boxes, scale, pad = self.letterbox(image, boxes)
        if self.train and augment:  # after the resize: jitter on S × S pixels is cheaper than on the original
            image, boxes = self.augment(image, boxes)
        return {"image": image, "boxes": boxes, "labels": labels}, scale, pad, orig, index

    def mosaic_sample(self, index: int) -> tuple[dict, int]:
        """Four letterboxed images tiled on a 2S × 2S canvas, cropped to a random S × S window, then flipped
        and jittered once (jittering the four parts first would cost four times as much: colour jitter is
        most of the data time on CPU)."""
        s = self.image_size
        canvas = torch.full((3, 2 * s, 2 * s), PAD_VALUE, dtype=torch.uint8)
        all_boxes, all_labels = [], []
        for k, i in enumerate([index] + random.choices(range(len(self)), k=3)):
            part, *_, i = self.sample(i, augment=False)
            index = i if k == 0 else index
            dx, dy = (k % 2) * s, (k // 2) * s
            canvas[:, dy:dy + s, dx:dx + s] = part["image"]
            all_boxes.append(part["boxes"].as_subclass(torch.Tensor) + torch.tensor([dx, dy, dx, dy]))
            all_labels.append(part["labels"])
        x0, y0 = random.randint(0, s), random.randint(0, s)
        image = TF.crop(tv_tensors.Image(canvas), y0, x0, s, s)
        boxes = tv_tensors.BoundingBoxes(torch.cat(all_boxes), format="XYXY", canvas_size=(2 * s, 2 * s))
        image, boxes = self.augment(image, TF.crop(boxes, y0, x0, s, s))
        return {"image": image, "boxes": boxes, "labels": torch.cat(all_labels)}, index

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        scale, pad, orig = 1.0, (0, 0), None
        if self.mosaic > 0 and random.random() < self.mosaic:
            sample, index = self.mosaic_sample(index)
        else:
            sample, scale, pad, orig, index = self.sample(index)
        sample = self.sanitize(sample)
        image = TF.to_dtype(sample["image"], torch.float32, scale=True).as_subclass(torch.Tensor)
        if orig is None:
            orig = tuple(image.shape[-2:])
        target = {"boxes": sample["boxes"].as_subclass(torch.Tensor).float().reshape(-1, 4),
                  "labels": sample["labels"].long(), "image_id": index,
                  "orig_size": torch.tensor(orig), "scale": scale, "pad": torch.tensor(pad)}
        return image, target


def _voc_class_names(annotations: Path) -> list[str]:
    """Every class name in ``Annotations/`` (sorted); a name that looks like a typo of a frequent one is an
    error naming its files."""
    counts: Counter = Counter()
    files: dict[str, list[str]] = defaultdict(list)
    for xml in annotations.glob("*.xml"):
        try:
            names = [(o.findtext("name") or "").strip() for o in ET.parse(xml).getroot().iter("object")]
        except (ET.ParseError, OSError, ValueError):
            continue  # reported when the split is parsed
        for name in filter(None, names):
            counts[name] += 1
            files[name].append(xml.name)
    check_class_names(counts, files, annotations)
    return sorted(counts)


def drop_unreadable(records: list[Record], issues: Issues) -> tuple[list[Record], list[str]]:
    """The records whose image can be read, and "file (reason)" for each one left out (counted, not replaced)."""
    problems = scan_images([r.image for r in records])
    dropped = [f"{p.name} ({why})" for p, why in problems.items()]
    for detail in dropped:
        issues.add("unreadable or truncated images (left out, not replaced)", detail)
    return [r for r in records if r.image not in problems], dropped


def _read_ids(split_file: Path) -> list[str]:
    try:
        return split_file.read_bytes().decode("utf-8-sig").split()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{split_file} cannot be read as a text list of image ids ({e}); it must hold one image "
                        f"id per line (the file names in JPEGImages/ without extension).") from None


def _find_image(img_dir: Path, filename: str | None, image_id: str) -> Path:
    # only the base name: an annotation must not point outside JPEGImages/
    image = img_dir / Path((filename or "").strip() or f"{image_id}.jpg").name
    if not image.is_file() and "/" not in image_id:
        image = next(iter(sorted(img_dir.glob(f"{glob.escape(image_id)}.*"))), image)
    return image


def _image_size(tree: ET.Element) -> tuple[float | None, float | None]:
    try:
        width, height = float(tree.findtext("size/width") or "nan"), float(tree.findtext("size/height") or "nan")
    except ValueError:
        return None, None
    ok = math.isfinite(width) and math.isfinite(height) and width > 0 and height > 0
    return (width, height) if ok else (None, None)


def _no_records(root: Path, split: str, n_ids: int, issues: Issues, img_dir: Path) -> DataError:
    if not any(p.is_file() for p in img_dir.iterdir()):
        return DataError(f"{img_dir} is empty: put the images there, named as in the annotations' <filename> "
                         f"(or <image id>.jpg).")
    why = "; ".join(f"{len(v)} {k} (e.g. {v[0]})" for k, v in issues.items.items()) or "the split lists no ids"
    return DataError(f"no usable image in {root}, split '{split}' ({n_ids} ids listed): {why}. Fix the files named "
                     f"or check that JPEGImages/, Annotations/ and ImageSets/Main/{split}.txt belong together.")


class VOCDetection(DetectionDataset):
    """A Pascal VOC folder: ``Annotations/*.xml``, ``JPEGImages/*``, ``ImageSets/Main/<split>.txt``.

    ``classes``: the class names in label order; by default every name found in ``Annotations/`` (all
    splits, sorted), so train and test splits of one folder agree.
    """

    def __init__(self, root: str | Path, split: str = "train", image_size: int = 320, train: bool = False,
                 classes: Sequence[str] | None = None, mosaic: bool | float = False):
        root = Path(root)
        ann_dir, img_dir, split_file = root / "Annotations", root / "JPEGImages", root / "ImageSets/Main" / f"{split}.txt"
        for path in (root, ann_dir, img_dir, split_file):
            if not path.exists():
                raise DataError(f"{path} does not exist. A VOC folder must contain Annotations/ (one .xml per "
                                f"image), JPEGImages/ and ImageSets/Main/<split>.txt (one image id per line); "
                                f"check the root and split='{split}'.")
        source = f"VOCDetection({root}, split='{split}')"
        classes = list(classes) if classes is not None else _voc_class_names(ann_dir)
        index = {c: i for i, c in enumerate(classes)}
        issues, records = Issues(source), []
        image_ids = _read_ids(split_file)
        for image_id in image_ids:
            xml = ann_dir / f"{image_id}.xml"
            try:
                tree = ET.parse(xml).getroot()
            except (OSError, ValueError, ET.ParseError) as e:
                issues.add("images with a missing or unreadable annotation", f"{xml.name} ({e})")
                continue
            image = _find_image(img_dir, tree.findtext("filename"), image_id)
            if not image.is_file():
                issues.add("images with a missing image file", f"{xml.name} ({image.name})")
                continue
            width, height = _image_size(tree)
            boxes, labels = [], []
            for obj in tree.iter("object"):
                name = (obj.findtext("name") or "").strip()
                try:
                    raw = [float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
                    if not all(map(math.isfinite, raw)):
                        raise ValueError("not finite")
                except (TypeError, ValueError):
                    issues.add("boxes without valid coordinates", f"{xml.name} ({name})")
                    continue
                if name not in index:
                    issues.add("boxes with an unknown class name", f"{xml.name} ('{name}')")
                    continue
                box, why = check_box(raw, width, height)
                if box is None:
                    issues.add("boxes with zero or negative size or outside the image",
                               f"{xml.name} ({name} {[int(v) for v in raw]}: {why})")
                    continue
                boxes.append(box)
                labels.append(index[name])
            records.append(Record(image, torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                  torch.tensor(labels, dtype=torch.long)))
        records, dropped = drop_unreadable(records, issues)
        if not records:
            raise _no_records(root, split, len(image_ids), issues, img_dir)
        issues.report()
        super().__init__(records, classes, image_size, train, mosaic, source, dropped)


class CocoDetection(DetectionDataset):
    """COCO-json detection data: ``images_dir`` and an instances json (``images``, ``annotations`` with
    ``bbox`` = [x, y, w, h], ``categories``). ``classes`` default: category names ordered by id. Crowd
    annotations are left out."""

    def __init__(self, images_dir: str | Path, annotation_json: str | Path, image_size: int = 320,
                 train: bool = False, classes: Sequence[str] | None = None, mosaic: bool | float = False):
        images_dir, annotation_json = Path(images_dir), Path(annotation_json)
        for path in (images_dir, annotation_json):
            if not path.exists():
                raise DataError(f"{path} does not exist. COCO data needs an images folder and an instances json "
                                f"with 'images', 'annotations' and 'categories'.")
        try:
            data = json.loads(annotation_json.read_text())
            images, annotations, categories = data["images"], data.get("annotations", []), data["categories"]
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{annotation_json} is not a COCO instances json ({e}); it needs 'images', "
                            f"'annotations' and 'categories'.") from e
        source = f"CocoDetection({annotation_json})"
        cat_names = {c["id"]: c["name"] for c in categories}
        classes = list(classes) if classes is not None else [cat_names[k] for k in sorted(cat_names)]
        index = {c: i for i, c in enumerate(classes)}
        per_image = defaultdict(list)
        for a in annotations:
            per_image[a["image_id"]].append(a)
        issues, records = Issues(source), []
        for im in images:
            path = images_dir / im["file_name"]
            if not path.exists():
                issues.add("images with a missing image file", im["file_name"])
                continue
            boxes, labels = [], []
            for a in per_image[im["id"]]:
                if a.get("iscrowd", 0):
                    continue
                name = cat_names.get(a.get("category_id"))
                if name not in index:
                    issues.add("boxes with an unknown category", f"{im['file_name']} (category {a.get('category_id')})")
                    continue
                x, y, w, h = (float(v) for v in a["bbox"])
                box, why = check_box([x, y, x + w, y + h], im.get("width"), im.get("height"))
                if box is None:
                    issues.add("boxes with zero or negative size or outside the image",
                               f"{im['file_name']} ({name} {a['bbox']}: {why})")
                    continue
                boxes.append(box)
                labels.append(index[name])
            records.append(Record(path, torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                  torch.tensor(labels, dtype=torch.long)))
        records, dropped = drop_unreadable(records, issues)
        issues.report()
        super().__init__(records, classes, image_size, train, mosaic, source, dropped)

