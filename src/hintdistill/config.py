"""The recipe schema: plain YAML checked by pydantic before anything is trained.

A bad recipe fails with the field's path, the value given and what was expected (``ConfigError``,
exit code 2). ``--set key.path=value`` overrides are applied to the YAML before validation.
"""

from __future__ import annotations

import math
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BeforeValidator, Field, ValidationError, model_validator

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


# what a training stage's ``augment`` may hold, per task (recipes are checked against it when they load)
AUGMENT_BY_TASK = {"classification": ("jitter", "hflip", "crop"), "detection": ("hflip", "jitter", "mosaic", "multiscale")}


class TrainConfig(Strict):
    """How one model is trained on its own (teacher, baseline student)."""

    epochs: int = Field(10, ge=0)
    batch_size: int = Field(128, gt=0)
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    augment: list[Literal["jitter", "hflip", "crop", "mosaic", "multiscale"]] = Field(
        [], description="random training augmentation; detection: hflip, jitter, mosaic, multiscale (each batch "
        "resized to a random multiple of 32 in 0.5-1.5x the input size, as YOLOv5's --multi-scale)")
    grad_clip_norm: float | None = Field(None, gt=0, description="clip the gradient's global L2 norm to this")
    train_subset: int | None = Field(
        None, gt=0, description="train this phase on only the first N training examples (of data.train_subset's "
        "when that is set), e.g. the students on a small labelled set while the teacher trains on all of it "
        "(Hinton et al. 2015, Table 5); the test set is unchanged")
    eval_every: int = Field(1, gt=0, description="test every N epochs (and always after the last one); "
                                                   "detection evaluation costs seconds per epoch on a CPU")
    terms: list[AnyTerm] = [registered()["ce"].Config(type="ce")]
    max_nonfinite_steps: int = Field(20, ge=1, description="non-finite steps in a row (NaN/inf input, loss or "
                                     "gradients; each is skipped) that stop the stage; 1 stops at the first")
    ema: float | None = Field(None, gt=0, lt=1, description="keep a moving average of the weights with this decay "
                              "cap (ramped as (1+t)/(10+t)), test it and keep it as the model (engine/ema.py); "
                              "e.g. 0.9999. Unset: the trained weights as they are")
    bn_frozen_epochs: int = Field(0, ge=0, description="train the last N epochs with the model's BatchNorm layers in "
                                  "eval mode: their running statistics fixed and used, as at test time, while the "
                                  "affine weights still learn; 0: off")


def _yaml_switch(value: Any) -> Any:
    """YAML 1.1 reads an unquoted on / off (and yes / no) as a boolean: take those as the words "on" / "off"."""
    return {True: "on", False: "off"}[value] if isinstance(value, bool) else value


CacheSwitch = Annotated[Literal["auto", "on", "off"], BeforeValidator(_yaml_switch)]


class StageConfig(TrainConfig):
    """A span of distillation epochs with its own terms, trainable modules and optimizer."""

    name: str = "distill"
    terms: list[AnyTerm]
    trainable: Literal["all", "up_to_guided"] = "all"
    teacher_cache: CacheSwitch | None = Field(
        None, description="this stage's teacher-output cache; unset: the recipe's speed.teacher_cache")

    @model_validator(mode="after")
    def _guided_needs_hint(self):
        if self.trainable == "up_to_guided" and not any(t.guided_layer() for t in self.terms):
            raise ValueError("trainable: up_to_guided needs a 'hint' term in the same stage (it names the guided layer)")
        types = {t.type for t in self.terms}
        if {"chen_kd", "detection"} <= types:
            raise ValueError("chen_kd contains the hard detection loss (its objectness and class gains times mu): "
                             "remove the 'detection' term from this stage, and set the gains on chen_kd")
        return self


class ModelConfig(Strict):
    name: str
    args: dict[str, Any] = {}
    checkpoint: str | None = Field(None, description="load these weights instead of training")


class TeacherConfig(ModelConfig):
    train: TrainConfig = TrainConfig()


# --- generated detection data (data/synthetic.py) ---
SYNTHETIC_CLASSES = ["tshirt", "trouser", "sandal", "bag", "ankle_boot"]


class SyntheticConfig(Strict):
    """A detection set generated from a seed: Fashion-MNIST items (``classes``, by name) pasted at random
    scales and places on cluttered backgrounds, written as a VOC folder at ``data.data_dir``."""

    seed: int = Field(0, ge=0)
    train: int = Field(300, ge=0, description="images in each split")
    val: int = Field(50, ge=0)
    test: int = Field(100, ge=0)
    image_size: int = Field(256, ge=32, description="side of the generated square images")
    classes: list[str] = Field(default_factory=lambda: list(SYNTHETIC_CLASSES), min_length=1)
    max_objects: int = Field(4, ge=0, le=16, description="objects per image, drawn uniformly from 0..max")
    min_object_size: int = Field(10, ge=4, description="smallest object's longest side, pixels")
    max_object_fraction: float = Field(0.5, gt=0, le=1, description="largest object's longest side / image side")
    max_occlusion: float = Field(0.3, ge=0, lt=1, description="most of an object later ones may cover")
    distractors: int = Field(4, ge=0, description="unlabelled item fragments per image, drawn from 0..max")
    source_dir: str | None = Field(None, description="where the Fashion-MNIST IDX files are (default: searched)")

    @model_validator(mode="after")
    def _sizes_fit(self):
        if self.min_object_size > self.max_object_fraction * self.image_size:
            raise ValueError(f"min_object_size {self.min_object_size} is larger than max_object_fraction x "
                             f"image_size = {self.max_object_fraction * self.image_size:g}")
        return self
# --- end generated detection data ---


class DataConfig(Strict):
    name: Literal["mnist", "fashion_mnist", "cifar10", "cifar100", "image_folder", "voc", "coco", "yolo",
                  "synthetic"]
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
    synthetic: SyntheticConfig | None = Field(None, description="name: synthetic only: how to generate it")

    @model_validator(mode="after")
    def _synthetic_only_for_synthetic(self):
        if self.synthetic is not None and self.name != "synthetic":
            raise ValueError(f"data.synthetic describes a generated set; it needs name: synthetic (got {self.name})")
        return self


class SpeedConfig(Strict):
    """How fast to train (README "Speed"). Options that change the numbers are off by default."""

    teacher_cache: CacheSwitch = Field(
        "auto", description="cache the teachers' logits (a detector's head maps) during the first epoch and read "
                            "them afterwards; auto: where safe (frozen teachers, no random augmentation), on: "
                            "an error where not safe")
    cache_dir: str | None = Field(None, description="folder for the cache files (shared between runs); "
                                                    "default: <run>/<phase>/teacher_cache")
    cache_dtype: Literal["float32", "float16"] = Field(
        "float32", description="float16 halves the file but rounds the teacher's logits (changes the numbers)")
    cache_topk: int | None = Field(None, gt=0, description="keep only the k largest logits per sample (and the "
                                                           "log-sum-exp; the other classes share the rest)")
    cache_features: bool = Field(
        False, description="also cache the teacher features the terms tap (FitNets hints), in cache_dtype: C*H*W "
        "values per sample, teacher and feature (the log gives the size)")
    cache_views: int | None = Field(
        None, gt=0, description="cache-aware augmentation (Shen & Xing, ECCV 2022): with random augmentation "
        "(jitter, crop, hflip) on an in-memory data set, each sample gets k fixed random views, epoch e shows view "
        "e mod k, and the cache holds each view's teacher logits (the first k epochs fill it). The student sees k "
        "views per sample instead of a fresh one each epoch; unset: augmentation refuses the cache")
    channels_last: bool = False
    autocast: Annotated[Literal["off", "bf16", "fp16"], BeforeValidator(_yaml_switch)] = Field(
        "off", description="mixed precision: bf16 (CPU or CUDA) or fp16 (CUDA, with a gradient scaler)")
    teacher_autocast: Annotated[Literal["off", "bf16", "fp16"], BeforeValidator(_yaml_switch)] = Field(
        "off", description="the teachers' forward alone in bf16 (CPU or CUDA) or fp16 (CUDA), their outputs cast "
        "back to float32; the student's step keeps its own precision (autocast). Twice as fast for a YOLO-m teacher "
        "on a CPU with AVX512-BF16; rounds the teachers' outputs (the teacher cache keys it)")
    compile: bool = Field(False, description="torch.compile the student (taps on the student disable it)")
    fuse_teacher_bn: bool = Field(False, description="fold the teachers' BatchNorms into the convolutions before "
                                  "them (same outputs up to float rounding; engine/fuse.py)")
    nonfinite_check: Literal["step", "deferred"] = Field(
        "step", description="step: a NaN/inf input, loss or gradient is found and its step skipped at once (three "
        "scalar reads per step: host syncs on a GPU); deferred: no host read per step: the flag stays on the device, "
        "a fused optimizer (sgd, adam, adamw) skips the update and the batch-norm statistics are put back with it, "
        "and the counts are read every check_every steps (engine/nonfinite.py)")
    check_every: int = Field(50, gt=0, description="steps between two reads of the deferred check's counts (and, "
                                                   "under DDP, of the stop signal)")
    keep_freed_memory: bool = Field(
        True, description="glibc's malloc keeps freed blocks up to 32 MiB for reuse instead of handing their pages "
        "back and faulting them in again every step (a fifth of a small CNN's CPU step); the resident memory stays "
        "near its peak. Set for the whole process by `hintdistill run` (engine/memory.py); no number changes")


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
    speed: SpeedConfig = SpeedConfig()

    @model_validator(mode="before")
    @classmethod
    def _single_teacher(cls, data: Any) -> Any:
        if isinstance(data, dict) and "teacher" in data:
            if "teachers" in data:
                raise ValueError("give either 'teacher' or 'teachers', not both")
            data = dict(data)
            data["teachers"] = [data.pop("teacher")]
        return data

    @model_validator(mode="after")
    def _augment_fits_task(self):
        allowed = set(AUGMENT_BY_TASK[self.task])
        phases = [(f"teachers.{i}.train", t.train) for i, t in enumerate(self.teachers)] + \
                 [("baseline", self.baseline)] * (self.baseline is not None) + \
                 [(f"distill.{i}", s) for i, s in enumerate(self.distill)]
        for where, phase in phases:
            wrong = sorted(set(phase.augment) - allowed)
            if wrong:
                raise ValueError(f"{where}.augment: {wrong} not available for {self.task}; use {sorted(allowed)}")
        return self

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
    """``key.path=value`` strings to (key, value) pairs, the value read as YAML (``3``, ``[a, b]``, ``true``)."""
    out = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key.path=value, got '{item}'")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set '{item}': the key path '{key}' has an empty part; write e.g. "
                              f"--set distill.0.epochs=5")
        try:
            value = yaml.safe_load(raw)
        except (yaml.YAMLError, RecursionError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(f"--set {key}: the value '{raw[:80]}' is not valid YAML ({first}); to pass it as "
                              f"text, put it in quotes: --set '{key}=\"{raw[:20]}\"'") from None
        check_tree(value, f"--set {key}")
        out.append((key, value))
    return out


MAX_ERRORS_SHOWN = 20


def format_validation_error(err: ValidationError, source: str, single_teacher: bool = False) -> str:
    lines = [f"invalid recipe {source}:"]
    errors = err.errors()
    for e in errors[:MAX_ERRORS_SHOWN]:
        loc = list(e["loc"])
        if single_teacher and loc[:2] == ["teachers", 0]:
            loc = ["teacher", *loc[2:]]  # name the field as the recipe spells it, not as it is normalized
        path = ".".join(str(p) for p in loc) or "(top level)"
        value = e.get("input")
        shown = reprlib.repr(value) if not isinstance(value, dict) else "{...}"  # bounded, even for huge lists
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"  {path}: {e['msg']} (got {shown})")
    if len(errors) > MAX_ERRORS_SHOWN:
        lines.append(f"  ... and {len(errors) - MAX_ERRORS_SHOWN} more")
    return "\n".join(lines)


# A recipe is a few KB; these bounds stop a wrong file or an alias bomb before it fills memory or the stack.
MAX_RECIPE_BYTES = 1_000_000
MAX_DEPTH = 40
MAX_VALUES = 100_000


def check_tree(tree: Any, source: str) -> None:
    """Reject what no recipe field can hold, before pydantic walks it: nesting deeper than ``MAX_DEPTH``,
    more than ``MAX_VALUES`` values once aliases are expanded, a structure that contains itself, keys that are
    not strings, and numbers that are not finite or do not fit 64 bits."""
    count = 0
    stack: list[tuple[Any, str, int, tuple[int, ...]]] = [(tree, "", 0, ())]
    while stack:
        node, where, depth, parents = stack.pop()
        count += 1
        at = f" at '{where}'" if where else ""
        if count > MAX_VALUES:
            raise ConfigError(f"{source} expands to more than {MAX_VALUES} values (YAML aliases repeated inside "
                              f"each other?); a recipe holds a few hundred: remove the repeated '*' aliases")
        if depth > MAX_DEPTH:
            raise ConfigError(f"{source} is nested more than {MAX_DEPTH} levels deep{at}; no recipe field is: "
                              f"check the brackets and indentation")
        if isinstance(node, float) and not math.isfinite(node):
            raise ConfigError(f"{source}: {node!r}{at} is not a finite number; give a real value")
        if isinstance(node, int) and not isinstance(node, bool) and not -2**63 <= node < 2**63:
            raise ConfigError(f"{source}: the number{at} has {len(str(node))} digits, more than any field takes")
        if not isinstance(node, dict | list):
            continue
        if id(node) in parents:
            raise ConfigError(f"{source}: the value{at} contains itself (a YAML alias inside its own anchor); "
                              f"write the value out instead")
        inner = (*parents, id(node))
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            if isinstance(node, dict) and not isinstance(key, str):
                raise ConfigError(f"{source}: the key {key!r}{at} is not a field name (YAML read it as a "
                                  f"{type(key).__name__}); field names are words: quote it ('{key}') if needed")
            stack.append((value, f"{where}.{key}" if where else str(key), depth + 1, inner))


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; any problem is a ConfigError naming the field."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"recipe {path} is a folder; give the recipe's .yaml file (ready ones are in recipes/)")
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist; ready recipes are in the recipes/ folder")
    try:
        size = path.stat().st_size
        if size > MAX_RECIPE_BYTES:
            raise ConfigError(f"recipe {path} is {size / 1e6:.1f} MB; a recipe is a few KB of YAML: is it the "
                              f"right file?")
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise ConfigError(f"recipe {path} cannot be read ({e.strerror or e}); check its permissions") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"recipe {path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                          f"is it the right file? A recipe is a YAML text file, see recipes/") from None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {path} is not valid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"recipe {path} is nested too deeply for YAML to read; check the brackets "
                          f"and indentation") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"recipe {path} must be a mapping of fields (name, data, teacher, student, distill)")
    return recipe_from_dict(tree, overrides, str(path))


def recipe_from_dict(tree: dict, overrides: list[str] | None = None, source: str = "<dict>") -> Recipe:
    """Apply ``--set`` overrides and validate; any problem is a ConfigError naming the field."""
    if not isinstance(tree, dict):
        raise ConfigError(f"recipe {source} must be a mapping of fields, got a {type(tree).__name__}")
    for key, value in parse_overrides(overrides or []):
        set_path(tree, key, value)
    check_tree(tree, f"recipe {source}")
    single_teacher = "teacher" in tree and "teachers" not in tree
    try:
        return Recipe.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, single_teacher)) from None
