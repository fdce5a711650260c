"""A detection data set the project makes itself: Fashion-MNIST items on cluttered backgrounds.

Each image (``image_size`` square) is a colour gradient with low-frequency noise, stripes and random shapes,
the gradient's end colours and the shapes' fills muted (a grey level plus at most ``MUTED_CHROMA`` per channel),
then up to ``distractors`` unlabelled fragments of items of the classes not chosen (a sleeve, a sole), then
0..``max_objects`` items of the chosen classes, each tinted one colour that stands out from the background
under it, its longest side drawn log-uniformly from ``min_object_size`` to ``max_object_fraction`` of the
image (about 10 px to half the image by default), then pixel noise. The clutter is muted on purpose: with
its colours drawn from the whole RGB cube (generator version 1) every image had its own overall colour and
the flat shapes looked like the flat-tinted items, and a YOLO-n trained from scratch on the 300 images learned
nothing (192 px, 20 epochs, no augmentation: mAP@0.5 0.0015; 0.12 with muted clutter). A later item may hide
at most ``max_occlusion`` of an earlier one; the box is the extent of the item's pixels still visible, as pixel
edges (left/top inclusive, right/bottom exclusive), which is how ``VOCDetection`` reads coordinates. Classes
are balanced per split (the labels of a split are a shuffled round-robin). Items come from disjoint parts of
Fashion-MNIST: train images from its first 50,000 training items, val from the last 10,000, test from its
test set.

The result is a VOC folder (``JPEGImages``, ``Annotations``, ``ImageSets/Main/{train,val,test}.txt``) plus
``synthetic.json`` recording the parameters; ``ensure_synthetic`` reuses a folder made with the same
parameters and regenerates it (atomically: a temporary folder renamed into place) when they change.
Everything is a function of ``seed``: the same parameters give byte-identical files.
"""

from __future__ import annotations

import colorsys
import functools
import json
import os
import shutil
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..config import SyntheticConfig
from ..errors import ConfigError, DataError
from .classification import CLASS_NAMES, load_idx_dataset

GENERATOR_VERSION = 2  # bump when the drawing changes, so existing folders regenerate
INFO_FILE = "synthetic.json"
SLUGS = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
SPLITS = ("train", "val", "test")
ITEM_THRESHOLD = 20  # Fashion-MNIST items sit on exact black; above this a pixel belongs to the item
MIN_CONTRAST = 90.0  # RGB distance between an item's tint and the mean background under it, when reachable
MUTED_CHROMA = 25.0  # most a background colour strays from its grey level, per channel (items are vivid_colour)


def synthetic_classes(spec: SyntheticConfig) -> list[str]:
    """The chosen classes as short names (``tshirt``, ``ankle_boot``...), in the order given."""
    aliases = {s: s for s in SLUGS} | {n.lower(): s for n, s in zip(CLASS_NAMES["fashion_mnist"], SLUGS, strict=True)}
    names = []
    for name in spec.classes:
        slug = aliases.get(name.lower().replace(" ", "_"))
        if slug is None:
            raise ConfigError(f"synthetic classes (data.synthetic.classes, --classes): '{name}' is not a Fashion-MNIST class; choose from "
                              f"{', '.join(SLUGS)}")
        if slug in names:
            raise ConfigError(f"data.synthetic.classes names '{slug}' twice")
        names.append(slug)
    return names


@dataclass
class ItemPool:
    """Fashion-MNIST items of one split, by class; the chosen classes are objects, the rest distractors."""

    items: np.ndarray  # [N, 28, 28] uint8
    by_class: list[np.ndarray]  # per chosen class, indices into items
    distractors: np.ndarray  # indices of items of the other classes (all items if every class is chosen)

    @classmethod
    def from_arrays(cls, items: np.ndarray, labels: np.ndarray, chosen: list[int]) -> ItemPool:
        """A pool from items and their Fashion-MNIST labels; ``chosen`` are the object classes' labels."""
        by_class = [np.flatnonzero(labels == c) for c in chosen]
        others = np.flatnonzero(~np.isin(labels, chosen))
        return cls(items, by_class, others if len(others) else np.arange(len(items)))

    def item(self, label: int, rng: np.random.Generator) -> np.ndarray:
        """A random item of chosen class ``label``."""
        return self.items[rng.choice(self.by_class[label])]


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A cluttered ``[size, size, 3]`` float canvas: gradient, blotchy noise, maybe stripes, random shapes, in
    muted colours (``muted_colour``) so that the vivid items are the saturated things in it, not the clutter."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    t = np.cos(angle) * xx + np.sin(angle) * yy
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    c0, c1 = muted_colour(rng, 70, 190), muted_colour(rng, 70, 190)
    canvas = c0 + (c1 - c0) * t[..., None]
    k = int(rng.integers(3, 13))
    grid = rng.uniform(-1, 1, (k, k, 3)).astype(np.float32)
    blotches = np.stack([np.asarray(Image.fromarray(grid[..., c], mode="F").resize((size, size), Image.BICUBIC))
                         for c in range(3)], -1)
    canvas += rng.uniform(10, 60) * blotches
    if rng.random() < 0.5:
        b, freq = rng.uniform(0, np.pi), rng.uniform(3, 25)
        stripes = np.sin(2 * np.pi * freq * (np.cos(b) * xx + np.sin(b) * yy) + rng.uniform(0, 2 * np.pi))
        canvas += rng.uniform(10, 45) * stripes[..., None] * rng.uniform(-1, 1, 3)
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 16))):
        x0, y0 = rng.uniform(-0.1, 1.0, 2) * size
        w, h = rng.uniform(0.03, 0.4, 2) * size
        colour = tuple(int(v) for v in muted_colour(rng, 40, 220))
        kind = rng.integers(0, 4)
        box = [x0, y0, x0 + w, y0 + h]
        if kind == 0:
            draw.rectangle(box, fill=colour)
        elif kind == 1:
            draw.ellipse(box, fill=colour)
        elif kind == 2:
            draw.line(box, fill=colour, width=int(rng.integers(1, max(2, size // 40))))
        else:
            draw.polygon([tuple(p) for p in rng.uniform(0, 1, (3, 2)) * (w, h) + (x0, y0)], fill=colour)
    return np.asarray(image, dtype=np.float32).copy()


def muted_colour(rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """A low-saturation RGB colour (0..255): a grey level drawn from ``low..high`` plus up to ``MUTED_CHROMA``
    per channel."""
    return np.clip(rng.uniform(low, high) + rng.uniform(-MUTED_CHROMA, MUTED_CHROMA, 3), 0, 255)


def vivid_colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated RGB colour (0..255)."""
    return np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.45, 1.0), rng.uniform(0.55, 1.0))) * 255


def item_shape(item: np.ndarray, side: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The item cropped to its extent and resized so its longest side is ``side`` (aspect jittered by up to
    15 %): a boolean mask and a 0..1 shading (the item's own grey levels)."""
    ys, xs = np.nonzero(item > ITEM_THRESHOLD)
    crop = item[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    aspect = crop.shape[1] / crop.shape[0] * float(np.exp(rng.uniform(-0.15, 0.15)))
    w, h = (side, max(1, round(side / aspect))) if aspect >= 1 else (max(1, round(side * aspect)), side)
    grey = np.asarray(Image.fromarray(crop).resize((w, h), Image.BILINEAR), dtype=np.float32)
    mask = grey > ITEM_THRESHOLD
    return mask, grey / 255.0


def find_place(owner: np.ndarray, mask: np.ndarray, full_areas: list[int], max_occlusion: float,
               rng: np.random.Generator, tries: int = 25) -> tuple[int, int] | None:
    """A top-left corner where ``mask`` fits in the image and leaves every earlier object (``owner`` holds
    their indices, -1 elsewhere) at least ``1 - max_occlusion`` of its full area visible; None if none found."""
    size = owner.shape[0]
    h, w = mask.shape
    visible = np.bincount(owner[owner >= 0], minlength=len(full_areas))
    floor = (1 - max_occlusion) * np.asarray(full_areas, dtype=np.float64)
    for _ in range(tries):
        x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        under = owner[y:y + h, x:x + w][mask]
        covered = np.bincount(under[under >= 0], minlength=len(full_areas))
        if np.all(visible - covered >= floor):
            return x, y
    return None


def composite(canvas: np.ndarray, mask: np.ndarray, rgb: np.ndarray, xy: tuple[int, int],
              owner: np.ndarray | None = None, index: int = -1) -> None:
    """Paint ``rgb`` (``[h, w, 3]``) where ``mask`` is set, at ``xy``; mark those pixels in ``owner`` as
    object ``index``."""
    x, y = xy
    h, w = mask.shape
    canvas[y:y + h, x:x + w][mask] = rgb[mask]
    if owner is not None:
        owner[y:y + h, x:x + w][mask] = index


def boxes_from_owner(owner: np.ndarray, count: int) -> list[list[int]]:
    """Each object's visible extent as ``[x1, y1, x2, y2]`` pixel edges (right/bottom exclusive)."""
    boxes = []
    for index in range(count):
        ys, xs = np.nonzero(owner == index)
        boxes.append([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1])
    return boxes


def tinted(shade: np.ndarray, canvas: np.ndarray, mask: np.ndarray, xy: tuple[int, int],
           rng: np.random.Generator) -> np.ndarray:
    """The item shaded in the candidate colour farthest from the mean background under it."""
    x, y = xy
    h, w = mask.shape
    local = canvas[y:y + h, x:x + w][mask].mean(0)
    candidates = [vivid_colour(rng) for _ in range(6)]
    far = [c for c in candidates if np.linalg.norm(c - local) >= MIN_CONTRAST]
    colour = far[0] if far else max(candidates, key=lambda c: float(np.linalg.norm(c - local)))
    return colour * (0.35 + 0.65 * shade[..., None])


def add_distractors(canvas: np.ndarray, pool: ItemPool, spec: SyntheticConfig, rng: np.random.Generator) -> None:
    """Unlabelled fragments (a window of 35-65 % of an item's side) of items of the other classes."""
    size = canvas.shape[0]
    for _ in range(int(rng.integers(0, spec.distractors + 1))):
        item = pool.items[rng.choice(pool.distractors)]
        fh, fw = (rng.uniform(0.35, 0.65, 2) * 28).astype(int)
        y0, x0 = int(rng.integers(0, 29 - fh)), int(rng.integers(0, 29 - fw))
        fragment = item[y0:y0 + fh, x0:x0 + fw]
        if (fragment > ITEM_THRESHOLD).sum() < 8:
            continue
        side = int(rng.integers(8, max(9, size // 3)))
        mask, shade = item_shape(fragment, side, rng)
        xy = int(rng.integers(0, size - mask.shape[1] + 1)), int(rng.integers(0, size - mask.shape[0] + 1))
        composite(canvas, mask, tinted(shade, canvas, mask, xy, rng), xy)


def render_image(labels: list[int], pool: ItemPool, spec: SyntheticConfig,
                 rng: np.random.Generator) -> tuple[np.ndarray, list[list[int]], list[int]]:
    """One image (uint8 ``[S, S, 3]``) with the objects of ``labels`` that could be placed, their boxes and
    labels."""
    size = spec.image_size
    canvas = background(rng, size)
    add_distractors(canvas, pool, spec, rng)
    owner = np.full((size, size), -1, np.int16)
    low, high = np.log(spec.min_object_size), np.log(max(spec.min_object_size, spec.max_object_fraction * size))
    full_areas, kept = [], []
    for label in labels:
        item = pool.item(label, rng)
        side = int(round(np.exp(rng.uniform(low, high))))
        for _ in range(4):  # crowded: try smaller
            mask, shade = item_shape(item, side, rng)
            xy = find_place(owner, mask, full_areas, spec.max_occlusion, rng)
            if xy is not None:
                break
            side = max(spec.min_object_size, int(side * 0.7))
        if xy is None:
            continue
        composite(canvas, mask, tinted(shade, canvas, mask, xy, rng), xy, owner, len(kept))
        full_areas.append(int(mask.sum()))
        kept.append(label)
    canvas += rng.normal(0, rng.uniform(0, 8), canvas.shape)
    return np.clip(canvas, 0, 255).round().astype(np.uint8), boxes_from_owner(owner, len(kept)), kept


@functools.lru_cache(maxsize=2)
def fashion_items(split: str, source_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST items ``[N, 28, 28]`` and labels, read once per process (decompressing costs ~1 s)."""
    items, labels = load_idx_dataset("fashion_mnist", split, source_dir, download=False)
    return items[:, 0].numpy(), labels.numpy()


def load_pools(spec: SyntheticConfig, classes: list[str]) -> dict[str, ItemPool]:
    """Disjoint Fashion-MNIST item pools for the three splits."""
    chosen = [SLUGS.index(c) for c in classes]
    pools = {}
    for name, fashion_split, part in (("train", "train", slice(0, 50000)), ("val", "train", slice(50000, None)),
                                      ("test", "test", slice(None))):
        if getattr(spec, name) > 0:
            items, labels = fashion_items(fashion_split, spec.source_dir)
            pools[name] = ItemPool.from_arrays(items[part], labels[part], chosen)
    return pools


def split_labels(count: int, spec: SyntheticConfig, num_classes: int, rng: np.random.Generator) -> list[list[int]]:
    """Per image of a split, its objects' labels: counts uniform in 0..max_objects, classes a shuffled
    round-robin so each class has the same number of objects (to one)."""
    counts = rng.integers(0, spec.max_objects + 1, count)
    labels = rng.permutation(np.arange(int(counts.sum())) % num_classes).tolist()
    starts = np.concatenate([[0], np.cumsum(counts)])
    return [labels[starts[i]:starts[i + 1]] for i in range(count)]


def annotation_xml(image_id: str, size: int, boxes: list[list[int]], names: list[str]) -> bytes:
    """A Pascal VOC annotation (the fields ``VOCDetection`` reads), byte-identical for identical input."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    size_el = ET.SubElement(root, "size")
    for key, value in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(size_el, key).text = str(value)
    for box, name in zip(boxes, names, strict=True):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "difficult").text = "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True):
            ET.SubElement(bndbox, key).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8") + b"\n"


def identity(spec: SyntheticConfig) -> dict:
    """What determines the files: the generator version and every parameter but where the items are read."""
    return {"version": GENERATOR_VERSION, **spec.model_dump(exclude={"source_dir"}), "classes": synthetic_classes(spec)}


def generate(out: Path, spec: SyntheticConfig) -> dict:
    """Write the whole VOC folder into a temporary sibling of ``out``, then rename it into place."""
    classes, start = synthetic_classes(spec), time.perf_counter()
    pools = load_pools(spec, classes)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    info = {"generator": "hintdistill.data.synthetic", "identity": identity(spec), "images": {}, "objects": {}}
    try:
        for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
            (tmp / d).mkdir(parents=True)
        for code, split in enumerate(SPLITS):
            per_image = split_labels(getattr(spec, split), spec, len(classes), np.random.default_rng([spec.seed, 1 + code]))
            ids, counts = [], [0] * len(classes)
            for i, labels in enumerate(per_image):
                image_id = f"{split}_{i:05d}"
                image, boxes, kept = render_image(labels, pools[split], spec, np.random.default_rng([spec.seed, 11 + code, i + 1]))
                Image.fromarray(image).save(tmp / "JPEGImages" / f"{image_id}.jpg", quality=92)
                (tmp / "Annotations" / f"{image_id}.xml").write_bytes(
                    annotation_xml(image_id, spec.image_size, boxes, [classes[k] for k in kept]))
                ids.append(image_id)
                for k in kept:
                    counts[k] += 1
            (tmp / "ImageSets/Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
            info["images"][split], info["objects"][split] = len(ids), dict(zip(classes, counts, strict=True))
        info["seconds"] = round(time.perf_counter() - start, 2)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        _move_into_place(tmp, out, info["identity"])
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return info


def _move_into_place(tmp: Path, out: Path, wanted: dict) -> None:
    if read_identity(out) == wanted:  # another process (a DDP rank) made the same set meanwhile: keep it
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        if read_identity(out) != wanted:
            raise
    finally:
        if old.exists():
            shutil.rmtree(old)


def read_identity(out: Path) -> dict | None:
    """The parameters ``out`` was generated with, or None if it was not made by this generator."""
    try:
        return json.loads((out / INFO_FILE).read_text())["identity"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def ensure_synthetic(out: str | Path, spec: SyntheticConfig) -> bool:
    """Generate the set at ``out`` unless it already holds the one these parameters make; True if generated."""
    out = Path(out).expanduser()
    wanted = identity(spec)
    found = read_identity(out)
    if found == wanted:
        return False
    if found is None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} exists and was not made by the synthetic generator (no {INFO_FILE}); it is never "
                        f"overwritten: set data.data_dir to a new or empty folder, or delete {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    generate(out, spec)
    return True
