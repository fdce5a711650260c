"""``report.html``: one self-contained page per run (images embedded as base64 PNG, no external files).

It holds the summary table (teacher / baseline / distilled: accuracy or mAP, params, GFLOPs, latency,
training time), the training curves of every phase, the feature maps of every hint pair on the first
test image, a detector's boxes on that image, a classifier's softened class distributions (teacher vs
distilled student at the recipe's KD temperature) and the test images where the two disagree, the
distillation stages and the recipe. Each figure is also written to ``RUN/figures/<name>.png``. A figure that cannot be drawn never stops the run: the
report names it and says why.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

from . import run_folder
from .engine.logging import read_metrics

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th { background: #f3f3f3; } td:first-child, td:nth-child(2) { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.problem { color: #a00; } .note { color: #a60; } .meta { color: #666; }
"""


class Report:
    """Collects the page's sections; ``figure`` draws, saves and embeds one figure or records why it failed."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.figures = run_dir / "figures"
        self.parts: list[str] = []
        self.problems: list[str] = []

    def add(self, text: str) -> None:
        self.parts.append(text)

    def problem(self, what: str, error: BaseException) -> None:
        where = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
        at = f" (at {Path(where.filename).name}:{where.lineno})" if where else ""
        message = f"{what}: {type(error).__name__}: {error}{at}"
        self.problems.append(message)
        self.add(f'<p class="problem">Not drawn: {html.escape(message)}</p>')

    def figure(self, name: str, caption: str, draw: Callable[[], object]) -> None:
        from .figures import plt, png_bytes

        try:
            png = png_bytes(draw())
            self.figures.mkdir(parents=True, exist_ok=True)
            (self.figures / f"{name}.png").write_bytes(png)
        except Exception as e:  # noqa: BLE001 - a figure must never stop the run; the page says why
            plt.close("all")
            self.problem(f"figure '{name}'", e)
            return
        data = base64.b64encode(png).decode("ascii")
        self.add(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(name)}">'
                 f"<figcaption>{html.escape(caption)} (figures/{html.escape(name)}.png)</figcaption></figure>")

    def section(self, title: str, build: Callable[[], None]) -> None:
        self.add(f"<h2>{html.escape(title)}</h2>")
        try:
            build()
        except Exception as e:  # noqa: BLE001
            self.problem(f"section '{title}'", e)


# The summary's columns and formats, shared by summary.md, the console and report.html.
COLUMNS = {
    "classification": [("model", "model"), ("arch", "architecture"), ("accuracy", "test acc"),
                       ("errors", "test errors"), ("params", "params"), ("gflops", "GFLOPs"),
                       ("cpu_ms_per_image", "CPU ms/img"), ("train_s", "train time")],
    "detection": [("model", "model"), ("arch", "architecture"), ("map50", "mAP@0.5"), ("map", "mAP@[.5:.95]"),
                  ("params", "params"), ("gflops", "GFLOPs"), ("cpu_ms_per_image", "CPU ms/img"),
                  ("train_s", "train time")],
}


def fmt(key: str, v) -> str:
    """One summary value as the tables show it."""
    if v is None:
        return "-"
    if key == "params":
        return f"{v / 1e6:.2f}M" if v >= 1e5 else f"{v / 1e3:.1f}K"
    if key == "train_s":
        return f"{v / 60:.1f} min" if v >= 60 else f"{v:.1f} s"
    if key in ("accuracy", "map50", "map"):
        return f"{100 * v:.2f}%" if key == "accuracy" else f"{v:.4f}"
    if key == "gflops":
        return f"{v:.3f}"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def markdown_table(rows: list[dict], kind: str) -> str:
    """The summary rows as the Markdown table of ``summary.md`` and the console."""
    cols = COLUMNS[kind]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(k, r.get(k)) for k, _ in cols) + " |")
    return "\n".join(lines)


def write_summary(summary: dict, run_dir: Path, kind: str, note: str = "") -> None:
    """``summary.json`` and ``summary.md`` of a finished run; ``note`` follows the table (e.g. dropped images)."""
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    text = f"# {summary['recipe']}\n\nTest-set results ({kind}), device {summary['device']}.\n\n"
    text += markdown_table(summary["rows"], kind) + "\n" + note
    (run_dir / "summary.md").write_text(text)


def summary_table(summary: dict) -> str:
    """The run's summary rows as an HTML table, with the columns and formats of ``summary.md``."""
    cols = COLUMNS.get(summary.get("task", "classification"), COLUMNS["classification"])
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in cols)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(k, r.get(k)))}</td>" for k, _ in cols) + "</tr>"
                   for r in summary["rows"])
    return f'<table id="summary"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def stages_table(recipe) -> str:
    rows = []
    for stage in recipe.distill:
        terms = ", ".join(t.describe() for t in stage.terms)
        rows.append(f"<tr><td>{html.escape(stage.name)}</td><td>{stage.epochs}</td><td>{stage.trainable}</td>"
                    f"<td style='text-align:left'>{html.escape(terms)}</td></tr>")
    return ("<table><thead><tr><th>stage</th><th>epochs</th><th>trainable</th><th>terms (weight)</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def phase_histories(run_dir: Path) -> dict[str, list[dict]]:
    """Every phase's ``metrics.jsonl``, teachers first, then the baseline, then the distilled student."""
    phases = sorted((p.name for p in run_dir.iterdir() if (p / "metrics.jsonl").is_file()),
                    key=lambda p: (not p.startswith("teacher"), p != "baseline", p))
    return {p: read_metrics(run_dir / p / "metrics.jsonl") for p in phases}


class RunReport(Report):
    """The report of one run folder: its sections, each built from what the folder holds."""

    def __init__(self, run_dir: Path):
        super().__init__(run_dir)
        self.title = run_dir.name
        self.run = None

    def summary_section(self) -> None:
        path = self.run_dir / "summary.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the run has not finished")
        summary = json.loads(path.read_text())
        self.title = summary.get("recipe", self.title)
        self.add(f'<p class="meta">task {html.escape(str(summary.get("task")))}, device '
                 f'{html.escape(str(summary.get("device")))}; test-set results.</p>{summary_table(summary)}')

    def curves_section(self) -> None:
        from . import figures as fg

        self.figure("curves", "Every loss term and test metric per epoch; dotted lines: the distilled phase's stages",
                    lambda: fg.curves_figure(phase_histories(self.run_dir)))

    def features_section(self) -> None:
        from . import figures as fg
        from . import viz  # matplotlib, like figures

        run = self.run = run_folder.Run(self.run_dir)
        pairs = viz.recipe_pairs(run.recipe, run.task)
        if not pairs:
            self.add("<p>The recipe has no hint terms; `hintdistill viz RUN --image PATH --layers hint=guided` draws "
                     "any pair of layers.</p>")
            return
        example = run_folder.first_test_example(run)
        with warnings.catch_warnings():  # an untrained adapter is said in the figure's caption instead
            warnings.simplefilter("ignore", UserWarning)
            maps = viz.feature_maps(run, example, pairs)
        for i, m in enumerate(maps):
            self.figure(f"features_{i}_{viz.safe_name(m.hint_name)}__{viz.safe_name(m.guided_name)}",
                        f"First test image: teacher hint {m.hint_name}, distilled student's guided {m.guided_name} "
                        f"and its adapted map" + (f" — {'; '.join(m.notes)}" if m.notes else ""),
                        lambda m=m: fg.feature_figure(example.image, m, "first test image"))
        if run.task == "detection":
            names = example.class_names or run_folder.class_names(run.recipe, 0)
            self.figure("detections", "First test image: ground truth, teacher, baseline and distilled boxes",
                        lambda: fg.detection_figure(example.image, viz.detection_panels(run, example), names,
                                                    viz.CONF_THRESH))

    def dark_knowledge_section(self) -> None:
        from . import dark_knowledge as dk  # matplotlib, like figures

        run = self.run or run_folder.Run(self.run_dir)
        pred = dk.class_predictions(run)
        self.add(f'<p id="disagreements">Soft targets at {html.escape(pred.source)}; '
                 f"{html.escape(dk.disagreement_text(pred))}.</p>")
        self.figure("soft_targets", f"Teacher and distilled student softmax(z / T) per class on {dk.SHOWN} test "
                    f"images (the first where they disagree, then the first where they agree), at T = "
                    f"{pred.temperature:g}" + (" and T = 1" if pred.temperature != 1 else ""),
                    lambda: dk.soft_targets_figure(pred, dk.chosen_examples(pred)))
        if len(pred.disagreements()):
            self.figure("disagreements", "Test images where teacher and distilled student disagree: true label, "
                        "each model's prediction and its confidence", lambda: dk.disagreement_figure(pred))

    def recipe_section(self) -> None:
        if self.run is not None and self.run.recipe is not None:
            self.add(stages_table(self.run.recipe))
        self.add(f"<pre>{html.escape((self.run_dir / 'recipe.yaml').read_text())}</pre>")

    def page(self) -> str:
        """The whole page; problems at the top, so a missing figure is never mistaken for a quiet success."""
        problems = ""
        if self.problems:
            items = "".join(f"<li>{html.escape(p)}</li>" for p in self.problems)
            problems = f'<h2>Problems</h2><ul class="problem" id="problems">{items}</ul>'
        when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        title = html.escape(self.title)
        return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title} report</title>'
                f"<style>{CSS}</style></head><body><h1>{title}</h1>"
                f'<p class="meta">hintdistill run report, {html.escape(str(self.run_dir))}, written {when}</p>{problems}'
                + "\n".join(self.parts) + "</body></html>\n")


def write_report(run_dir: str | Path) -> Path:
    """Write ``RUN/report.html`` (and ``RUN/figures/*.png``) for a run folder; returns the page's path.

    Never raises for a figure or section that cannot be built: the page lists what is missing and why.
    """
    run_dir = Path(run_dir)
    report = RunReport(run_dir)
    report.section("Results", report.summary_section)
    report.section("Training curves", report.curves_section)
    report.section("Feature maps and detections", report.features_section)
    if (report.run.task if report.run else None) == "classification":
        report.section("What is distilled: soft targets and disagreements", report.dark_knowledge_section)
    report.section("Distillation stages and recipe", report.recipe_section)
    path = run_dir / "report.html"
    path.write_text(report.page(), encoding="utf-8")
    return path
