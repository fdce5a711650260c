"""Classification data: MNIST, Fashion-MNIST, CIFAR-10/100 held in memory, and ImageFolder.

The small benchmark sets are kept as uint8 tensors and batched by ``TensorLoader``, which is many
times faster than a per-image DataLoader on a few CPU cores. Files are looked for locally first:
the recipe's ``data_dir``, ``$HINTDISTILL_DATA``, ``~/.cache/hintdistill``, and for Fashion-MNIST the
folder Debian's ``dataset-fashion-mnist`` package installs to. IDX files are read gzipped or not.
Downloads (through torchvision) happen only where ``download: true`` and the network allow.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import DataError
from .sanity import scan_images

DEBIAN_DIRS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist", "mnist": "/usr/share/datasets/mnist"}
TORCHVISION_NAMES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
STATS = {  # per-channel mean / std of the training images
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
CLASS_NAMES = {
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                      "Bag", "Ankle boot"],
    "mnist": [str(i) for i in range(10)],
}


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (gzipped or not) into a uint8 tensor; corrupt files raise DataError."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError(f"bad magic number {raw[:4].hex()} (expected an unsigned-byte IDX file)")
        dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
        expected = 4 + 4 * ndim + int(torch.tensor(dims).prod())
        if len(raw) != expected:
            raise ValueError(f"file has {len(raw)} bytes but its header announces {expected}")
        return torch.frombuffer(bytearray(raw[4 + 4 * ndim :]), dtype=torch.uint8).reshape(dims)
    except (OSError, EOFError, ValueError, struct.error) as e:
        raise DataError(f"cannot read IDX file {path}: {e}. Delete it and let hintdistill find or download a "
                        f"fresh copy (or reinstall the dataset package).") from e


def search_dirs(name: str, data_dir: str | None) -> list[Path]:
    dirs = []
    if data_dir:
        dirs.append(Path(data_dir).expanduser())
    if os.environ.get("HINTDISTILL_DATA"):
        dirs.append(Path(os.environ["HINTDISTILL_DATA"]).expanduser())
    dirs.append(Path("~/.cache/hintdistill").expanduser())
    if name in DEBIAN_DIRS:
        dirs.append(Path(DEBIAN_DIRS[name]))
    out = []
    for d in dirs:
        out += [d, d / name, d / TORCHVISION_NAMES.get(name, name) / "raw"]
    return out


def find_idx(name: str, split: str, data_dir: str | None) -> tuple[Path, Path] | None:
    for d in search_dirs(name, data_dir):
        found = []
        for stem in IDX_FILES[split]:
            hit = next((d / (stem + ext) for ext in ("", ".gz") if (d / (stem + ext)).is_file()), None)
            found.append(hit)
        if all(found):
            return found[0], found[1]
    return None


def load_idx_dataset(name: str, split: str, data_dir: str | None, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 [N,1,28,28] and labels int64 [N] of MNIST or Fashion-MNIST."""
    paths = find_idx(name, split, data_dir)
    if paths is None and download:
        import torchvision

        root = Path(data_dir or os.environ.get("HINTDISTILL_DATA") or "~/.cache/hintdistill").expanduser()
        cls = getattr(torchvision.datasets, TORCHVISION_NAMES[name])
        try:
            cls(str(root), train=split == "train", download=True)
        except Exception as e:  # network errors come in many types
            raise DataError(f"{name} was not found locally and the download failed ({e}). {where(name, data_dir)}") from e
        paths = find_idx(name, split, str(root))
    if paths is None:
        raise DataError(f"{name} ({split}) was not found. {where(name, data_dir)}")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise DataError(f"{paths[0]} and {paths[1]} do not match: {tuple(images.shape)} images, "
                        f"{tuple(labels.shape)} labels")
    return images.unsqueeze(1), labels.long()


def where(name: str, data_dir: str | None) -> str:
    looked = ", ".join(str(d) for d in search_dirs(name, data_dir)[::3])
    fix = "apt-get install dataset-fashion-mnist, or " if name == "fashion_mnist" else ""
    return (f"Looked in: {looked}. Fix: {fix}put the four IDX files (gzipped or not) in a folder and set "
            f"data.data_dir (or $HINTDISTILL_DATA), or set data.download: true where the network allows.")


def load_cifar(name: str, split: str, data_dir: str | None, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    errors = []
    for root in search_dirs(name, data_dir)[::3]:
        try:
            ds = cls(str(root), train=split == "train", download=False)
            return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)
        except RuntimeError as e:
            errors.append(str(e))
    if download:
        root = Path(data_dir or "~/.cache/hintdistill").expanduser()
        try:
            ds = cls(str(root), train=split == "train", download=True)
        except Exception as e:
            raise DataError(f"{name} was not found locally and the download failed ({e}); set data.data_dir.") from e
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)
    raise DataError(f"{name} ({split}) was not found ({errors[-1] if errors else ''}). Set data.data_dir to a "
                    f"folder holding torchvision's cifar-*-batches-py, or data.download: true.")


def shifts(n: int, pixels: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random offsets (dx, dy) in [0, 2 * pixels] for ``n`` images."""
    dx = torch.randint(0, 2 * pixels + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pixels + 1, (n,), generator=generator)
    return dx, dy


def jitter(images: torch.Tensor, pixels: int, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Shift each image by ``dx - pixels``, ``dy - pixels`` (zero fill): Hinton et al.'s teacher jitter, and with
    4 pixels the CIFAR pad-and-crop."""
    n, _, h, w = images.shape
    padded = F.pad(images, (pixels,) * 4)
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None].expand(n, images.shape[1], h, w + 2 * pixels)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :].expand(n, images.shape[1], h, w)
    return out.gather(3, cols)


def hflip(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror the images where ``flip`` (a bool per image) is true."""
    images = images.clone()
    images[flip] = images[flip].flip(-1)
    return images


@dataclass
class TensorLoader:
    """Batches of normalized float images and int64 labels from in-memory uint8 tensors.

    ``augment`` may hold ``jitter`` (shifts up to ``jitter_pixels``), ``hflip`` and ``crop`` (pad 4 +
    random crop, the CIFAR standard). Shuffling uses its own generator seeded per epoch, so runs are
    reproducible; under DDP each rank takes every ``world``-th example, all ranks the same number.

    ``use_views(k)`` makes the augmentation replayable for the teacher cache (Shen & Xing, ECCV 2022): each
    sample gets ``k`` fixed random views (its shifts and flip drawn once per view), epoch ``e`` shows view
    ``e mod k``, and ``batch_indices`` name the (view, sample) row ``view * N + index``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    batch_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    shuffle: bool = False
    augment: list[str] = field(default_factory=list)
    jitter_pixels: int = 2
    seed: int = 0
    rank: int = 0
    world: int = 1
    epoch: int = 0
    views: int = 0  # 0: a fresh random augmentation every epoch; k: k stored views per sample (use_views)

    def __post_init__(self):
        self._mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        self._std = torch.tensor(self.std).view(1, -1, 1, 1)
        # The data set indices of the batch last yielded: the teacher cache keys its rows by them.
        self.batch_indices = torch.zeros(0, dtype=torch.long)
        self._view_params: dict[int, dict[str, tuple[torch.Tensor, ...]]] = {}

    @property
    def dataset_size(self) -> int:
        """Rows that ``batch_indices`` index: the samples in the whole data set (before any DDP split), times
        the views where there are views."""
        return len(self.labels) * max(self.views, 1)

    @property
    def random_augment(self) -> list[str]:
        """The random augmentations that differ every epoch (the teachers' input too): a cache must refuse them.
        Views replay the same augmentation every ``views`` epochs, so there are none then."""
        return [] if self.views else list(self.augment)

    def use_views(self, k: int) -> None:
        """Replay ``k`` fixed augmented views per sample (epoch e shows view e mod k), so that a cache can hold
        each view's teacher outputs. Changes the training: k views per sample instead of a fresh one each epoch."""
        if k < 1:
            raise ValueError(f"views must be at least 1, not {k}")
        self.views, self._view_params = k if self.augment else 0, {}

    def cache_identity(self) -> str:
        """What decides a sample's teacher input: the images' and labels' content, count and normalization, and
        with views, the augmentation that makes them (its kind, seed and number of views)."""
        digest = hashlib.blake2b(digest_size=16)
        for t in (self.images, self.labels):
            digest.update(str((tuple(t.shape), str(t.dtype))).encode())
            digest.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        views = (f" views {self.views} of {'+'.join(self.augment)} jitter_pixels={self.jitter_pixels} "
                 f"seed={self.seed}") if self.views else ""
        return f"tensors {digest.hexdigest()} normalize mean={self.mean} std={self.std}{views}"

    def draw(self, n: int, g: torch.Generator) -> dict[str, tuple[torch.Tensor, ...]]:
        """The random parameters of ``n`` images' augmentation, in a fixed order of draws from ``g``."""
        params = {}
        if "jitter" in self.augment:
            params["jitter"] = shifts(n, self.jitter_pixels, g)
        if "crop" in self.augment:
            params["crop"] = shifts(n, 4, g)
        if "hflip" in self.augment:
            params["hflip"] = (torch.rand(n, generator=g) < 0.5,)
        return params

    def view_params(self, view: int) -> dict[str, tuple[torch.Tensor, ...]]:
        """Every sample's augmentation in ``view``: drawn once, from a generator of the seed and the view."""
        if view not in self._view_params:
            g = torch.Generator().manual_seed(self.seed * 100_003 + 7_919 * (view + 1) + 1_000_000_007)
            self._view_params[view] = self.draw(len(self.labels), g)
        return self._view_params[view]

    def apply(self, x: torch.Tensor, params: dict[str, tuple[torch.Tensor, ...]]) -> torch.Tensor:
        if "jitter" in params:
            x = jitter(x, self.jitter_pixels, *params["jitter"])
        if "crop" in params:
            x = jitter(x, 4, *params["crop"])
        if "hflip" in params:
            x = hflip(x, *params["hflip"])
        return x

    def __len__(self) -> int:
        return -(-self.num_examples // self.batch_size)

    @property
    def num_examples(self) -> int:
        # Under DDP every rank takes the same number of examples (the last len % world of the epoch's
        # order are left out): ranks with unequal step counts would wait for each other forever.
        return len(self.labels) // self.world

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() / 255.0 - self._mean) / self._std

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.labels), generator=g) if self.shuffle else torch.arange(len(self.labels))
        order = order[: self.num_examples * self.world][self.rank :: self.world]
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            # Augment before normalizing, so the pixels shifted in by jitter/crop are black (0), not the mean.
            x = self.images[idx].float()
            if self.views:
                view = self.epoch % self.views
                params = {k: tuple(p[idx] for p in v) for k, v in self.view_params(view).items()}
                self.batch_indices = idx + view * len(self.labels)
            else:
                params = self.draw(len(idx), g) if self.augment else {}
                self.batch_indices = idx
            yield self.normalize(self.apply(x, params)), self.labels[idx]


def load_tensors(name: str, split: str, data_dir: str | None = None, download: bool = False):
    """(images uint8 [N,C,H,W], labels int64 [N]) of a built-in data set."""
    if name in ("mnist", "fashion_mnist"):
        return load_idx_dataset(name, split, data_dir, download)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, split, data_dir, download)
    raise DataError(f"unknown built-in data set '{name}'")


_CHECKED_FOLDERS: set[Path] = set()  # checked once per process, not once per phase's loader


def check_image_folder(root: Path) -> None:
    """Before torchvision's ImageFolder sees it: class sub-folders exist, each holds images, and every image
    can be read (header and end-of-file marker); otherwise a DataError naming the folders or files and the fix.
    A bad image is an error here, not skipped: in an image folder the file is the labelled example."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    if root.resolve() in _CHECKED_FOLDERS:
        return
    classes = sorted(d for d in root.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"image folder {root} has no class sub-folders; put each class's images in "
                        f"{root}/<class name>/ (e.g. {root}/cat/1.jpg, {root}/dog/2.jpg).")
    images, empty = [], []
    for folder in classes:
        found = [f for f in sorted(folder.rglob("*")) if f.suffix.lower() in IMG_EXTENSIONS and f.is_file()]
        images += found
        if not found:
            empty.append(folder.name)
    if empty:
        raise DataError(f"image folder {root}: the class folder(s) {', '.join(empty)} hold no images (looked for "
                        f"{', '.join(IMG_EXTENSIONS)}); add images or remove the folder(s).")
    problems = scan_images(images)
    if problems:
        shown = "; ".join(f"{p.relative_to(root)} ({why})" for p, why in list(problems.items())[:10])
        raise DataError(f"image folder {root}: {len(problems)} of {len(images)} images cannot be read: {shown}"
                        f"{' ...' if len(problems) > 10 else ''}. Delete them or replace them with complete "
                        f"copies (a cut-off download or copy is truncated).")
    _CHECKED_FOLDERS.add(root.resolve())


def read_rgb(path: str):
    """ImageFolder's loader: an image that passed ``check_image_folder`` but fails to decode now (damage inside
    the file) is a DataError naming it, not an OSError traceback from a worker."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"image {path} cannot be decoded ({e}) although its header is fine: delete or re-save "
                        f"it, then rerun the same command (the run resumes from its last checkpoint).") from None


def image_folder_loader(root: str, batch_size: int, train: bool, image_size: int, seed: int,
                        rank: int = 0, world: int = 1, workers: int = 2):
    """A DataLoader over a torchvision ImageFolder (one sub-folder per class) for users' own data."""
    import torchvision
    from torchvision.transforms import v2

    if not Path(root).is_dir():
        raise DataError(f"image folder {root} does not exist; it must hold one sub-folder of images per class")
    check_image_folder(Path(root))
    ops = [v2.PILToTensor(), v2.Resize((image_size, image_size), antialias=True)]
    if train:
        ops += [v2.RandomHorizontalFlip()]
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    ds = torchvision.datasets.ImageFolder(root, transform=v2.Compose(ops), loader=read_rgb)
    sampler = None
    if world > 1:
        sampler = torch.utils.data.distributed.DistributedSampler(ds, world, rank, shuffle=train, seed=seed)
    g = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(ds, batch_size, shuffle=train and sampler is None, sampler=sampler,
                                         num_workers=workers, generator=g, pin_memory=torch.cuda.is_available())
    return loader, ds.classes
