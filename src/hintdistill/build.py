"""From a validated recipe to objects: models, loss terms, data."""

from __future__ import annotations

from typing import Any

from torch import nn

from . import config as C
from .data.classification import CLASS_NAMES, STATS, TensorLoader, image_folder_loader, load_tensors
from .data.task import TaskData, first_examples
from .detection.build import build_detection_data
from .detection.heads import describe, head_differences, model_heads
from .errors import ConfigError, DataError
from .models import build_model
from .models.registry import data_defaults
from .terms import Term, term_class, term_names


def build_weight(w: C.Weight) -> C.Weight:
    """A recipe weight as the Distiller takes it: a float, or the LinearRamp schedule itself."""
    return w if isinstance(w, C.LinearRamp) else float(w)


def build_term(cfg: Any, context: dict | None = None) -> Term:
    """One loss term from its recipe entry; ``context`` carries task facts (e.g. a detector's anchors)."""
    return term_class(cfg.type).from_config(cfg, context or {})


def build_terms(cfgs: list, context: dict | None = None) -> dict[str, tuple[Term, Any]]:
    """Named terms with their weights; a second term of the same type is named ``kd_1``, ``hint_1``..."""
    names = term_names(cfg.type for cfg in cfgs)
    return {name: (build_term(cfg, context), build_weight(cfg.schedule())) for name, cfg in zip(names, cfgs, strict=True)}


def model_spec(cfg: C.ModelConfig, defaults: dict) -> dict:
    """The spec of a recipe's model: the data's defaults it takes (not a Darknet cfg's anchors), then its args."""
    args = {**data_defaults(cfg.name, defaults), **cfg.args}
    return {"name": cfg.name, "args": args}


def portable_spec(spec: dict, model: nn.Module) -> dict:
    """A spec that rebuilds ``model`` without its source files, as model.pt stores it: a model that states its
    own definition (a Darknet model's ``cfg_text``) keeps that text instead of a path, and no weights path
    (the state_dict holds the values)."""
    text = getattr(model, "cfg_text", None)
    if not callable(text):
        return spec
    args = {k: v for k, v in spec["args"].items() if k not in ("weights", "weights_upto")}
    return {"name": spec["name"], "args": {**args, "cfg": text()}}


def with_teacher_anchors(spec: dict, student: nn.Module, teacher: nn.Module | None, explicit: bool) -> dict:
    """The student spec with the teacher's anchors (per level, by stride) when its recipe says ``anchors:
    teacher`` (``explicit``), or gives no anchors and its heads have the teacher's levels and anchor counts:
    a student trained from scratch then lines up with the teacher anchor by anchor. Otherwise unchanged; an
    explicit request the heads cannot take is a ConfigError saying what differs."""
    s_heads, t_heads = model_heads(student), model_heads(teacher) if teacher is not None else None
    if not (s_heads and t_heads):
        if explicit:
            raise ConfigError("student args anchors: teacher needs a detector teacher and a detector student")
        return spec
    layout = lambda heads: [(float(h.stride), len(h.anchors)) for h in heads]  # noqa: E731
    if layout(s_heads) != layout(t_heads):
        if explicit:
            raise ConfigError(f"student args anchors: teacher, but the heads differ (strides, anchors per level): "
                              f"student {describe(s_heads)}; teacher {describe(t_heads)}. Give the student "
                              f"anchors of its own layout, or a cfg with the teacher's levels.")
        return spec
    if not explicit and not head_differences(s_heads, t_heads):
        return spec  # the same anchors already: the spec stays as the recipe wrote it
    levels = [[[round(w, 4), round(h, 4)] for w, h in head.anchors] for head in t_heads]
    return {"name": spec["name"], "args": {**spec["args"], "anchors": levels}}


def instantiate(spec: dict) -> nn.Module:
    try:
        return build_model(spec["name"], spec["args"])
    except TypeError as e:
        raise ConfigError(f"model '{spec['name']}' cannot be built with args {spec['args']}: {e}") from e


def build_classification_data(recipe: C.Recipe) -> TaskData:
    """Loaders and facts of a classification recipe's data (Fashion-MNIST, CIFAR..., an image folder)."""
    d = recipe.data
    if d.name == "image_folder":
        if not d.data_dir:
            raise ConfigError("data.data_dir must name the image folder (one sub-folder per class)")
        if d.train_subset or d.test_subset:  # a silently ignored subset would train on everything
            raise ConfigError("data.train_subset / test_subset are not available for an image folder (it lists its "
                              "images class by class, so the first N would be a few classes): make smaller "
                              "train / test folders instead")
        root = d.data_dir.rstrip("/")
        _, classes = image_folder_loader(f"{root}/train", 1, False, d.image_size, 0, workers=0)
        test, test_classes = image_folder_loader(f"{root}/test", recipe.eval_batch_size, False, d.image_size, 0,
                                                 workers=d.workers)
        if test_classes != classes:  # issue 12: ImageFolder numbers classes by folder, so they must agree
            raise DataError(f"{root}/train and {root}/test have different class folders ({classes} vs "
                            f"{test_classes}); the labels would not match: give both the same class folders.")

        def train_loader(bs, augment, seed, rank, world, subset=None):
            if subset:  # ImageFolder orders samples by class: the first N would be a few classes only
                raise ConfigError("train_subset on a training phase needs tensor or detection data; an image "
                                  "folder lists its samples class by class: make a smaller train folder instead")
            loader, _ = image_folder_loader(f"{root}/train", bs, True, d.image_size, seed, rank, world, d.workers)
            loader.set_epoch = getattr(loader.sampler, "set_epoch", lambda e: None)
            return loader

        n = len(classes)
        return TaskData("classification", train_loader, test, n, (3, d.image_size, d.image_size), classes,
                        model_defaults={"num_classes": n})
    if d.name not in STATS:
        raise ConfigError(f"data.name '{d.name}' is a detection data set; set task: detection")
    x_train, y_train = load_tensors(d.name, "train", d.data_dir, d.download)
    x_test, y_test = load_tensors(d.name, "test", d.data_dir, d.download)
    if d.train_subset:
        x_train, y_train = x_train[: d.train_subset], y_train[: d.train_subset]
    if d.test_subset:
        x_test, y_test = x_test[: d.test_subset], y_test[: d.test_subset]
    mean, std = STATS[d.name]
    num_classes = 100 if d.name == "cifar100" else 10
    test = TensorLoader(x_test, y_test, recipe.eval_batch_size, mean, std)

    def train_loader(bs, augment, seed, rank, world, subset=None):
        n = first_examples(len(x_train), subset)
        return TensorLoader(x_train[:n], y_train[:n], bs, mean, std, shuffle=True, augment=list(augment), seed=seed,
                            rank=rank, world=world)

    shape = tuple(x_train.shape[1:])
    defaults = {"num_classes": num_classes}
    return TaskData("classification", train_loader, test, num_classes, shape, CLASS_NAMES.get(d.name, []),
                    model_defaults=defaults, context={"in_channels": shape[0]})


def build_data(recipe: C.Recipe) -> TaskData:
    """The recipe's data as the engine takes it, whatever the task."""
    if recipe.task == "classification":
        return build_classification_data(recipe)
    return build_detection_data(recipe)
