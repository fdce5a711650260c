"""See what is being distilled: a run's feature maps and detections on one image (``hintdistill viz``).

For every hint pair (teacher ``hint`` layer, student ``guided`` layer) the teacher's hint map, the
distilled student's guided map and that map after the adaptation layer, with their L2 distance; for a
detector, also the teacher's, the baseline's and the distilled student's boxes side by side. The
figures are drawn by ``hintdistill.figures``; ``hintdistill.report`` puts them into ``report.html``.

Adapters are trained weights only where the run's ``distilled/checkpoint.pt`` still holds them (under
``stage_terms`` or, while the hint stage runs, ``terms``); otherwise the adapter is built from the recipe's
hint term with a fixed seed and the figure says it is untrained.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from .config import Recipe, recipe_from_dict
from .engine.checkpoint import load_model, safe_load
from .errors import CheckpointError, ConfigError, DataError
from .figures import FeatureMaps, detection_figure, feature_figure, png_bytes
from .taps import Taps, feature_key
from .terms.hints import HintLoss, feature_distance

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
NECK_LEVELS = [("neck.p3", "neck.p3"), ("neck.p4", "neck.p4"), ("neck.p5", "neck.p5")]
CONF_THRESH, IOU_THRESH = 0.25, 0.45


@dataclass
class LayerPair:
    """A hint (teacher) layer, the guided (student) layer it guides, and how the adapter is built.
    ``adapter`` None: not in the recipe, chosen from the shapes. ``stage``/``prefix`` locate trained
    adapter weights in the distilled phase's terms state."""

    hint: str
    guided: str
    adapter: str | None = None
    activation: str = "none"
    resize: str = "interpolate"
    teacher_index: int = 0
    stage: int | None = None
    prefix: str = ""


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
        from .build import instantiate
        from .engine.pipeline import load_teacher_weights

        # the data-derived defaults (num_classes, anchors) are what the student's spec has beyond its recipe args
        student_args = safe_load(self.phases["distilled"])["spec"]["args"]
        defaults = {k: v for k, v in student_args.items() if k not in self.recipe.student.args}
        model = instantiate({"name": tcfg.name, "args": {**defaults, **tcfg.args}})
        load_teacher_weights(model, tcfg.checkpoint)
        return model.eval()

    def terms_state(self, stage: int) -> dict | None:
        """The distilled phase's loss-term weights (adapters) for ``stage``, if the checkpoint kept them."""
        ckpt_path = self.phases["distilled"].with_name("checkpoint.pt")
        if not ckpt_path.is_file():
            return None
        ckpt = safe_load(ckpt_path)
        by_stage = ckpt.get("stage_terms") or {}
        if stage in by_stage or str(stage) in by_stage:
            return by_stage.get(stage, by_stage.get(str(stage)))
        if not ckpt.get("done") and ckpt.get("stage") == stage and "terms" in ckpt:
            return ckpt["terms"]
        return None


def recipe_pairs(recipe: Recipe | None, task: str) -> list[LayerPair]:
    """The hint pairs of the recipe's distillation stages (a detector without a recipe: its neck levels)."""
    if recipe is None:
        return [LayerPair(t, s) for t, s in NECK_LEVELS] if task == "detection" else []
    pairs = []
    for si, stage in enumerate(recipe.distill):
        seen: dict[str, int] = {}
        for cfg in stage.terms:
            # the term's name in the Distiller, as build_terms gives it: hint, hint_1, ...
            k = seen.get(cfg.type, 0)
            seen[cfg.type] = k + 1
            name = cfg.type if k == 0 else f"{cfg.type}_{k}"
            if cfg.type == "hint":
                pairs.append(LayerPair(cfg.hint, cfg.guided, cfg.adapter, cfg.adapter_activation, cfg.resize,
                                       cfg.teacher_index, si, f"{name}."))
            elif cfg.type == "neck_hints":
                pairs += [LayerPair(t, s, cfg.adapter, "none", "none", getattr(cfg, "teacher_index", 0), si,
                                    f"{name}.hints.{i}.") for i, (t, s) in enumerate(cfg.levels)]
    return pairs


def parse_layers(specs: list[str] | None, known: list[LayerPair]) -> list[LayerPair]:
    """``hint=guided`` or a plain name tapped on both; a pair the recipe has keeps its adapter settings."""
    if not specs:
        return known
    out = []
    for spec in specs:
        hint, _, guided = spec.partition("=")
        hint, guided = hint.strip(), (guided or hint).strip()
        if not hint or not guided:
            raise ConfigError(f"--layers expects hint=guided or a layer name, got '{spec}'")
        out.append(next((p for p in known if (p.hint, p.guided) == (hint, guided)), LayerPair(hint, guided)))
    return out


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
    if recipe is not None:
        from .data.classification import CLASS_NAMES

        if recipe.data.name in CLASS_NAMES:
            return CLASS_NAMES[recipe.data.name]
    return [f"class {i}" for i in range(num_classes)]


def _open_test_split(recipe: Recipe, size: int):
    recipe = recipe.model_copy(deep=True)
    recipe.data.image_size = size
    try:
        from .detection.build import open_split
    except ImportError:  # a VOC folder can be read without the detection recipe builder
        from .data.voc import VOCDetection

        if recipe.data.name != "voc" or not recipe.data.data_dir:
            raise
        return VOCDetection(recipe.data.data_dir, recipe.data.test_split, size, classes=recipe.data.classes)
    return open_split(recipe, recipe.data.test_split)


def _norm_stats(recipe: Recipe | None, channels: int) -> tuple[tuple, tuple]:
    from .data.classification import STATS

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

        from .data.voc import DetectionDataset

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


def test_example(run: Run) -> Example:
    """The first test example of the recipe's data (with its ground truth for a detector)."""
    recipe = run.recipe
    if recipe is None:
        raise ConfigError(f"{run.folder} has no recipe.yaml, so there is no test data to take an image from")
    if recipe.task == "detection":
        ds = _open_test_split(recipe, recipe.data.image_size)
        image, target = ds[0]
        return Example(image[None], image, target, ds.classes)
    from .data.classification import STATS, load_tensors

    if recipe.data.name in STATS:  # only the test split: the training images are not needed here
        images, _ = load_tensors(recipe.data.name, "test", recipe.data.data_dir, recipe.data.download)
        image = images[0].float() / 255
        mean, std = STATS[recipe.data.name]
        return Example(((image - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1))[None], image)
    from .build import build_data

    x = next(iter(build_data(recipe).test_loader))[0][:1]
    mean, std = IMAGENET
    return Example(x, (x[0] * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)).clamp(0, 1))


@torch.no_grad()
def feature_maps(run: Run, example: Example, pairs: list[LayerPair]) -> list[FeatureMaps]:
    """Hint, guided and adapted maps of every pair on ``example`` (the distilled student)."""
    student = run.model("distilled")
    student_out = Taps(student, {p.guided for p in pairs}, "student").run(example.x)
    teacher_outs: dict[int, dict] = {}
    out = []
    for pair in pairs:
        if pair.teacher_index not in teacher_outs:
            teacher = run.teacher(pair.teacher_index)
            names = {p.hint for p in pairs if p.teacher_index == pair.teacher_index}
            teacher_outs[pair.teacher_index] = Taps(teacher, names, "teacher").run(example.x)
        hint = teacher_outs[pair.teacher_index][feature_key(pair.hint)]
        guided = student_out[feature_key(pair.guided)]
        kind = pair.adapter or ("identity" if hint.shape == guided.shape else "linear" if guided.dim() == 2
                                else "conv1x1")
        term = HintLoss(pair.hint, pair.guided, kind, resize=pair.resize, adapter_activation=pair.activation)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # an untrained adapter is at least the same one every time
            term.setup({feature_key(pair.guided): guided}, [{feature_key(pair.hint): hint}])
        notes = []
        state = run.terms_state(pair.stage) if pair.stage is not None else None
        adapter_state = {k[len(pair.prefix):]: v for k, v in (state or {}).items() if k.startswith(pair.prefix)}
        if adapter_state:
            term.load_state_dict(adapter_state)
        elif any(True for _ in term.parameters()):
            why = ("not in the recipe" if pair.stage is None
                   else "its weights are not kept in distilled/checkpoint.pt after the stage ends")
            notes.append(f"adapter {kind} untrained ({why})")
            warnings.warn(f"hint {pair.hint} ← guided {pair.guided}: {notes[-1]}; drawn with random weights",
                          stacklevel=3)
        adapted = term.adapt(guided.float(), hint.shape)
        compared = hint.float()
        if adapted.dim() == 4 and adapted.shape[2:] != compared.shape[2:]:
            size = tuple(min(a, b) for a, b in zip(adapted.shape[2:], compared.shape[2:], strict=True))
            adapted, compared = F.adaptive_avg_pool2d(adapted, size), F.adaptive_avg_pool2d(compared, size)
        out.append(FeatureMaps(pair.hint, pair.guided, hint[0], guided[0], adapted[0],
                               float((compared - adapted).norm()), float(feature_distance(compared, adapted)),
                               kind, notes))
    return out


@torch.no_grad()
def detection_panels(run: Run, example: Example) -> list[tuple[str, dict]]:
    """(title, boxes) of the ground truth (if known), the teacher(s), the baseline and the distilled student."""
    panels = []
    if example.target is not None:
        panels.append(("ground truth", {"boxes": example.target["boxes"], "labels": example.target["labels"]}))
    for phase in sorted(run.phases, key=lambda p: (not p.startswith("teacher"), p != "baseline", p)):
        model = run.model(phase)
        panels.append((phase, model.postprocess(model(example.x), CONF_THRESH, IOU_THRESH)[0]))
    return panels


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def viz_command(args) -> int:
    """``hintdistill viz RUN --image PATH [--layers ...] [--input-size N] [--out DIR]``: writes PNG figures."""
    run = Run(args.run)
    example = image_example(run, args.image, args.input_size)
    pairs = parse_layers(args.layers, recipe_pairs(run.recipe, run.task))
    if not pairs:
        raise ConfigError("the recipe has no hint terms; name layers with --layers hint=guided (or a name tapped on "
                          "both); `hintdistill inspect` lists a model's modules")
    out = Path(args.out) if args.out else run.folder / "figures"
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        maps = feature_maps(run, example, pairs)
    for w in caught:
        print(f"warning: {w.message}")
    written = []
    stem = safe_name(Path(args.image).stem)  # named by the image: the report's own figures share the folder
    for i, m in enumerate(maps):
        path = out / f"{stem}_features_{i}_{safe_name(m.hint_name)}__{safe_name(m.guided_name)}.png"
        path.write_bytes(png_bytes(feature_figure(example.image, m, Path(args.image).name)))
        written.append(path)
    if run.task == "detection":
        model = run.model("distilled")
        names = class_names(run.recipe, getattr(model, "num_classes", 0))
        path = out / f"{stem}_detections.png"
        path.write_bytes(png_bytes(detection_figure(example.image, detection_panels(run, example), names,
                                                    CONF_THRESH)))
        written.append(path)
    for path in written:
        print(f"written: {path}")
    return 0
