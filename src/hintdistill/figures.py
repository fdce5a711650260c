"""Matplotlib figures (Agg, no display needed): feature maps, detection overlays, training curves.

Every function takes plain tensors / records and returns a ``Figure``; ``png_bytes`` renders one.
Loading models and run folders is ``hintdistill.viz``'s job; this file only draws.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")  # before pyplot: figures are written to files, never shown

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

SKIPPED_CURVES = {"test/examples"}  # bookkeeping, not a metric
PHASE_COLORS = {"teacher": "tab:blue", "baseline": "tab:orange", "distilled": "tab:green"}
GRID_CHANNELS = 16


@dataclass
class FeatureMaps:
    """One hint pair on one image: the teacher's hint, the student's guided map and its adapted map
    (each ``[C, H, W]`` or ``[D]``), with the distance between hint and adapted map."""

    hint_name: str
    guided_name: str
    hint: torch.Tensor
    guided: torch.Tensor
    adapted: torch.Tensor
    l2: float  # ‖hint − adapted‖₂
    mse: float  # mean over elements of (hint − adapted)², the hint loss with distance l2
    adapter: str = "conv1x1"
    notes: list[str] = field(default_factory=list)  # e.g. "adapter untrained"


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes; the figure is closed afterwards."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def display_image(image: torch.Tensor):
    """A ``[C, H, W]`` image as ``[H, W, 3]`` in 0..1 for imshow (grey images repeated to RGB)."""
    image = image.detach().float().cpu()
    if image.shape[0] == 1:
        image = image.repeat(3, 1, 1)
    return image[:3].clamp(0, 1).permute(1, 2, 0).numpy()


def _normalize(t: torch.Tensor) -> torch.Tensor:
    lo, hi = t.min(), t.max()
    return (t - lo) / (hi - lo) if hi > lo else torch.zeros_like(t)


def strongest_channels(feature: torch.Tensor, k: int = GRID_CHANNELS) -> torch.Tensor:
    """Indices of the ``k`` channels of ``[C, H, W]`` with the largest mean absolute activation."""
    return feature.abs().flatten(1).mean(1).topk(min(k, feature.shape[0])).indices


def channel_mosaic(feature: torch.Tensor, channels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Chosen channels, each scaled to 0..1, tiled into one image with 1-pixel NaN gutters (drawn blank)."""
    n = len(channels)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w = feature.shape[1:]
    out = torch.full((rows * (h + 1) - 1, cols * (w + 1) - 1), float("nan"))
    for i, c in enumerate(channels.tolist()):
        r, q = divmod(i, cols)
        out[r * (h + 1): r * (h + 1) + h, q * (w + 1): q * (w + 1) + w] = _normalize(feature[c])
    return out, cols


def _vector_as_square(v: torch.Tensor) -> torch.Tensor:
    side = math.ceil(math.sqrt(v.numel()))
    out = torch.full((side * side,), float("nan"))
    out[: v.numel()] = _normalize(v)
    return out.view(side, side)


def _draw_panel(ax_heat, ax_grid, image: torch.Tensor, feature: torch.Tensor, label: str) -> None:
    shape = "×".join(str(s) for s in feature.shape)
    if feature.dim() == 3:
        heat = feature.mean(0)[None, None]
        heat = F.interpolate(heat, size=tuple(image.shape[-2:]), mode="bilinear", align_corners=False)[0, 0]
        ax_heat.imshow(display_image(image))
        ax_heat.imshow(_normalize(heat).numpy(), cmap="jet", alpha=0.5)
        ax_heat.set_title(f"{label}\nmean over {feature.shape[0]} channels", fontsize=10)
        channels = strongest_channels(feature)
        mosaic, cols = channel_mosaic(feature, channels)
        ax_grid.imshow(mosaic.numpy(), cmap="viridis")
        ax_grid.set_title(f"strongest {len(channels)} of {feature.shape[0]} channels ({shape})", fontsize=10)
        first = ", ".join(str(c) for c in channels[:cols].tolist())
        ax_grid.set_xlabel(f"channels (row 1): {first} ...", fontsize=8)
    else:  # a vector feature [D]: no spatial layout to lay over the image
        ax_heat.imshow(display_image(image))
        ax_heat.set_title(f"{label}\nvector feature ({shape}), no spatial map", fontsize=10)
        ax_grid.imshow(_vector_as_square(feature.flatten()).numpy(), cmap="viridis")
        ax_grid.set_title(f"{feature.numel()} values, row by row", fontsize=10)
    for ax in (ax_heat, ax_grid):
        ax.set_xticks([])
        ax.set_yticks([])


def feature_figure(image: torch.Tensor, maps: FeatureMaps, title: str = "") -> Figure:
    """Columns: teacher hint, student guided, student after the adaptation layer; rows: the mean-over-channels
    heatmap laid over ``image`` (``[C, H, W]`` in 0..1) and a grid of the strongest channels."""
    fig, axes = plt.subplots(2, 3, figsize=(15, 11), squeeze=False, layout="constrained")
    columns = [(maps.hint, f"teacher hint {maps.hint_name}"),
               (maps.guided, f"student guided {maps.guided_name}"),
               (maps.adapted, f"student after adapter ({maps.adapter})")]
    for (feature, label), ax_heat, ax_grid in zip(columns, axes[0], axes[1], strict=True):
        _draw_panel(ax_heat, ax_grid, image, feature.detach().float().cpu(), label)
    head = f"{title}: " if title else ""
    note = f"\n{'; '.join(maps.notes)}" if maps.notes else ""
    fig.suptitle(f"{head}hint {maps.hint_name} ← guided {maps.guided_name}\nL2 distance ‖hint − adapted‖₂ = "
                 f"{maps.l2:.4g} (mean squared {maps.mse:.4g}){note}", fontsize=12)
    return fig


def detection_figure(image: torch.Tensor, panels: Sequence[tuple[str, dict]], class_names: Sequence[str],
                     conf_thresh: float) -> Figure:
    """``image`` with each panel's boxes side by side; ``panels`` are (title, {boxes, scores?, labels, note?}),
    boxes xyxy in the image's pixels. A panel without ``scores`` (ground truth) shows class names only;
    ``note`` replaces the box count under the title."""
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 5.6), squeeze=False, layout="constrained")
    colors = plt.get_cmap("tab10")
    for ax, (title, det) in zip(axes[0], panels, strict=True):
        ax.imshow(display_image(image))
        boxes, labels = det["boxes"].detach().cpu(), det["labels"].detach().cpu()
        scores = det.get("scores")
        for i, (box, label) in enumerate(zip(boxes.tolist(), labels.tolist(), strict=True)):
            x1, y1, x2, y2 = box
            color = colors(label % 10)
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.5))
            name = class_names[label] if label < len(class_names) else f"class {label}"
            score = None if scores is None else float(scores[i])
            text = name if score is None else f"{name} {score:.2f}" if score >= 0.01 else f"{name} {score:.0e}"
            right = x1 > 0.7 * image.shape[-1]  # labels near the right edge grow leftwards, inside the image
            ax.text(x2 if right else x1, y1, text, fontsize=7, color="white", va="bottom", clip_on=True,
                    ha="right" if right else "left",
                    bbox={"facecolor": color, "alpha": 0.8, "pad": 1, "edgecolor": "none"})
        count = f"{len(boxes)} boxes" if scores is None else f"{len(boxes)} boxes with score > {conf_thresh:g}"
        count = det.get("note", count)
        ax.set_title(f"{title}\n{count}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def curve_keys(histories: dict[str, list[dict]]) -> list[str]:
    """Every ``train/`` and ``test/`` quantity logged by any phase, losses first (``train/loss`` last)."""
    keys = {k for records in histories.values() for r in records for k, v in r.items()
            if k.startswith(("train/", "test/")) and k not in SKIPPED_CURVES
            and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return sorted(keys, key=lambda k: (k.startswith("test/"), k == "train/loss", k))


def curves_figure(histories: dict[str, list[dict]]) -> Figure:
    """Every loss term and metric per epoch, one panel each, the phases on shared axes; scheduled term
    weights (``weight/<term>``) in a last panel. Dotted lines mark the distilled phase's stage changes."""
    keys = curve_keys(histories)
    # teachers and baselines train with fixed weights; the distilled phase's may be scheduled
    weights = sorted({k for r in histories.get("distilled", []) for k in r if k.startswith("weight/")})
    n = len(keys) + (1 if weights else 0)
    if n == 0:
        raise ValueError("no train/ or test/ values in any metrics.jsonl")
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False, layout="constrained")
    flat = list(axes.flat)
    for ax, key in zip(flat, keys, strict=False):
        for phase, records in histories.items():
            points = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", markersize=3, label=phase, color=PHASE_COLORS.get(phase))
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if weights:
        ax = flat[len(keys)]
        for key in weights:
            points = [(r["epoch"], r[key]) for r in histories["distilled"] if key in r]
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", markersize=3, label=key[7:])
        ax.set_title("distilled: term weights (weight/<term>)", fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    epochs = [r["epoch"] for records in histories.values() for r in records]
    for ax in flat[:n]:  # one epoch axis for all panels, whatever each phase logged
        ax.set_xlim(min(epochs) - 0.3, max(epochs) + 0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _mark_stages(ax, histories.get("distilled", []))
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig


def _mark_stages(ax, records: list[dict]) -> None:
    for prev, cur in zip(records, records[1:], strict=False):
        if prev.get("stage") != cur.get("stage"):
            x = (prev["epoch"] + cur["epoch"]) / 2
            ax.axvline(x, color="grey", linestyle=":", linewidth=1)
            ax.text(x, 1.0, f" {cur.get('stage')}", transform=ax.get_xaxis_transform(), fontsize=7,
                    color="grey", va="top")
