"""A run folder as `hintdistill run` writes it, and images prepared the way its models take them.

``Run`` finds each phase's weights (``model.pt``, or ``checkpoint.pt`` while a phase is unfinished), the
teachers (their phase folders, or the checkpoints the recipe loaded them from) and the adapters the
distilled phase's checkpoint kept. ``image_example`` letterboxes (detection) or resizes and normalizes
(classification) an image file; ``first_test_example`` takes the recipe's first test example.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn

from .build import build_data, instantiate
from .config import Recipe, recipe_from_dict
from .data.classification import CLASS_NAMES, STATS, load_tensors
from .data.voc import DetectionDataset
from .detection.build import open_split
from .engine.checkpoint import load_model, load_teacher, safe_load
from .errors import CheckpointError, ConfigError, DataError

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass
class Example:
    """One input: ``x`` the model input ``[1, C, H, W]``, ``image`` the same picture ``[C, H, W]`` in 0..1."""

    x: torch.Tensor
    image: torch.Tensor
    target: dict | None = None
    class_names: list[str] | None = None


class Run:
    """A run folder (or any folder of phase folders holding ``model.pt`` / ``checkpoint.pt``)."""

    def __init__(self, path: str | Path):
        self.folder = Path(path)
        if not self.folder.is_dir():
            raise CheckpointError(f"run folder {self.folder} does not exist; pass the folder `hintdistill run` wrote "
                                  f"(runs/<recipe name> by default)")
        recipe_file = self.folder / "recipe.yaml"
        self.recipe: Recipe | None = None
        if recipe_file.is_file():
            self.recipe = recipe_from_dict(yaml.safe_load(recipe_file.read_text()), source=str(recipe_file))
        self.phases: dict[str, Path] = {}
        self._models: dict[str, nn.Module] = {}
        self._checkpoint: dict | None = None
        for sub in sorted(p for p in self.folder.iterdir() if p.is_dir()):
            for name in ("model.pt", "checkpoint.pt"):  # an unfinished phase has only its resume checkpoint
                if (sub / name).is_file():
                    self.phases[sub.name] = sub / name
                    break
        if "distilled" not in self.phases:
            found = ", ".join(self.phases) or "none"
            raise CheckpointError(f"{self.folder} has no distilled/model.pt or distilled/checkpoint.pt (phases with "
                                  f"weights: {found}); run `hintdistill run RECIPE` to write them")

    @property
    def task(self) -> str:
        if self.recipe is not None:
            return self.recipe.task
        return "detection" if type(self.model("distilled")).__name__ == "YOLO" else "classification"

    def model(self, phase: str) -> nn.Module:
        if phase not in self.phases:
            raise CheckpointError(f"{self.folder} has no {phase}/model.pt or {phase}/checkpoint.pt")
        if phase not in self._models:
            self._models[phase] = load_model(self.phases[phase])[0].eval()
        return self._models[phase]

    def teacher(self, index: int = 0) -> nn.Module:
        """Teacher ``index``: its phase folder, else the checkpoint the recipe loaded it from."""
        for name in ("teacher" if index == 0 else None, f"teacher_{index}"):
            if name in self.phases:
                return self.model(name)
        tcfg = self.recipe.teachers[index] if self.recipe and index < len(self.recipe.teachers) else None
        if tcfg is None or not tcfg.checkpoint:
            raise CheckpointError(f"{self.folder} has no teacher/model.pt (teacher {index}) and the recipe names no "
                                  f"teacher checkpoint")
        # the data-derived defaults (num_classes, anchors) are what the student's spec has beyond its recipe args
        student_args = safe_load(self.phases["distilled"])["spec"]["args"]
        defaults = {k: v for k, v in student_args.items() if k not in self.recipe.student.args}
        model = instantiate({"name": tcfg.name, "args": {**defaults, **tcfg.args}})
        return load_teacher(model, tcfg.checkpoint).eval()  # as training loads it (a Darknet cfg keeps its heads)

    def terms_state(self, stage: int) -> dict | None:
        """The distilled phase's loss-term weights (adapters) for ``stage``, if the checkpoint kept them."""
        ckpt_path = self.phases["distilled"].with_name("checkpoint.pt")
        if not ckpt_path.is_file():
            return None
        if self._checkpoint is None:
            self._checkpoint = safe_load(ckpt_path)
        ckpt = self._checkpoint
        by_stage = ckpt.get("stage_terms") or {}
        if stage in by_stage or str(stage) in by_stage:
            return by_stage.get(stage, by_stage.get(str(stage)))
        if not ckpt.get("done") and ckpt.get("stage") == stage and "terms" in ckpt:
            return ckpt["terms"]
        return None

def _check_size(size: int, task: str) -> None:
    if task == "detection" and size % 32:
        raise ConfigError(f"--input-size {size}: the detector needs a multiple of 32 (its coarsest level is /32); "
                          f"try {size // 32 * 32 or 32} or {(size // 32 + 1) * 32}")


def class_names(recipe: Recipe | None, num_classes: int) -> list[str]:
    if recipe is not None and recipe.data.classes:
        return list(recipe.data.classes)
    if recipe is not None and recipe.task == "detection":
        try:
            return _open_test_split(recipe, recipe.data.image_size).classes
        except Exception:  # noqa: BLE001 - names are a nicety; numbered classes still read
            pass
    if recipe is not None and recipe.data.name in CLASS_NAMES:
        return CLASS_NAMES[recipe.data.name]
    return [f"class {i}" for i in range(num_classes)]


def _open_test_split(recipe: Recipe, size: int):
    recipe = recipe.model_copy(deep=True)
    recipe.data.image_size = size
    return open_split(recipe, recipe.data.test_split)


def _norm_stats(recipe: Recipe | None, channels: int) -> tuple[tuple, tuple]:
    if recipe is not None and recipe.data.name in STATS:
        return STATS[recipe.data.name]
    return IMAGENET if channels == 3 else ((0.5,) * channels, (0.5,) * channels)


def _in_channels(model: nn.Module) -> int:
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    return first.in_channels if isinstance(first, nn.Conv2d) else 1


def image_example(run: Run, path: str | Path, size: int | None) -> Example:
    """An image file prepared as the run's models expect: letterboxed (detection) or resized and normalized."""
    from PIL import Image, UnidentifiedImageError

    recipe, task = run.recipe, run.task
    try:
        with Image.open(path) as im:
            im.load()
            pil = im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"cannot read image {path} ({type(e).__name__}: {e}); give a PNG or JPEG file") from None
    import torchvision.transforms.v2.functional as TF

    image = TF.pil_to_tensor(pil)
    if task == "detection":
        from torchvision import tv_tensors

        size = size or (recipe.data.image_size if recipe else 640)
        _check_size(size, task)
        empty = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=tuple(image.shape[-2:]))
        image = DetectionDataset([], [], size).letterbox(image, empty)[0]
        image = TF.to_dtype(image, torch.float32, scale=True).as_subclass(torch.Tensor)
        return Example(image[None], image)
    channels = _in_channels(run.model("distilled"))
    if size is None:
        size = {"mnist": 28, "fashion_mnist": 28, "cifar10": 32, "cifar100": 32}.get(
            recipe.data.name if recipe else "", recipe.data.image_size if recipe else 224)
    image = TF.resize(image, [size, size], antialias=True).float() / 255
    if channels == 1:
        image = image.mean(0, keepdim=True)
    mean, std = _norm_stats(recipe, channels)
    x = (image - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)
    return Example(x[None], image)


def first_test_example(run: Run) -> Example:
    """The first test example of the recipe's data (with its ground truth for a detector)."""
    recipe = run.recipe
    if recipe is None:
        raise ConfigError(f"{run.folder} has no recipe.yaml, so there is no test data to take an image from")
    if recipe.task == "detection":
        ds = _open_test_split(recipe, recipe.data.image_size)
        image, target = ds[0]
        return Example(image[None], image, target, ds.classes)
    if recipe.data.name in STATS:  # only the test split: the training images are not needed here
        images, _ = load_tensors(recipe.data.name, "test", recipe.data.data_dir, recipe.data.download)
        image = images[0].float() / 255
        mean, std = STATS[recipe.data.name]
        return Example(((image - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1))[None], image)
    x = next(iter(build_data(recipe).test_loader))[0][:1]
    mean, std = IMAGENET
    return Example(x, (x[0] * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)).clamp(0, 1))
