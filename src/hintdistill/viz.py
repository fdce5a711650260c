"""See what is being distilled: a run's feature maps and detections on one image (``hintdistill viz``).

For every hint pair (teacher ``hint`` layer, student ``guided`` layer) the teacher's hint map, the
distilled student's guided map and that map after the adaptation layer, with their L2 distance; for a
detector, also the teacher's, the baseline's and the distilled student's boxes side by side. The
figures are drawn by ``hintdistill.figures``; ``hintdistill.report`` puts them into ``report.html``;
``hintdistill.run_folder`` reads the run and prepares the image.

Adapters are trained weights only where the run's ``distilled/checkpoint.pt`` still holds them (under
``stage_terms[stage index]``, or ``terms`` while the hint stage runs); otherwise the adapter is built from the recipe's
hint term with a fixed seed and the figure says it is untrained.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import Recipe
from .errors import CheckpointError, ConfigError
from .figures import FeatureMaps, detection_figure, feature_figure, png_bytes
from .run_folder import Example, Run, class_names, image_example
from .taps import Taps, feature_key
from .terms import HintLoss, HintPair, feature_distance, term_names
from .terms.detection import NECK_LEVELS

CONF_THRESH, IOU_THRESH = 0.25, 0.45
LOW_CONF, TOP_WHEN_NONE = 0.001, 5


@dataclass(frozen=True)
class LayerPair(HintPair):
    """A hint pair as viz draws it. ``adapter`` None: not in the recipe, chosen from the shapes; ``stage`` and
    ``state_prefix`` (the term's name included) locate trained adapter weights in the distilled phase's terms
    state."""

    stage: int | None = None


def recipe_pairs(recipe: Recipe | None, task: str) -> list[LayerPair]:
    """The hint pairs of the recipe's distillation stages; a detector whose recipe has none (or no recipe):
    its neck levels P3/P4/P5, so a detection run always shows the feature maps its hints would come from."""
    pairs = []
    for si, stage in enumerate(recipe.distill if recipe is not None else []):
        names = term_names(cfg.type for cfg in stage.terms)  # the terms' names in the Distiller
        for name, cfg in zip(names, stage.terms, strict=True):
            pairs += [LayerPair(**{**vars(p), "state_prefix": f"{name}.{p.state_prefix}"}, stage=si)
                      for p in cfg.hint_pairs()]
    if not pairs and task == "detection":
        return [LayerPair(t, s) for t, s in NECK_LEVELS]
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
        prefix = pair.state_prefix
        adapter_state = {k[len(prefix):]: v for k, v in (state or {}).items() if k.startswith(prefix)}
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


def panel_models(run: Run) -> list[tuple[str, torch.nn.Module]]:
    """The run's models, teachers first, then the baseline and the distilled student: every phase with weights,
    and each teacher the recipe loaded from a checkpoint (it has no phase folder of its own in the run)."""
    phases = sorted(run.phases, key=lambda p: (not p.startswith("teacher"), p != "baseline", p))
    models = [(phase, run.model(phase)) for phase in phases]
    teachers = run.recipe.teachers if run.recipe is not None else []
    for index, tcfg in enumerate(teachers):
        name = "teacher" if len(teachers) == 1 else f"teacher_{index}"  # the phase name a trained teacher gets
        if not tcfg.checkpoint or name in run.phases:
            continue
        try:
            models.insert(index, (name, run.teacher(index)))
        except CheckpointError as err:  # moved or deleted since the run: the other panels still say something
            warnings.warn(f"no teacher panel: {err}", UserWarning, stacklevel=2)
    return models


@torch.no_grad()
def detection_panels(run: Run, example: Example) -> list[tuple[str, dict]]:
    """(title, boxes) of the ground truth (if known), the teacher(s), the baseline and the distilled student."""
    panels = []
    if example.target is not None:
        panels.append(("ground truth", {"boxes": example.target["boxes"], "labels": example.target["labels"]}))
    for phase, model in panel_models(run):
        det = model.postprocess(model(example.x), LOW_CONF, IOU_THRESH)[0]
        keep = det["scores"] > CONF_THRESH
        if keep.any() or not len(keep):
            det = {k: v[keep] for k, v in det.items()}
        else:  # an early or weak model: its best few guesses say more than an empty panel
            det = {**{k: v[:TOP_WHEN_NONE] for k, v in det.items()},
                   "note": f"no box > {CONF_THRESH:g}; its top {min(TOP_WHEN_NONE, len(keep))} shown"}
        panels.append((phase, det))
    return panels


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def viz_command(args) -> int:
    """``hintdistill viz RUN --image PATH [--layers ...] [--input-size N] [--out DIR]``: writes PNG figures."""
    run = Run(args.run)
    example = image_example(run, args.image, args.input_size)
    pairs = parse_layers(args.layers, recipe_pairs(run.recipe, run.task))
    if not pairs:
        why = "the recipe has no hint terms" if run.recipe else f"{run.folder} has no recipe.yaml to take hint layers from"
        raise ConfigError(f"{why}; name layers with --layers hint=guided (or a name tapped on both); "
                          f"`hintdistill inspect` lists a model's modules")
    out = Path(args.out) if args.out else run.folder / "figures"
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        maps = feature_maps(run, example, pairs)
    for w in caught:
        if issubclass(w.category, UserWarning):
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
