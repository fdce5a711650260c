"""The recipe schema: plain YAML checked by pydantic before anything is trained.

A bad recipe fails with the field's path, the value given and what was expected (``ConfigError``,
exit code 2). ``--set key.path=value`` overrides are applied to the YAML before validation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, ValidationError, model_validator

from .errors import ConfigError
from .schema import LinearRamp, Strict, Weight
from .terms import registered
from .terms.registry import on_register

__all__ = ["LinearRamp", "Strict", "Weight", "AnyTerm", "Recipe", "StageConfig", "TrainConfig",
           "load_recipe", "recipe_from_dict"]


def term_union() -> Any:
    """Any registered term's recipe entry, told apart by its ``type`` (see ``hintdistill.terms.registry``)."""
    return Annotated[Union[tuple(term.Config for term in registered().values())],  # noqa: UP007
                     Field(discriminator="type")]


AnyTerm = term_union()


class OptimizerConfig(Strict):
    name: Literal["sgd", "adam", "adamw", "rmsprop"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    nesterov: bool = False


class ScheduleConfig(Strict):
    name: Literal["none", "step", "cosine"] = "cosine"
    step_size: int = Field(30, gt=0)
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: int = Field(0, ge=0)


class TrainConfig(Strict):
    """How one model is trained on its own (teacher, baseline student)."""

    epochs: int = Field(10, ge=0)
    batch_size: int = Field(128, gt=0)
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    augment: list[Literal["jitter", "hflip", "crop", "mosaic"]] = []
    grad_clip_norm: float | None = Field(None, gt=0, description="clip the gradient's global L2 norm to this")
    eval_every: int = Field(1, gt=0, description="test every N epochs (and always after the last one); "
                                                   "detection evaluation costs seconds per epoch on a CPU")
    terms: list[AnyTerm] = [registered()["ce"].Config(type="ce")]


class StageConfig(TrainConfig):
    """A span of distillation epochs with its own terms, trainable modules and optimizer."""

    name: str = "distill"
    terms: list[AnyTerm]
    trainable: Literal["all", "up_to_guided"] = "all"

    @model_validator(mode="after")
    def _guided_needs_hint(self):
        if self.trainable == "up_to_guided" and not any(t.guided_layer() for t in self.terms):
            raise ValueError("trainable: up_to_guided needs a 'hint' term in the same stage (it names the guided layer)")
        return self


class ModelConfig(Strict):
    name: str
    args: dict[str, Any] = {}
    checkpoint: str | None = Field(None, description="load these weights instead of training")


class TeacherConfig(ModelConfig):
    train: TrainConfig = TrainConfig()


class DataConfig(Strict):
    name: Literal["mnist", "fashion_mnist", "cifar10", "cifar100", "image_folder", "voc", "coco"]
    data_dir: str | None = None
    download: bool = False
    train_subset: int | None = Field(None, gt=0, description="use only the first N training examples")
    test_subset: int | None = Field(None, gt=0)
    image_size: int = Field(224, gt=0, description="image_folder / detection input size")
    classes: list[str] | None = None
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    workers: int = Field(2, ge=0)


class Recipe(Strict):
    name: str
    task: Literal["classification", "detection"] = "classification"
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    output_dir: str | None = None
    data: DataConfig
    teachers: list[TeacherConfig] = Field(min_length=1)
    student: ModelConfig
    baseline: TrainConfig | None = None
    distill: list[StageConfig] = Field(min_length=1)
    eval_batch_size: int = Field(512, gt=0)
    latency_batch: int = Field(1, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _single_teacher(cls, data: Any) -> Any:
        if isinstance(data, dict) and "teacher" in data:
            if "teachers" in data:
                raise ValueError("give either 'teacher' or 'teachers', not both")
            data = dict(data)
            data["teachers"] = [data.pop("teacher")]
        return data

    def run_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}")


def refresh_term_schema() -> None:
    """Rebuild the recipe schema so that a term registered after this module was imported is accepted."""
    union = term_union()
    for model in (TrainConfig, StageConfig):
        model.model_fields["terms"].annotation = list[union]
    for model in (TrainConfig, StageConfig, TeacherConfig, Recipe):
        model.model_rebuild(force=True)


on_register(refresh_term_schema)


def set_path(tree: dict, dotted: str, value: Any) -> None:
    """Set ``a.b.0.c`` in nested dicts/lists (numbers index lists)."""
    keys = dotted.split(".")
    node: Any = tree
    for i, k in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            try:
                idx = int(k)
                node[idx]
            except (ValueError, IndexError) as e:
                raise ConfigError(f"--set {dotted}: '{k}' is not a valid index of a list of {len(node)}") from e
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[k] = value
            else:
                node = node.setdefault(k, {})
        else:
            raise ConfigError(f"--set {dotted}: '{'.'.join(keys[:i])}' is not a mapping or list")


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key.path=value, got '{item}'")
        key, raw = item.split("=", 1)
        out.append((key.strip(), yaml.safe_load(raw)))
    return out


def format_validation_error(err: ValidationError, source: str, single_teacher: bool = False) -> str:
    lines = [f"invalid recipe {source}:"]
    for e in err.errors():
        loc = list(e["loc"])
        if single_teacher and loc[:2] == ["teachers", 0]:
            loc = ["teacher", *loc[2:]]  # name the field as the recipe spells it, not as it is normalized
        path = ".".join(str(p) for p in loc) or "(top level)"
        value = e.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"  {path}: {e['msg']} (got {shown})")
    return "\n".join(lines)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; any problem is a ConfigError naming the field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist; ready recipes are in the recipes/ folder")
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {path} is not valid YAML: {e}") from e
    if not isinstance(tree, dict):
        raise ConfigError(f"recipe {path} must be a mapping of fields (name, data, teacher, student, distill)")
    return recipe_from_dict(tree, overrides, str(path))


def recipe_from_dict(tree: dict, overrides: list[str] | None = None, source: str = "<dict>") -> Recipe:
    for key, value in parse_overrides(overrides or []):
        set_path(tree, key, value)
    single_teacher = "teacher" in tree and "teachers" not in tree
    try:
        return Recipe.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, single_teacher)) from None
