"""YOLO-txt detection data: Darknet's ``obj.data`` and Ultralytics' ``data.yaml`` layouts.

A label file holds one object per line, ``class cx cy w h``: a 0-based class index, then the box centre and
size as fractions of the image width and height. An image's label file is found by the rule both tools use:
the last ``images`` (or ``JPEGImages``) folder of its path replaced by ``labels`` and the suffix by ``.txt``;
failing that, the ``.txt`` next to the image. An image without a label file, or with an empty one, is a
background image.

- Darknet ``obj.data``: ``key = value`` lines; ``train=`` / ``valid=`` (and optionally ``test=``) name image
  list files (one image path per line), ``names=`` a file of class names (one per line), ``classes=`` their
  count. Relative paths are looked up from the ``.data`` file's folder, the current folder, then the
  ``.data`` file's parent folder (Darknet runs from its own root, with ``data/obj.data``).
- Ultralytics ``data.yaml``: ``path`` (the root; relative to the yaml's folder, default that folder),
  ``train`` / ``val`` / ``test`` (an image folder, searched recursively, an image list ``.txt``, or a list
  of those, relative to ``path``), ``names`` (a list, or a dict ``{index: name}``), optional ``nc``.

Recipe splits map to keys by name: ``train`` -> ``train``; ``val`` -> ``val`` (Ultralytics) or ``valid``
(Darknet); ``test`` -> ``test`` where the file has one, else the validation list with a warning (Darknet's
``detector map`` and Ultralytics' ``val`` test on it too); any other split name is looked up as a key.

Bad label lines never stop an epoch: an unparsable line or one without 5 fields, a class index out of range,
a coordinate outside [0, 1] by more than ``TOLERANCE`` and a box of zero size are skipped, with one warning
per kind naming ``file:line`` and the total count (as ``VOCDetection`` does). Boxes within the tolerance are
clipped to the image.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from .voc import DetectionDataset, Issues, Record

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
# Converters that map VOC's 1-based inclusive corners overshoot by a pixel (1/416 = 0.0024); more than this
# is a wrong label, not rounding.
TOLERANCE = 0.005
CONFIG_NAMES = ("data.yaml", "data.yml", "obj.data")
SPLIT_KEYS = {"train": ("train",), "val": ("val", "valid"), "valid": ("valid", "val"), "test": ("test",)}


@dataclass
class YoloLayout:
    """What a ``data.yaml`` or ``obj.data`` file says: its kind, split entries and class names."""

    config: Path
    kind: str  # "ultralytics" or "darknet"
    splits: dict[str, list[str]]
    names: list[str] | None
    bases: list[Path] = field(default_factory=list)  # where relative paths are looked up, in order

    def split_entries(self, split: str) -> list[str]:
        for key in SPLIT_KEYS.get(split, (split,)):
            if self.splits.get(key):
                return self.splits[key]
        if split == "test":
            val = self.split_entries("val") if any(self.splits.get(k) for k in SPLIT_KEYS["val"]) else None
            if val:
                warnings.warn(f"{self.config} has no test split; testing on its validation split", stacklevel=3)
                return val
        raise DataError(f"{self.config} has no '{split}' split (it has {sorted(k for k, v in self.splits.items() if v)}); "
                        f"add {'/'.join(SPLIT_KEYS.get(split, (split,)))} to it or set data.{split}_split")

    def resolve(self, entry: str, first: Path | None = None) -> Path:
        """``entry`` as an absolute path, else the first base where it exists (else under the first base)."""
        path = Path(entry).expanduser()
        if path.is_absolute():
            return path
        bases = ([first] if first else []) + self.bases
        return next((b / path for b in bases if (b / path).exists()), bases[0] / path)


def find_config(path: Path) -> Path:
    """``path`` itself if it is a file, else the one ``data.yaml`` / ``obj.data`` / ``*.data`` in the folder."""
    if path.is_file():
        return path
    for name in CONFIG_NAMES:
        if (path / name).is_file():
            return path / name
    found = sorted(path.glob("*.data")) + sorted(path.glob("*.yaml"))
    if len(found) == 1:
        return found[0]
    raise DataError(f"{path} holds {'no' if not found else 'several'} YOLO data file(s) "
                    f"({', '.join(p.name for p in found) or 'none of data.yaml, obj.data, *.data'}); set "
                    f"data.data_dir to the data.yaml (Ultralytics) or obj.data (Darknet) file itself")


def read_layout(path: str | Path) -> YoloLayout:
    """Parse a ``data.yaml`` (Ultralytics) or ``obj.data`` (Darknet) file, given it or its folder."""
    config = find_config(Path(path).expanduser())
    if config.suffix in (".yaml", ".yml"):
        return _read_ultralytics(config)
    return _read_darknet(config)


def _read_ultralytics(config: Path) -> YoloLayout:
    try:
        tree = yaml.safe_load(config.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise DataError(f"cannot read {config} as YAML: {e}") from e
    if not isinstance(tree, dict):
        raise DataError(f"{config} must be a mapping with path, train, val, test and names")
    root = Path(str(tree.get("path") or ".")).expanduser()
    root = root if root.is_absolute() else config.parent / root
    splits = {}
    for key in ("train", "val", "test"):
        value = tree.get(key)
        splits[key] = [str(v) for v in value] if isinstance(value, list) else [str(value)] if value else []
    names = tree.get("names")
    if isinstance(names, dict):
        try:
            keyed = {int(k): str(v) for k, v in names.items()}
        except ValueError:
            keyed = {}
        if sorted(keyed) != list(range(len(names))):
            raise DataError(f"{config}: names as a mapping must have the keys 0..{len(names) - 1}, got {list(names)}")
        names = [keyed[i] for i in range(len(keyed))]
    elif names is not None and not isinstance(names, list):
        raise DataError(f"{config}: names must be a list or a mapping {{index: name}}, got {names!r}")
    names = [str(n) for n in names] if names is not None else None
    if names is not None and "nc" in tree and int(tree["nc"]) != len(names):
        raise DataError(f"{config}: nc is {tree['nc']} but names lists {len(names)} classes; make them agree")
    return YoloLayout(config, "ultralytics", splits, names, [root, Path.cwd()])


def _read_darknet(config: Path) -> YoloLayout:
    try:
        lines = config.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {config}: {e}") from e
    values = {}
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if "=" not in line:
            raise DataError(f"{config}:{number}: expected key = value (train=, valid=, names=, classes=), got {line!r}")
        key, value = (s.strip() for s in line.split("=", 1))
        values[key] = value
    layout = YoloLayout(config, "darknet", {k: [values[k]] for k in ("train", "valid", "test") if values.get(k)},
                        None, [config.parent, Path.cwd(), config.parent.parent])
    if values.get("names"):
        names_file = layout.resolve(values["names"])
        try:
            layout.names = [n.strip() for n in names_file.read_text().splitlines() if n.strip()]
        except OSError as e:
            raise DataError(f"{config}: names = {values['names']} cannot be read ({names_file}: {e})") from e
    if layout.names is not None and values.get("classes") and int(values["classes"]) != len(layout.names):
        raise DataError(f"{config}: classes = {values['classes']} but {values['names']} lists {len(layout.names)} "
                        f"names; make them agree")
    return layout


def list_images(layout: YoloLayout, entry: str) -> list[Path]:
    """The images an entry names: a folder (recursively), or a list file of image paths."""
    path = layout.resolve(entry)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
        return [path]
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{layout.config}: the split entry '{entry}' ({path}) is neither an image folder nor a "
                        f"readable image list ({e})") from e
    return [layout.resolve(s, path.parent) for s in (line.strip() for line in lines) if s and not s.startswith("#")]


def label_path(image: Path) -> Path:
    """The label file of an image: the last ``images``/``JPEGImages`` folder -> ``labels``, else alongside."""
    parts = image.parts[:-1]
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in ("images", "JPEGImages"):
            candidate = Path(*parts[:i], "labels", *parts[i + 1:], image.stem + ".txt")
            if candidate.is_file():
                return candidate
            break
    return image.with_suffix(".txt")


def parse_label_line(line: str, num_classes: int) -> tuple[tuple[int, float, float, float, float] | None, str, str]:
    """``(class, x1, y1, x2, y2)`` in fractions of the image, or None with the issue kind and the reason."""
    fields = line.split()
    if len(fields) != 5:
        return None, "label lines that cannot be parsed", f"{len(fields)} fields, expected 5: class cx cy w h"
    try:
        number = float(fields[0])
        cx, cy, w, h = (float(v) for v in fields[1:])
    except ValueError:
        return None, "label lines that cannot be parsed", "not numbers"
    if not number.is_integer() or not 0 <= number < num_classes:
        return None, "boxes with a class index out of range", f"class {fields[0]}, expected 0..{num_classes - 1}"
    if w <= 0 or h <= 0:
        return None, "boxes with zero or negative size", "w or h <= 0"
    corners = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    if not all(-TOLERANCE <= v <= 1 + TOLERANCE for v in (cx, cy, w, h, *corners)):
        return None, "boxes with coordinates outside [0, 1]", "a coordinate or box edge outside [0, 1]"
    x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) for v in corners)
    return (int(number), x1, y1, x2, y2), "", ""


def read_labels(path: Path, width: int, height: int, num_classes: int,
                issues: Issues) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (xyxy, pixels of the original image) and labels of one label file; bad lines go to ``issues``."""
    boxes, labels = [], []
    try:
        lines = path.read_text().splitlines() if path.is_file() else []
    except (OSError, UnicodeDecodeError) as e:
        issues.add("unreadable label files (their images used as background)", f"{path} ({e})")
        lines = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parsed, kind, why = parse_label_line(line, num_classes)
        if parsed is None:
            issues.add(kind, f"{path}:{number} ({line.strip()!r}: {why})")
            continue
        c, x1, y1, x2, y2 = parsed
        boxes.append([x1 * width, y1 * height, x2 * width, y2 * height])
        labels.append(c)
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(labels, dtype=torch.long)


class YoloTxtDetection(DetectionDataset):
    """One split of a YOLO-txt data set (``data.yaml`` or ``obj.data``, or the folder holding it).

    ``classes``: names in label order; by default the file's ``names``. Given both, their counts must agree
    (``classes`` then renames); given neither, it is an error (label files hold only indices).
    """

    def __init__(self, config: str | Path, split: str = "train", image_size: int = 320, train: bool = False,
                 classes: Sequence[str] | None = None, mosaic: bool | float = False):
        if not Path(config).expanduser().exists():
            raise DataError(f"{config} does not exist; give a data.yaml (Ultralytics) or obj.data (Darknet) file "
                            f"or the folder holding it")
        layout = read_layout(config)
        classes = _classes(layout, classes)
        source = f"YoloTxtDetection({layout.config}, split='{split}')"
        issues, records = Issues(source), []
        for entry in layout.split_entries(split):
            for image in list_images(layout, entry):
                try:
                    with Image.open(image) as im:
                        width, height = im.size
                except FileNotFoundError:
                    issues.add("images with a missing image file", str(image))
                    continue
                except (OSError, UnidentifiedImageError, ValueError) as e:
                    issues.add("images that cannot be opened", f"{image} ({e})")
                    continue
                boxes, labels = read_labels(label_path(image), width, height, len(classes), issues)
                records.append(Record(image, boxes, labels))
        if not records:
            raise DataError(f"{source}: no readable images in {layout.split_entries(split)}; check the paths "
                            f"(relative ones are looked up from {', '.join(str(b) for b in layout.bases)})")
        issues.report()
        super().__init__(records, classes, image_size, train, mosaic, source)


def _classes(layout: YoloLayout, classes: Sequence[str] | None) -> list[str]:
    if classes is None:
        if layout.names is None:
            raise DataError(f"{layout.config} names no classes; add names (a list) to it, or list them in data.classes")
        return layout.names
    if layout.names is not None and len(classes) != len(layout.names):
        raise DataError(f"data.classes lists {len(classes)} names but {layout.config} has {len(layout.names)} "
                        f"({layout.names}); make them agree or leave data.classes out")
    return list(classes)
