"""``hintdistill sweep``: every combination of a few recipe fields (x seeds), resumably, ranked in one table.

    hintdistill sweep recipe.yaml --grid distill.0.terms.1.temperature=2,4,8 \\
        --grid distill.0.terms.1.weight=0.5,0.9 --tie distill.0.terms.0.weight=1-distill.0.terms.1.weight

Each cell (one combination, one seed) is a normal run of the recipe with those overrides, in its own
folder ``DIR/<combination>/seed<N>``. The teacher is trained once, in the first cell, and loaded from its
``model.pt`` by every other cell; the baseline student once per seed. (A grid over teacher or data fields
trains a teacher per cell; over student, baseline or data fields, a baseline per cell.) ``DIR/sweep.json``
keeps the plan and every finished cell's result and is rewritten after each cell with ``DIR/sweep.md``; a
finished cell is never run again, an interrupted one resumes. A ``--tie`` sets a field from an arithmetic
expression (+ - * / **, parentheses) of numbers and other fields, evaluated per cell after the grid values.
"""

from __future__ import annotations

import ast
import itertools
import json
import operator
import os
import re
import statistics
from pathlib import Path
from typing import Any

import yaml

from .config import load_recipe, parse_overrides, recipe_from_dict, set_path
from .errors import ConfigError, TrainingDiverged

PRIMARY = {"classification": ("accuracy", "errors"), "detection": ("map50", "map")}
TEACHER_FIELDS = ("teacher", "teachers", "data", "task")
BASELINE_FIELDS = ("student", "baseline", "data", "task")


def parse_grid(items: list[str]) -> dict[str, list]:
    """``KEY=V1,V2,...`` per item; each value is read as YAML (numbers, true/false, strings)."""
    grid: dict[str, list] = {}
    for item in items:
        key, _, raw = item.partition("=")
        key = key.strip()
        values = [yaml.safe_load(v) for v in raw.split(",") if v.strip()]
        if not key or not values:
            raise ConfigError(f"--grid expects KEY=V1,V2,... e.g. distill.0.terms.1.temperature=2,4,8; got '{item}'")
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice; list all its values in one --grid")
        if key == "seed":
            raise ConfigError("--grid seed: use --seeds N to repeat every combination over N seeds")
        grid[key] = values
    if not grid:
        raise ConfigError("hintdistill sweep needs at least one --grid KEY=V1,V2,...")
    return grid


def parse_ties(items: list[str], grid: dict[str, list]) -> dict[str, str]:
    ties: dict[str, str] = {}
    for item in items:
        key, _, expr = item.partition("=")
        key, expr = key.strip(), expr.strip()
        if not key or not expr:
            raise ConfigError(f"--tie expects KEY=EXPRESSION e.g. distill.0.terms.0.weight=1-distill.0.terms.1.weight; "
                              f"got '{item}'")
        if key in grid or key in ties:
            raise ConfigError(f"--tie {key}: the field is already set by another --grid or --tie")
        ties[key] = expr
    return ties


_PATH = re.compile(r"(?<![\w.])[A-Za-z_]\w*(?:\.\w+)*")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos}


def get_path(tree: Any, dotted: str) -> Any:
    """The value at ``a.b.0.c`` in nested dicts/lists; KeyError when a part is missing."""
    node = tree
    for k in dotted.split("."):
        node = node[int(k)] if isinstance(node, list) and k.lstrip("-").isdigit() else node[k]
    return node


def evaluate_tie(key: str, expr: str, tree: dict, defaults: dict) -> float:
    """``expr`` with each dotted field name replaced by its value in ``tree`` (else ``defaults``)."""
    values: dict[str, float] = {}

    def lookup(match: re.Match) -> str:
        path = match.group(0)
        for source in (tree, defaults):
            try:
                value = get_path(source, path)
                break
            except (KeyError, IndexError, TypeError, ValueError):
                continue
        else:
            raise ConfigError(f"--tie {key}={expr}: the recipe has no field '{path}'")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"--tie {key}={expr}: '{path}' is {value!r}, not a number")
        values[f"_v{len(values)}"] = value
        return f"_v{len(values) - 1}"

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.Name) and node.id in values:
            return values[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ConfigError(f"--tie {key}={expr}: only numbers, field names, + - * / ** and parentheses are allowed")

    try:
        result = ev(ast.parse(_PATH.sub(lookup, expr), mode="eval").body)
    except (SyntaxError, ZeroDivisionError, OverflowError) as e:
        raise ConfigError(f"--tie {key}={expr}: cannot evaluate it ({type(e).__name__})") from None
    return round(result, 12) if isinstance(result, float) else result  # 1 - 0.9 is 0.1, not 0.09999999999999998


def short_labels(keys: list[str]) -> dict[str, str]:
    """The shortest tail of each dotted key that starts with a name and tells it from the others."""
    labels = {}
    for key in keys:
        parts = key.split(".")
        for i in range(len(parts) - 1, -1, -1):
            tail = ".".join(parts[i:])
            if not parts[i].isdigit() and not any(o != key and (o == tail or o.endswith("." + tail)) for o in keys):
                labels[key] = tail
                break
        else:
            labels[key] = key
    return labels


def combo_name(combo: dict[str, Any], labels: dict[str, str]) -> str:
    """A folder name for a combination, e.g. ``temperature=4_terms.1.weight=0.9``."""
    text = "_".join(f"{labels[k]}={v}" for k, v in combo.items())
    return re.sub(r"[^\w.=+-]", "-", text)


def touches(keys, fields: tuple[str, ...]) -> bool:
    return any(k.split(".")[0] in fields for k in keys)


class Sweep:
    """The plan (cells in run order, each with its overrides and role) and its state file ``sweep.json``."""

    def __init__(self, recipe_path: str | Path, grid: dict[str, list], ties: dict[str, str], seeds: int,
                 overrides: list[str] | None = None, output_dir: str | Path | None = None):
        if seeds < 1:
            raise ConfigError(f"--seeds {seeds}: give 1 or more")
        self.recipe_path = Path(recipe_path)
        self.base = load_recipe(recipe_path, overrides)  # the recipe itself is checked before any cell
        self.tree = yaml.safe_load(self.recipe_path.read_text())
        for key, value in parse_overrides(overrides or []):
            set_path(self.tree, key, value)
        self.grid, self.ties = grid, ties
        self.folder = Path(output_dir or f"runs/{self.base.name}-sweep")
        self.labels = short_labels(list(grid) + list(ties))
        self.seeds = [self.base.seed + i for i in range(seeds)]
        self.state = self._open_state()
        self.cells = self._plan()

    def _open_state(self) -> dict:
        recipe = self.base.model_dump(mode="json", exclude={"output_dir"})
        path = self.folder / "sweep.json"
        if not path.is_file():
            return {"recipe_file": str(self.recipe_path), "recipe": recipe, "task": self.base.task, "cells": {}}
        state = json.loads(path.read_text())
        if state.get("recipe") != recipe:
            changed = sorted(k for k in recipe if recipe[k] != state.get("recipe", {}).get(k))
            raise ConfigError(f"{self.folder} holds a sweep of another recipe (fields that differ: "
                              f"{', '.join(changed) or 'all'}); give another --output-dir, or delete {self.folder}")
        return state

    def _plan(self) -> list[dict]:
        combos = [dict(zip(self.grid, values, strict=True)) for values in itertools.product(*self.grid.values())]
        cells = []
        for seed in self.seeds:
            for combo in combos:
                name = combo_name(combo, self.labels)
                cell = self.state["cells"].setdefault(f"{name}/seed{seed}", {
                    "name": name, "seed": seed, "combo": combo, "status": "pending",
                    "trains_teacher": False, "trains_baseline": False})
                cells.append(cell)
        if len({c["name"] for c in cells}) != len(combos):
            raise ConfigError("two --grid combinations give the same folder name; use values that differ in "
                              "letters or digits")
        self._assign_roles(cells)
        for cell in cells:  # every cell's recipe is checked before the first one trains
            self.recipe(cell)
        return sorted(cells, key=lambda c: not c["trains_teacher"])  # the shared teacher comes first

    def _assign_roles(self, cells: list[dict]) -> None:
        keys = list(self.grid) + list(self.ties)
        every = list(self.state["cells"].values())
        for old in every:  # an unfinished teacher owner dropped from the grid hands its role to this plan
            if old["trains_teacher"] and old["status"] == "pending" and not any(old is c for c in cells):
                old["trains_teacher"] = False
        if touches(keys, TEACHER_FIELDS):
            for c in cells:
                c["trains_teacher"] = True
        elif self.shared_teachers() and not any(c["trains_teacher"] for c in every):
            cells[0]["trains_teacher"] = True
        if self.base.baseline is None:
            return
        for seed in self.seeds:
            mine = [c for c in cells if c["seed"] == seed]
            if touches(keys, BASELINE_FIELDS):
                for c in mine:
                    c["trains_baseline"] = True
            elif not any(c["trains_baseline"] for c in every if c["seed"] == seed):
                mine[0]["trains_baseline"] = True

    def shared_teachers(self) -> list[int]:
        """Indices of the teachers the recipe trains (not loaded from a checkpoint): trained once, shared."""
        return [i for i, t in enumerate(self.base.teachers) if not t.checkpoint]

    def cell_dir(self, cell: dict) -> Path:
        return self.folder / cell["name"] / f"seed{cell['seed']}"

    def recipe(self, cell: dict):
        """The cell's recipe: the grid values, the ties, its seed and folder, the shared teacher and baseline."""
        tree = json.loads(json.dumps(self.tree))
        for key, value in cell["combo"].items():
            set_path(tree, key, value)
        if self.ties:
            defaults = recipe_from_dict(json.loads(json.dumps(tree)), source=str(self.recipe_path)).model_dump(mode="json")
            cell["ties"] = {k: evaluate_tie(k, expr, tree, defaults) for k, expr in self.ties.items()}
            for key, value in cell["ties"].items():
                set_path(tree, key, value)
        tree.update(seed=cell["seed"], output_dir=str(self.cell_dir(cell)))
        if not cell["trains_teacher"] and self.shared_teachers():
            owner = next(c for c in self.state["cells"].values() if c["trains_teacher"])
            for i in self.shared_teachers():
                phase = "teacher" if len(self.base.teachers) == 1 else f"teacher_{i}"
                entry = tree["teacher"] if "teacher" in tree else tree["teachers"][i]
                entry["checkpoint"] = str(self.cell_dir(owner) / phase / "model.pt")
        if not cell["trains_baseline"]:
            tree["baseline"] = None
        return recipe_from_dict(tree, source=f"{self.recipe_path} ({cell['name']}, seed {cell['seed']})")

    def save(self) -> None:
        self.state["ranking"] = rank(self.cells, self.base.task)
        self.state["grid"], self.state["tie"], self.state["seeds"] = self.grid, self.ties, self.seeds
        _write_atomic(self.folder / "sweep.json", json.dumps(self.state, indent=2))
        _write_atomic(self.folder / "sweep.md", f"# sweep of {self.recipe_path}\n\n{self.table()}\n")

    def table(self) -> str:
        # every cell of the state: the teacher's and a seed's baseline owner may come from an earlier grid
        return markdown(self.state["ranking"], references(list(self.state["cells"].values())), self.base.task,
                        list(self.grid), list(self.ties), self.labels)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_sweep(sweep: Sweep, log=print) -> dict:
    """Run every unfinished cell in order, rewriting sweep.json / sweep.md after each; returns the state."""
    from .engine.pipeline import run_recipe

    total = len(sweep.cells)
    sweep.save()  # the plan, with each cell's role, before the first cell trains
    for i, cell in enumerate(sweep.cells, 1):
        folder = sweep.cell_dir(cell)
        title = f"[sweep {i}/{total}] {cell['name']} seed {cell['seed']}"
        if (folder / "summary.json").is_file() if cell["status"] == "done" else cell["status"] == "diverged":
            log(f"{title}: finished earlier ({cell['status']}), not run again")
            continue
        log(f"{title}: {folder}")
        try:
            summary = run_recipe(sweep.recipe(cell), log=log)
        except TrainingDiverged as e:
            if cell["trains_teacher"]:
                raise  # no teacher: no other cell can run
            # a diverged combination is a result too (too high a weight or temperature); the sweep goes on
            log(f"{title}: diverged: {e}")
            cell.update(status="diverged", error=str(e), rows={})
        else:
            cell.update(status="done", rows={r["model"]: _numbers(r) for r in summary["rows"]})
        sweep.save()
    sweep.save()
    log("\n" + sweep.table())
    log(f"\nwritten: {sweep.folder / 'sweep.md'}, {sweep.folder / 'sweep.json'}")
    return sweep.state


def _numbers(row: dict) -> dict:
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def mean_std(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def rank(cells: list[dict], task: str) -> list[dict]:
    """One row per combination: the distilled student's metrics, mean and sample std over finished seeds,
    best primary metric first; combinations with no finished seed last."""
    metric, second = PRIMARY[task]
    groups: dict[str, list[dict]] = {}
    for cell in cells:
        groups.setdefault(cell["name"], []).append(cell)
    rows = []
    for name, group in groups.items():
        done = [c for c in group if c["status"] == "done" and "distilled" in c.get("rows", {})]
        row = {"combination": name, "values": {**group[0]["combo"], **group[0].get("ties", {})},
               "seeds": sorted(c["seed"] for c in done),
               "diverged": sorted(c["seed"] for c in group if c["status"] == "diverged")}
        for key in (metric, second):
            row[key] = mean_std([c["rows"]["distilled"][key] for c in done if key in c["rows"]["distilled"]])
        rows.append(row)
    rows.sort(key=lambda r: (r[metric] is None, -(r[metric] or {"mean": 0})["mean"]))
    for i, row in enumerate(rows, 1):
        row["rank"] = i if row[metric] is not None else None
    return rows


def references(cells: list[dict]) -> dict[str, list[dict]]:
    """Teacher and baseline rows from the cells that trained them (or, for a loaded teacher, the first)."""
    done = [c for c in cells if c["status"] == "done"]
    out: dict[str, list[dict]] = {}
    for cell in done:
        for model, row in cell["rows"].items():
            trained = cell["trains_teacher"] if model.startswith("teacher") else cell["trains_baseline"]
            if model != "distilled" and trained:
                out.setdefault(model, []).append(row)
    if done and not any(k.startswith("teacher") for k in out):
        out.update({k: [v] for k, v in done[0]["rows"].items() if k.startswith("teacher")})
    return out


def _cell_text(stat: dict | None, key: str) -> str:
    if stat is None:
        return "-"
    scale, digits = (100, 2) if key == "accuracy" else (1, 1) if key == "errors" else (1, 4)
    text = f"{scale * stat['mean']:.{digits}f}{'%' if key == 'accuracy' else ''}"
    return text + (f" ± {scale * stat['std']:.{digits}f}" if stat["n"] > 1 else "")


def markdown(ranking: list[dict], refs: dict[str, list[dict]], task: str, grid_keys: list[str],
             tie_keys: list[str], labels: dict[str, str]) -> str:
    """The ranked table (mean ± sample std over seeds), then the teacher and baseline for reference."""
    metric, second = PRIMARY[task]
    keys = grid_keys + tie_keys
    head = [labels[k] + (" (tied)" if k in tie_keys else "") for k in keys]
    lines = ["| rank | " + " | ".join(head) + f" | {metric} | {second} | seeds |", "|---" * (len(keys) + 4) + "|"]
    for r in ranking:
        seeds = str(len(r["seeds"])) + (f" ({len(r['diverged'])} diverged)" if r["diverged"] else "")
        lines.append(f"| {r['rank'] or '-'} | " + " | ".join(str(r["values"].get(k, "-")) for k in keys) +
                     f" | {_cell_text(r[metric], metric)} | {_cell_text(r[second], second)} | {seeds} |")
    for model, rows in refs.items():
        stats = [mean_std([row[k] for row in rows if k in row]) for k in (metric, second)]
        lines.append(f"| - | {model} |" + " |" * (len(keys) - 1) +
                     f" {_cell_text(stats[0], metric)} | {_cell_text(stats[1], second)} | {len(rows)} |")
    return "\n".join(lines)
