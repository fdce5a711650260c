"""From a detection recipe to objects: VOC/COCO loaders and k-means anchors.

``build_detection_data`` reads the training split once, computes 9 anchors by k-means over its letterboxed
box sizes (``anchors.kmeans_anchors``) and hands them to the models as a default argument (so they are in
every ``model.pt``'s spec and state_dict; a model whose definition has its own, a Darknet cfg, keeps those).
The terms read the actual models' heads (``heads.heads_context``, built by the Stage); the task's anchors and
strides in ``TaskData.context`` are only the fallback of a context made by hand.
"""

from __future__ import annotations

import hashlib
import math
import random
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
from torch.utils.data import DataLoader, DistributedSampler

from ..config import AUGMENT_BY_TASK, Recipe, SyntheticConfig
from ..data.synthetic import ensure_synthetic, synthetic_classes
from ..data.task import TaskData, first_examples
from ..data.voc import CocoDetection, DetectionDataset, VOCDetection, detection_collate
from ..data.yolo_txt import YoloTxtDetection
from ..errors import ConfigError, DataError
from .anchors import kmeans_anchors

STRIDES = (8, 16, 32)
# Evaluation holds the whole batch's activations; 512 images (the classification default) at 320 px
# would need tens of GB, so a detection recipe that does not set eval_batch_size gets this.
DEFAULT_EVAL_BATCH = 16


def train_transforms(augment: list[str]) -> T.Compose:
    """The photometric/flip part of ``augment`` (mosaic is the dataset's own switch, multiscale the loader's)."""
    unknown = set(augment) - set(AUGMENT_BY_TASK["detection"])
    if unknown:
        raise ConfigError(f"augment {sorted(unknown)} is not available for detection; use "
                          f"{', '.join(AUGMENT_BY_TASK['detection'])}")
    steps = []
    if "hflip" in augment:
        steps.append(T.RandomHorizontalFlip(0.5))
    if "jitter" in augment:
        steps.append(T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.015))
    return T.Compose(steps or [T.Identity()])


def open_split(recipe: Recipe, split: str) -> DetectionDataset:
    """One split of the recipe's VOC folder, COCO layout, YOLO-txt set or generated set, unaugmented; a missing
    path is a DataError."""
    d = recipe.data
    if not d.data_dir:
        raise ConfigError(f"data.data_dir must name the {d.name.upper()} folder for a detection recipe")
    root = Path(d.data_dir).expanduser()
    if d.name == "synthetic":  # generated on first use (or when its parameters change), then read as VOC
        spec = d.synthetic or SyntheticConfig()
        ensure_synthetic(root, spec)
        return VOCDetection(root, split, d.image_size, classes=d.classes or synthetic_classes(spec))
    if not root.exists():
        raise DataError(f"data.data_dir {root} (resolved: {root.resolve()}) does not exist; a relative path is "
                        f"taken from the current folder ({Path.cwd()})")
    if d.name == "voc":
        return VOCDetection(root, split, d.image_size, classes=d.classes)
    if d.name == "coco":
        # COCO layout: <data_dir>/<split>/ (images) and <data_dir>/annotations/instances_<split>.json
        return CocoDetection(root / split, root / "annotations" / f"instances_{split}.json", d.image_size,
                             classes=d.classes)
    if d.name == "yolo":  # data_dir: a data.yaml / obj.data file or its folder; splits map as in data/yolo_txt.py
        return YoloTxtDetection(root, split, d.image_size, classes=d.classes)
    raise ConfigError(f"data.name '{d.name}' is a classification data set; set task: classification")


def multiscale_sizes(size: int, stride: int = STRIDES[-1]) -> list[int]:
    """YOLOv5's multi-scale range: the multiples of ``stride`` from 0.5x to 1.5x ``size``."""
    low, high = max(stride, math.ceil(size * 0.5 / stride) * stride), int(size * 1.5) // stride * stride
    return list(range(low, max(low, high) + 1, stride))


def rescale_batch(images: torch.Tensor, targets: list[dict], side: int) -> tuple[torch.Tensor, list[dict]]:
    """Images resized (bilinear) to ``side`` x ``side`` and their target boxes scaled with them."""
    h, w = images.shape[-2:]
    if (h, w) == (side, side):
        return images, targets
    images = F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False)
    factor = torch.tensor([side / w, side / h, side / w, side / h])
    return images, [{**t, "boxes": t["boxes"] * factor} for t in targets]


class EpochLoader:
    """A DataLoader whose shuffling (and augmentation randomness) is a function of ``seed`` and the epoch;
    with ``sizes``, each batch is resized to one of them, drawn from the same seed and epoch (multi-scale).

    ``batch_indices`` are the data set indices of the batch last yielded (its targets' ``image_id``), and
    ``cache_identity`` what decides a sample's image: the teacher-output cache keys its rows by them, where
    ``augment`` (the stage's list, all of it random for detection) is empty."""

    def __init__(self, dataset, batch_size: int, seed: int, rank: int, world: int, workers: int,
                 shuffle: bool = True, sizes: list[int] | None = None, augment: list[str] | None = None):
        self.dataset, self.seed, self.sizes, self.epoch = dataset, seed, sizes, 0
        self.augment = list(augment or [])
        self.batch_indices = torch.zeros(0, dtype=torch.long)
        self.generator = torch.Generator().manual_seed(seed)
        self.sampler = DistributedSampler(dataset, world, rank, shuffle=shuffle, seed=seed) if world > 1 else None
        self.loader = DataLoader(dataset, batch_size, shuffle=shuffle and self.sampler is None,
                                 sampler=self.sampler, generator=self.generator, num_workers=workers,
                                 collate_fn=detection_collate, drop_last=False,
                                 pin_memory=torch.cuda.is_available())  # page-locked: async host-to-GPU copies

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.generator.manual_seed(self.seed + epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        if self.loader.num_workers == 0:
            random.seed(self.seed + epoch)  # mosaic draws from ``random``; workers seed it from the generator

    @property
    def dataset_size(self) -> int:
        """Rows that ``batch_indices`` index: the images of the whole split (before any DDP split)."""
        return len(self.dataset)

    @property
    def random_augment(self) -> list[str]:
        """The augmentations that change the images every epoch: every detection one (flip, jitter, mosaic,
        multi-scale) is drawn at random."""
        return list(self.augment)

    def cache_identity(self) -> str:
        """What decides a sample's (unaugmented) image: each image file's path, size and modification time, in
        the split's order, and the letterbox size. Sizes and times, not contents: hashing a large set's images
        every run would cost more than the cache saves; a file rewritten in place gets a new time."""
        digest = hashlib.blake2b(digest_size=16)
        for record in self.dataset.records:
            stat = Path(record.image).stat()
            digest.update(f"{record.image}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return f"detection images {digest.hexdigest()} ({len(self.dataset)}) letterboxed to {self.dataset.image_size}"

    def __iter__(self):
        for images, targets in self._rescaled() if self.sizes else self.loader:
            self.batch_indices = torch.tensor([int(t["image_id"]) for t in targets], dtype=torch.long)
            yield images, targets

    def _rescaled(self):
        # its own generator, so the sizes drawn do not depend on the workers or on the shuffling
        draw = torch.Generator().manual_seed(1_000_003 * self.seed + self.epoch)
        for images, targets in self.loader:
            side = self.sizes[int(torch.randint(len(self.sizes), (1,), generator=draw))]
            yield rescale_batch(images, targets, side)

    def __len__(self) -> int:
        return len(self.loader)


def build_detection_data(recipe: Recipe) -> TaskData:
    """Loaders, classes, k-means anchors (as model defaults) and the terms' context for a detection recipe."""
    d = recipe.data
    train_set = open_split(recipe, d.train_split)
    test_set = open_split(recipe, d.test_split)
    if train_set.classes != test_set.classes:
        raise DataError(f"the {d.train_split} and {d.test_split} splits name different classes "
                        f"({train_set.classes} vs {test_set.classes}); list them in data.classes")
    if d.train_subset:
        train_set.records = train_set.records[: d.train_subset]
    if d.test_subset:
        test_set.records = test_set.records[: d.test_subset]
    records, classes, size = train_set.records, train_set.classes, d.image_size
    # fixed k-means seed: every seed, teacher and student of a recipe shares one set of anchors
    anchors = kmeans_anchors(train_set.box_sizes(), k=9, seed=0)
    anchor_list = [[round(float(v), 2) for v in wh] for wh in anchors]
    eval_batch = recipe.eval_batch_size if "eval_batch_size" in recipe.model_fields_set else DEFAULT_EVAL_BATCH
    test_loader = DataLoader(test_set, eval_batch, shuffle=False, num_workers=d.workers,
                             collate_fn=detection_collate)

    def train_loader(batch_size: int, augment, seed: int, rank: int, world: int,
                     subset: int | None = None) -> EpochLoader:
        augment = list(augment)
        train = bool(augment)
        phase_records = records[: first_examples(len(records), subset)]
        ds = DetectionDataset(phase_records, classes, size, train=train, mosaic="mosaic" in augment,
                              source=train_set.source)
        ds.augment = train_transforms(augment)
        sizes = multiscale_sizes(size) if "multiscale" in augment else None
        return EpochLoader(ds, batch_size, seed, rank, world, d.workers, sizes=sizes, augment=augment)

    n = len(classes)
    return TaskData("detection", train_loader, test_loader, n, (3, size, size), classes, primary_metric="map50",
                    model_defaults={"num_classes": n, "anchors": anchor_list},
                    context={"anchors": anchor_list, "strides": STRIDES})
