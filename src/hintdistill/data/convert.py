"""VOC folder -> Ultralytics-layout YOLO-txt folder, so the YOLO-txt reader can be exercised on real data.

``voc_to_yolo(voc, out)`` writes ``out/data.yaml`` (``path: .``, ``train/val/test: images/<split>``,
``names``), ``out/images/<split>/`` (the images, copied) and ``out/labels/<split>/<stem>.txt`` (one
``class cx cy w h`` line per box, normalised by the image's real size, 6 decimals) for every split listed in
``ImageSets/Main``. Boxes are the ones ``VOCDetection`` reads (bad ones skipped with its warnings), so the
YOLO reader gives back the same boxes to rounding. The folder appears whole or not at all.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import yaml
from PIL import Image

from ..errors import DataError
from .voc import VOCDetection


def voc_to_yolo(voc: str | Path, out: str | Path, splits: Sequence[str] = ("train", "val", "test"),
                classes: Sequence[str] | None = None) -> dict[str, int]:
    """Convert the ``splits`` of a VOC folder that exist into a new YOLO-txt folder ``out``; returns the
    number of images written per split."""
    voc, out = Path(voc), Path(out)
    if out.exists():
        raise DataError(f"{out} already exists; give a new folder (the converter never overwrites)")
    present = [s for s in splits if (voc / "ImageSets/Main" / f"{s}.txt").is_file()]
    if not present:
        raise DataError(f"{voc}/ImageSets/Main has none of {list(splits)} (.txt); is {voc} a VOC folder?")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    counts = {}
    try:
        names = None
        for split in present:
            ds = VOCDetection(voc, split, classes=classes)
            names = ds.classes
            counts[split] = _write_split(ds, tmp, split)
        config = {"path": ".", **{s: f"images/{s}" for s in present}, "names": names}
        (tmp / "data.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return counts


def _write_split(ds: VOCDetection, root: Path, split: str) -> int:
    images, labels = root / "images" / split, root / "labels" / split
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for record in ds.records:
        with Image.open(record.image) as im:
            width, height = im.size
        shutil.copyfile(record.image, images / record.image.name)
        lines = []
        for (x1, y1, x2, y2), c in zip(record.boxes.tolist(), record.labels.tolist(), strict=True):
            lines.append(f"{c} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                         f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}\n")
        (labels / f"{record.image.stem}.txt").write_text("".join(lines))
    return len(ds.records)
