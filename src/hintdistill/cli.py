"""Command line: ``hintdistill run | inspect | eval | viz | models | make-data | sweep | export``."""

from __future__ import annotations

import argparse
import errno
import json
import shlex
import sys
import traceback
from pathlib import Path

from .errors import ConfigError, HintDistillError, Interrupted


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
        assert shape and all(v > 0 for v in shape)
        return shape
    except (ValueError, AssertionError):
        raise ConfigError(f"--input-shape expects positive integers like 1,28,28 (C,H,W), got '{text}'") from None


def load_any_model(ref: str, args_json: str | None):
    """A registry name (with --args JSON), a model.pt written by hintdistill, or ``darknet:PATH.cfg``."""
    from .engine.checkpoint import load_model
    from .models import build_model

    if ref.endswith((".pt", ".pth")):
        return load_model(ref)[0]
    try:
        args = json.loads(args_json) if args_json else {}
    except json.JSONDecodeError as e:
        raise ConfigError(f"--args must be a JSON object, e.g. '{{\"widths\": [16, 32]}}': {e}") from None
    if ref.startswith("darknet:"):  # a Darknet cfg; --args may add weights, num_classes
        return build_model("darknet", {"cfg": ref.split(":", 1)[1], **args})
    return build_model(ref, args)


def cmd_run(a) -> int:
    from .config import load_recipe
    from .engine.interrupt import stop_at_step_boundary
    from .engine.pipeline import run_recipe

    recipe = load_recipe(a.recipe, a.set)
    if a.output_dir:
        recipe.output_dir = a.output_dir
    with stop_at_step_boundary():  # issue 12: Ctrl-C / SIGTERM save at the next step boundary
        run_recipe(recipe)
    return 0


def cmd_inspect(a) -> int:
    from .inspect_model import module_shapes, suggest_pairs

    shape = parse_shape(a.input_shape)
    model = load_any_model(a.model, a.args)
    if hasattr(model, "darknet_table"):  # --- Darknet models: Darknet's own layer table and BFLOPs
        if len(shape) != 3 or shape[0] != model.in_channels:
            raise ConfigError(f"--input-shape {a.input_shape}: this Darknet cfg takes {model.in_channels} channels "
                              f"as C,H,W, e.g. {model.in_channels},608,608")
        table, _ = model.darknet_table(*shape[1:])
        print(f"{table}\n(tap layer N as layers.N)")
        rows = module_shapes(model, shape) if a.student else []
    else:  # --- end Darknet
        rows = module_shapes(model, shape)
        width = max((len(r[0]) for r in rows), default=10)
        print(f"{'module':<{width}}  {'type':<20} {'output shape':<22} params")
        for name, kind, out, n in rows:
            print(f"{name:<{width}}  {kind:<20} {str(list(out)):<22} {n}")
    print(f"total parameters: {sum(p.numel() for p in model.parameters())}")
    if a.student:
        student = load_any_model(a.student, a.student_args)
        pairs = suggest_pairs(rows, module_shapes(student, shape))
        print("\nsuggested hint (teacher) -> guided (student) pairs, equal spatial size:")
        for hint, guided, adapter in pairs or []:
            print(f"  hint: {hint:<30} guided: {guided:<30} adapter: {adapter}")
        if not pairs:
            print("  none with equal spatial size; use adapter: regressor or resize: interpolate")
    return 0


def cmd_eval(a) -> int:
    from .build import build_data
    from .config import load_recipe
    from .engine.checkpoint import load_model
    from .engine.distributed import init_distributed

    recipe = load_recipe(a.recipe, a.set)
    _, device = init_distributed(recipe.device)
    data = build_data(recipe)
    model, _ = load_model(a.checkpoint)
    print(json.dumps(data.evaluate(model.to(device), device), indent=2))
    return 0


def cmd_models(a) -> int:
    from .models import available

    print("\n".join(available()))
    return 0


def cmd_viz(a) -> int:
    from .viz import viz_command

    return viz_command(a)


def cmd_report(a) -> int:
    """Write RUN/report.html (and RUN/figures/) again, from what the run folder holds now."""
    from .report import write_report  # matplotlib, for the figures

    folder = Path(a.run)
    if not (folder / "summary.json").is_file():
        what = "does not exist" if not folder.exists() else "has no summary.json"
        raise ConfigError(f"run folder {folder} {what}: pass a folder that `hintdistill run` finished "
                          f"(runs/<recipe name> by default)")
    print(f"written: {write_report(folder)}")
    return 0


# --- make-data: generated data sets ---
def cmd_make_data(a) -> int:
    """Generate (or find up to date) a synthetic detection set, a VOC folder recipes read as name: synthetic."""
    from pydantic import ValidationError

    from .config import SyntheticConfig
    from .data.synthetic import INFO_FILE, ensure_synthetic

    given = {"seed": a.seed, "train": a.train, "val": a.val, "test": a.test, "image_size": a.image_size,
             "classes": a.classes, "max_objects": a.max_objects, "source_dir": a.source_dir}
    try:
        spec = SyntheticConfig(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as e:
        problems = "; ".join(f"--{'.'.join(map(str, x['loc'])).replace('_', '-') or 'options'}: {x['msg']}"
                             for x in e.errors())
        raise ConfigError(f"make-data synthetic: {problems}") from None
    made = ensure_synthetic(a.out, spec)
    info = json.loads((Path(a.out) / INFO_FILE).read_text())
    images = ", ".join(f"{s} {n}" for s, n in info["images"].items())
    objects = sum(sum(c.values()) for c in info["objects"].values())
    print(f"{'wrote' if made else 'up to date (same parameters), kept'} {a.out}: images {images}; {objects} objects "
          f"of {', '.join(info['identity']['classes'])}; generated in {info['seconds']} s")
    return 0


def add_make_data(sub) -> None:
    md = sub.add_parser("make-data", help="generate a data set: synthetic (Fashion-MNIST items on cluttered "
                                          "backgrounds, a VOC folder)")
    md.add_argument("kind", choices=["synthetic"])
    md.add_argument("out", help="folder to write (kept as is when its parameters match)")
    md.add_argument("--seed", type=int)
    for split in ("train", "val", "test"):
        md.add_argument(f"--{split}", type=int, metavar="N", help=f"{split} images (default 300 / 50 / 100)")
    md.add_argument("--image-size", type=int, help="image side in pixels (default 256)")
    md.add_argument("--classes", nargs="+", help="Fashion-MNIST classes (default tshirt trouser sandal bag ankle_boot)")
    md.add_argument("--max-objects", type=int, help="objects per image, 0..N (default 4)")
    md.add_argument("--source-dir", help="folder with the Fashion-MNIST IDX files (default: searched)")
    md.set_defaults(func=cmd_make_data)
# --- end make-data ---
# --- sweep ---
def cmd_sweep(a) -> int:
    from .sweep import Sweep, parse_grid, parse_ties, run_sweep

    grid = parse_grid(a.grid)
    run_sweep(Sweep(a.recipe, grid, parse_ties(a.tie, grid), a.seeds, a.set, a.output_dir))
    return 0


def add_sweep_parser(sub) -> None:
    s = sub.add_parser("sweep", help="run a recipe for every combination of --grid values (x seeds), resumably, "
                                      "and rank them in one table")
    s.add_argument("recipe")
    s.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a recipe field and its values, e.g. distill.0.terms.1.temperature=2,4,8 (repeatable)")
    s.add_argument("--tie", action="append", default=[], metavar="KEY=EXPRESSION",
                   help="a field computed from others, e.g. distill.0.terms.0.weight=1-distill.0.terms.1.weight")
    s.add_argument("--seeds", type=int, default=1, help="seeds per combination: the recipe's seed, +1, ...")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field in every cell")
    s.add_argument("--output-dir", help="sweep folder (default runs/<recipe name>-sweep)")
    s.set_defaults(func=cmd_sweep)
# --- end sweep ---


# --- export (hintdistill[export]) ---
def cmd_export(a) -> int:
    from .export import describe, export_onnx

    shape = parse_shape(a.input_shape) if a.input_shape else None
    print(describe(export_onnx(a.model, shape, a.output)))
    return 0


def add_export_parser(sub) -> None:
    x = sub.add_parser("export", help="write the student alone as ONNX (dynamic batch) and check it with onnxruntime")
    x.add_argument("model", help="a run folder (its distilled/model.pt) or a model.pt")
    x.add_argument("--format", choices=["onnx"], default="onnx")
    x.add_argument("--input-shape", help="C,H,W (default: from the run's recipe.yaml)")
    x.add_argument("--output", help="the .onnx file (default: next to model.pt, as model.onnx)")
    x.set_defaults(func=cmd_export)
# --- end export ---


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hintdistill", description="Knowledge distillation and hint learning.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train teacher, baseline and distilled student from a recipe")
    r.add_argument("recipe")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    r.add_argument("--output-dir", help="run folder (default runs/<recipe name>)")
    r.set_defaults(func=cmd_run)
    i = sub.add_parser("inspect", help="list a model's modules with output shapes; suggest hint pairs")
    i.add_argument("model", help="registry name (see `hintdistill models`), a model.pt or darknet:PATH.cfg")
    i.add_argument("--input-shape", required=True, help="C,H,W e.g. 1,28,28")
    i.add_argument("--args", help="model arguments as JSON")
    i.add_argument("--student", help="a second model: suggest hint/guided pairs")
    i.add_argument("--student-args", help="student arguments as JSON")
    i.set_defaults(func=cmd_inspect)
    e = sub.add_parser("eval", help="evaluate a model.pt on a recipe's test data")
    e.add_argument("recipe")
    e.add_argument("checkpoint")
    e.add_argument("--set", action="append", default=[])
    e.set_defaults(func=cmd_eval)
    m = sub.add_parser("models", help="list model names")
    m.set_defaults(func=cmd_models)
    v = sub.add_parser("viz", help="feature-map figures and detection overlays for a run")
    v.add_argument("run", help="a run folder written by `hintdistill run`")
    v.add_argument("--image", required=True)
    v.add_argument("--layers", nargs="*", help="hint=guided pairs or tapped layer names")
    v.add_argument("--input-size", type=int, help="resize the image to this square size")
    v.add_argument("--out", help="output folder (default RUN/figures)")
    v.set_defaults(func=cmd_viz)
    rp = sub.add_parser("report", help="write a run's report.html (and figures/) again, e.g. after moving it")
    rp.add_argument("run", help="a run folder written by `hintdistill run`")
    rp.set_defaults(func=cmd_report)
    add_make_data(sub)
    add_sweep_parser(sub)
    add_export_parser(sub)
    p.add_argument("--debug", action="store_true", help="show the traceback of a user error")
    for command in sub.choices.values():  # `hintdistill run x.yaml --debug` too; SUPPRESS keeps a --debug given first
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the traceback of a user error")
    return p


# --- error policy (issue 12): a user error exits 2 with one paragraph, a traceback only with --debug; any
# other exception is ours: exit 1 with its traceback and a request to report it.
USER_OS_ERRORS = {  # errno -> the fix; other OSErrors are treated as internal
    errno.ENOENT: "check the path (a relative path is taken from the current folder)",
    errno.EACCES: "check the file's permissions, or choose another path",
    errno.EPERM: "check the file's permissions, or choose another path",
    errno.EISDIR: "give a file, not a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.ENOSPC: "free disk space or write the run elsewhere with --output-dir; the last complete checkpoint "
                  "is kept and rerunning the same command resumes from it",
    errno.EDQUOT: "free space within your disk quota or write the run elsewhere with --output-dir",
    errno.EROFS: "the disk is read-only: write the run elsewhere with --output-dir",
    errno.EEXIST: "remove the file in the way or choose another path",
}


def user_os_error(e: OSError) -> str | None:
    """The paragraph for an OSError a user can fix (missing file, permissions, disk full), else None."""
    if e.errno not in USER_OS_ERRORS:
        return None
    name = f" {e.filename}" if e.filename else ""
    return f"cannot use{name}: {e.strerror or e}. Fix: {USER_OS_ERRORS[e.errno]}."


def user_message(e: HintDistillError) -> str:
    """The error's own message; one re-raised from a DataLoader worker carries the worker's traceback text
    before it (torch builds "Caught X in DataLoader worker ... Original Traceback ... X: message")."""
    text = str(e)
    if "\nOriginal Traceback" in text:
        text = text.rsplit(f"{type(e).__name__}: ", 1)[-1].strip()
    return text


def report_internal_error() -> None:
    from . import __version__

    traceback.print_exc()
    print(f"internal error in hintdistill {__version__} (Python {sys.version.split()[0]}): this is a bug, not "
          f"a problem with your input. Please report it with the command you ran and the traceback above.",
          file=sys.stderr)


def interrupted(e, argv: list[str] | None) -> int:
    """A run stopped by SIGINT/SIGTERM at a step boundary: what was saved and the command that resumes it."""
    command = shlex.join(["hintdistill", *(sys.argv[1:] if argv is None else argv)])
    print(f"interrupted: {e}. Rerun the same command to resume from there with the same numbers as an "
          f"uninterrupted run:\n  {command}", file=sys.stderr)
    return e.exit_code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Interrupted as e:
        return interrupted(e, argv)
    except HintDistillError as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {user_message(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted: the last finished epoch's checkpoint is kept; rerun the same command to resume",
              file=sys.stderr)
        return 130
    except OSError as e:
        message = user_os_error(e)
        if message is None:
            report_internal_error()
            return 1
        if args.debug:
            traceback.print_exc()
        print(f"error: {message}", file=sys.stderr)
        return 2
    except Exception:
        report_internal_error()
        return 1


if __name__ == "__main__":
    sys.exit(main())
