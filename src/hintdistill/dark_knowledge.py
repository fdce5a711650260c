"""What is being distilled for a classifier, as the report shows it.

Hinton et al. (2015) call the teacher's small probabilities for the wrong classes "dark knowledge":
softmax(z / T) at the recipe's KD temperature T makes them visible, and they are what the student is
taught. ``class_predictions`` runs the teacher(s) and the distilled student over the test set;
``soft_targets_figure`` draws both softened distributions for a few test images (at T and at T = 1),
``disagreement_figure`` the test images where teacher and distilled student predict different classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .build import build_data
from .config import Recipe
from .data.classification import STATS, load_tensors
from .figures import display_image, plt
from .run_folder import IMAGENET, Run, class_names
from .terms.logits import soft_targets

KD_TYPES = ("kd", "dkd")
MAX_TEST = 10000  # images run through the models; enough for the counts, bounded for large image folders
THUMB = 64  # larger test images are kept at this size: they are only drawn small
SHOWN, MAX_DISAGREE_SHOWN = 6, 24


@dataclass
class Predictions:
    """Test images (``[N, C, H, W]`` in 0..1), labels, each used teacher's and the distilled student's logits,
    and the KD temperature with a sentence saying where it came from."""

    images: torch.Tensor
    labels: torch.Tensor
    teacher_logits: list[torch.Tensor]
    student_logits: torch.Tensor
    temperature: float
    source: str
    class_names: list[str]

    def teacher_probs(self, temperature: float) -> torch.Tensor:
        """The teachers' averaged softmax(z / T): the soft targets the kd term uses."""
        return soft_targets(self.teacher_logits, temperature)

    def student_probs(self, temperature: float) -> torch.Tensor:
        return F.softmax(self.student_logits.float() / temperature, dim=1)

    def disagreements(self) -> torch.Tensor:
        """Indices of the test images whose teacher and student top-1 classes differ."""
        return (self.teacher_probs(1.0).argmax(1) != self.student_probs(1.0).argmax(1)).nonzero().flatten()

    def name(self, k: int) -> str:
        return self.class_names[k] if k < len(self.class_names) else f"class {k}"


def kd_temperature(recipe: Recipe) -> tuple[float, list[int] | None, str]:
    """(T, teacher indices or None for all, where T came from): the last kd/dkd term of the distill stages."""
    for stage in reversed(recipe.distill):
        for cfg in reversed(stage.terms):
            if cfg.type in KD_TYPES:
                teachers = [cfg.teacher_index] if hasattr(cfg, "teacher_index") else None
                return float(cfg.temperature), teachers, f"T = {cfg.temperature:g}, the {cfg.type} term of stage " \
                                                         f"'{stage.name}'"
    return 1.0, None, "the recipe has no kd or dkd term, so T = 1 (plain softmax)"


def _test_batches(recipe: Recipe, batch: int):
    """(normalized inputs, images in 0..1, labels) of the recipe's test split, at most MAX_TEST images."""
    d = recipe.data
    if d.name in STATS:
        images, labels = load_tensors(d.name, "test", d.data_dir, d.download)
        n = min(d.test_subset or len(labels), MAX_TEST)
        mean, std = (torch.tensor(s).view(1, -1, 1, 1) for s in STATS[d.name])
        for i in range(0, n, batch):
            image = images[i: min(i + batch, n)].float() / 255
            yield (image - mean) / std, image, labels[i: min(i + batch, n)]
        return
    mean, std = (torch.tensor(s).view(1, -1, 1, 1) for s in IMAGENET)
    seen = 0
    for x, y in build_data(recipe).test_loader:
        x, y = x[: MAX_TEST - seen], y[: MAX_TEST - seen]
        yield x, (x * std + mean).clamp(0, 1), y
        seen += len(y)
        if seen >= MAX_TEST:
            return


@torch.no_grad()
def class_predictions(run: Run) -> Predictions:
    """The teacher(s) the KD term distils from and the distilled student, on the run's test images."""
    recipe = run.recipe
    if recipe is None:
        raise ValueError(f"{run.folder} has no recipe.yaml, so its test data and KD temperature are unknown")
    temperature, used, source = kd_temperature(recipe)
    teachers = [run.teacher(i) for i in (used if used is not None else range(len(recipe.teachers)))]
    student = run.model("distilled")
    images, labels, student_logits, teacher_logits = [], [], [], [[] for _ in teachers]
    for x, image, y in _test_batches(recipe, recipe.eval_batch_size):
        student_logits.append(student(x).float())
        for out, teacher in zip(teacher_logits, teachers, strict=True):
            out.append(teacher(x).float())
        if max(image.shape[-2:]) > THUMB:
            image = F.interpolate(image, size=(THUMB, THUMB), mode="bilinear", antialias=True)
        images.append(image)
        labels.append(y)
    logits = torch.cat(student_logits)
    return Predictions(torch.cat(images), torch.cat(labels), [torch.cat(t) for t in teacher_logits], logits,
                       temperature, source, class_names(recipe, logits.shape[1]))


def chosen_examples(pred: Predictions, n: int = SHOWN) -> list[int]:
    """``n`` test images in test order: the first ``n // 2`` disagreements, filled up with the first agreements."""
    differ = set(pred.disagreements()[: n // 2].tolist())
    agree = [i for i in range(len(pred.labels)) if i not in differ][: n - len(differ)]
    return sorted(differ | set(agree))


def _bars(ax, pred: Predictions, i: int, temperature: float) -> None:
    k = pred.student_logits.shape[1]
    xs = torch.arange(k).float()
    ax.bar(xs - 0.2, pred.teacher_probs(temperature)[i].numpy(), 0.4, label="teacher", color="tab:blue")
    ax.bar(xs + 0.2, pred.student_probs(temperature)[i].numpy(), 0.4, label="distilled student", color="tab:green")
    ax.set_ylim(0, 1)
    ax.set_xticks(xs.tolist(), [pred.name(c) for c in range(k)], rotation=60, ha="right", fontsize=7)
    ax.set_title(f"T = {temperature:g}", fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def soft_targets_figure(pred: Predictions, indices: list[int]):
    """One row per test image: the image, then teacher and student softmax(z / T) per class at the recipe's T
    and at T = 1 (one bar panel when T is 1)."""
    temps = [pred.temperature] + ([1.0] if pred.temperature != 1.0 else [])
    fig, axes = plt.subplots(len(indices), 1 + len(temps), figsize=(4 + 5 * len(temps), 2.6 * len(indices)),
                             squeeze=False, layout="constrained", width_ratios=[1] + [2] * len(temps))
    t_pred, s_pred = pred.teacher_probs(1.0).argmax(1), pred.student_probs(1.0).argmax(1)
    for row, i in zip(axes, indices, strict=True):
        row[0].imshow(display_image(pred.images[i]))
        row[0].set_title(f"test #{i}: {pred.name(int(pred.labels[i]))}\nteacher {pred.name(int(t_pred[i]))}, "
                         f"student {pred.name(int(s_pred[i]))}", fontsize=8)
        row[0].set_xticks([])
        row[0].set_yticks([])
        for ax, temperature in zip(row[1:], temps, strict=True):
            _bars(ax, pred, i, temperature)
    axes[0][1].legend(fontsize=8)
    fig.suptitle(f"Softened class distributions, teacher vs distilled student ({pred.source})", fontsize=11)
    return fig


def disagreement_figure(pred: Predictions, limit: int = MAX_DISAGREE_SHOWN):
    """The first ``limit`` test images where teacher and distilled student disagree, each with its true label and
    both predictions with their confidence (softmax at T = 1)."""
    differ = pred.disagreements()
    if not len(differ):
        raise ValueError("teacher and distilled student agree on every test image")
    shown = differ[:limit].tolist()
    cols = min(6, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.9 * rows), squeeze=False, layout="constrained")
    pt, ps = pred.teacher_probs(1.0), pred.student_probs(1.0)
    for ax, i in zip(axes.flat, shown, strict=False):
        t, s, y = int(pt[i].argmax()), int(ps[i].argmax()), int(pred.labels[i])
        ax.imshow(display_image(pred.images[i]))
        ax.set_title(f"#{i} true {pred.name(y)}\nteacher {pred.name(t)} {pt[i, t]:.2f}\n"
                     f"student {pred.name(s)} {ps[i, s]:.2f}", fontsize=7,
                     color="tab:blue" if t == y else "tab:green" if s == y else "black")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(ax.has_data())
    fig.suptitle(disagreement_text(pred) + f"; first {len(shown)} shown (title blue: teacher right, green: student "
                 "right)", fontsize=10)
    return fig


def disagreement_text(pred: Predictions) -> str:
    """The count of disagreements and who was right in them."""
    differ = pred.disagreements()
    t_right = int((pred.teacher_probs(1.0)[differ].argmax(1) == pred.labels[differ]).sum())
    s_right = int((pred.student_probs(1.0)[differ].argmax(1) == pred.labels[differ]).sum())
    return (f"teacher and distilled student disagree on {len(differ)} of {len(pred.labels)} test images "
            f"(teacher right on {t_right}, student right on {s_right}, neither on {len(differ) - t_right - s_right})")
