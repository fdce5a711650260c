"""hintdistill viz: feature-map figures of hint pairs, detection overlays, curves and clear errors."""

import json
import shutil
from argparse import Namespace
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from hintdistill.cli import main
from hintdistill.config import recipe_from_dict
from hintdistill.engine.checkpoint import atomic_save, save_model
from hintdistill.engine.pipeline import run_recipe
from hintdistill.errors import CheckpointError, ConfigError, DataError, ShapeError
from hintdistill.figures import curves_figure, detection_figure, png_bytes
from hintdistill.models import build_model
from hintdistill.run_folder import Run, image_example
from hintdistill.taps import Taps
from hintdistill.terms.detection import NeckHints
from hintdistill.viz import detection_panels, feature_maps, recipe_pairs, viz_command

torch.set_num_threads(1)  # tiny models: more threads only fight the other jobs on 2 cores

BCCD = Path(__file__).resolve().parents[2] / "shared/data/bccd"
TINY = {"epochs": 1, "batch_size": 64, "optimizer": {"name": "sgd", "lr": 0.05}}
DET_SIZE = 128
YOLO_ARGS = {"teacher": {"num_classes": 3, "size": "n", "width": 0.125, "depth": 0.33},
             "student": {"num_classes": 3, "size": "n", "width": 0.0625, "depth": 0.33}}


def classification_recipe(out: Path) -> dict:
    """Teacher, baseline and a two-stage FitNets student, one epoch each, on 256 Fashion-MNIST images."""
    return {"name": "tiny_fitnets", "output_dir": str(out), "device": "cpu",
            "data": {"name": "fashion_mnist", "train_subset": 256, "test_subset": 128},
            "teacher": {"name": "cnn", "args": {"widths": [8, 16], "depth": 1}, "train": TINY},
            "student": {"name": "cnn", "args": {"widths": [4, 8], "depth": 1}},
            "baseline": TINY,
            "distill": [{"name": "hint", **TINY, "trainable": "up_to_guided",
                         "terms": [{"type": "hint", "hint": "features.stage2", "guided": "features.stage2"}]},
                        {"name": "kd", **TINY, "terms": [{"type": "ce", "weight": 0.1},
                                                         {"type": "kd", "weight": 0.9}]}]}


def make_detection_run(folder: Path) -> Path:
    """A run folder as `hintdistill run` writes it for a YOLO teacher/student with neck hints, built directly
    (no training); the distilled checkpoint keeps the hint stage's trained adapters under ``stage_terms``."""
    recipe = recipe_from_dict({
        "name": "tiny_det", "task": "detection", "output_dir": str(folder), "device": "cpu",
        "data": {"name": "voc", "data_dir": str(BCCD), "image_size": DET_SIZE, "workers": 0},
        "teacher": {"name": "yolo", "args": YOLO_ARGS["teacher"]},
        "student": {"name": "yolo", "args": YOLO_ARGS["student"]},
        "baseline": {"epochs": 1, "terms": [{"type": "detection"}]},
        "distill": [{"epochs": 1, "terms": [{"type": "detection"}, {"type": "neck_hints"}]}]})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    models = {}
    for seed, (phase, role) in enumerate([("teacher", "teacher"), ("baseline", "student"), ("distilled", "student")]):
        torch.manual_seed(seed)
        spec = {"name": "yolo", "args": YOLO_ARGS[role]}
        models[phase] = build_model("yolo", spec["args"]).eval()
        save_model(models[phase], spec, folder / phase / "model.pt")
        metrics = [{"phase": phase, "stage": "train", "epoch": e, "train/detection": 5.0 / e, "train/loss": 5.0 / e,
                    "test/map50": 0.1 * e, "test/map": 0.05 * e, "weight/detection": 1.0} for e in (1, 2)]
        (folder / phase / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    term = NeckHints(recipe.distill[0].terms[1].levels)
    x = torch.rand(1, 3, DET_SIZE, DET_SIZE)
    student_out = Taps(models["distilled"], term.student_taps()).run(x)
    teacher_out = Taps(models["teacher"], term.teacher_taps()).run(x)
    term.setup(student_out, [teacher_out])
    terms_state = {f"neck_hints.{k}": v for k, v in term.state_dict().items()}
    atomic_save({"phase": "distilled", "spec": {"name": "yolo", "args": YOLO_ARGS["student"]},
                 "student": models["distilled"].state_dict(), "done": True, "results": {},
                 "stage_terms": {0: terms_state}}, folder / "distilled" / "checkpoint.pt")
    rows = [{"model": p, "arch": "yolo", "map50": 0.2, "map": 0.1, "params": 1000, "gflops": 0.01,
             "cpu_ms_per_image": 1.0, "train_s": 1.0} for p in models]
    (folder / "summary.json").write_text(json.dumps({"recipe": "tiny_det", "task": "detection", "device": "cpu",
                                                     "rows": rows}))
    return folder


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "cls"
    run_recipe(recipe_from_dict(classification_recipe(out)), log=lambda *a: None)
    return out


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "shoe.png"
    pixels = torch.zeros(40, 50, 3, dtype=torch.uint8)
    pixels[10:30, 5:45] = 200
    Image.fromarray(pixels.numpy()).save(path)
    return path


def args(run, image, layers=None, size=None, out=None) -> Namespace:
    return Namespace(run=str(run), image=str(image), layers=layers, input_size=size, out=str(out) if out else None)


def test_viz_default_layers_are_the_recipe_hints(cls_run, image_file, tmp_path, capsys):
    assert viz_command(args(cls_run, image_file, size=56, out=tmp_path)) == 0
    written = sorted(p.name for p in tmp_path.glob("*.png"))
    assert written == ["shoe_features_0_features.stage2__features.stage2.png"]
    text = capsys.readouterr().out
    # the FitNets adapter lives in stage 1; the finished checkpoint keeps it (stage_terms), so it is the trained one
    assert "untrained" not in text and "written:" in text


def test_viz_feature_maps_shapes_and_distance(cls_run, image_file):
    run = Run(cls_run)
    example = image_example(run, image_file, 56)
    assert example.x.shape == (1, 1, 56, 56) and example.image.shape == (1, 56, 56)
    (m,) = feature_maps(run, example, recipe_pairs(run.recipe, run.task))
    assert m.hint.shape == (16, 28, 28) and m.guided.shape == (8, 28, 28) and m.adapted.shape == (16, 28, 28)
    assert m.l2 == pytest.approx(float((m.hint - m.adapted).norm()), rel=1e-5)
    assert m.mse == pytest.approx(float(((m.hint - m.adapted) ** 2).mean()), rel=1e-5)


def test_viz_layers_pairs_and_plain_names(cls_run, image_file, tmp_path):
    code = main(["viz", str(cls_run), "--image", str(image_file), "--layers", "features.stage1",
                 "features.stage2=features.stage1", "--out", str(tmp_path)])
    assert code == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "shoe_features_0_features.stage1__features.stage1.png", "shoe_features_1_features.stage2__features.stage1.png"]


def test_viz_bad_inputs_name_what_is_missing(cls_run, image_file, tmp_path, capsys):
    with pytest.raises(ShapeError, match="no module named 'features.stage9'.*features.stage"):
        viz_command(args(cls_run, image_file, layers=["features.stage9"], out=tmp_path))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        viz_command(args(cls_run, broken, out=tmp_path))
    with pytest.raises(DataError, match="cannot read image .*missing.png"):
        viz_command(args(cls_run, tmp_path / "missing.png", out=tmp_path))
    empty = tmp_path / "empty_run"
    empty.mkdir()
    (empty / "teacher").mkdir()
    with pytest.raises(CheckpointError, match="no distilled/model.pt or distilled/checkpoint.pt"):
        viz_command(args(empty, image_file))
    assert main(["viz", str(empty), "--image", str(image_file)]) == CheckpointError.exit_code
    assert "no distilled/model.pt" in capsys.readouterr().err
    (empty / "distilled").mkdir()
    shutil.copy(cls_run / "distilled" / "model.pt", empty / "distilled" / "model.pt")
    with pytest.raises(ConfigError, match="no recipe.yaml to take hint layers from; name layers with --layers"):
        viz_command(args(empty, image_file))


@pytest.mark.skipif(not BCCD.is_dir(), reason=f"BCCD VOC folder not found at {BCCD}")
def test_viz_detection_neck_levels_and_boxes(tmp_path, capsys):
    run_dir = make_detection_run(tmp_path / "det")
    image = next(iter(sorted((BCCD / "JPEGImages").glob("*.jpg"))))
    assert main(["viz", str(run_dir), "--image", str(image), "--input-size", "160"]) == 0
    names = sorted(p.name for p in (run_dir / "figures").glob("*.png"))
    assert names == [f"{image.stem}_detections.png"] + [
        f"{image.stem}_features_{i}_neck.p{i + 3}__neck.p{i + 3}.png" for i in range(3)]
    assert "untrained" not in capsys.readouterr().out  # the adapters came from stage_terms
    run = Run(run_dir)
    maps = feature_maps(run, image_example(run, image, 160), recipe_pairs(run.recipe, run.task))
    assert [tuple(m.hint.shape[1:]) for m in maps] == [(20, 20), (10, 10), (5, 5)]
    # the adapted map is the saved 1x1 conv applied to the guided map
    weight = run.terms_state(0)["neck_hints.hints.0.adapter.weight"]
    bias = run.terms_state(0)["neck_hints.hints.0.adapter.bias"]
    expected = torch.nn.functional.conv2d(maps[0].guided[None], weight, bias)[0]
    torch.testing.assert_close(maps[0].adapted, expected)
    panels = detection_panels(run, image_example(run, image, 160))
    assert [title for title, _ in panels] == ["teacher", "baseline", "distilled"]
    for _, det in panels:  # untrained: nothing passes 0.25, so each model's best five guesses are shown
        assert ("note" in det and len(det["boxes"]) <= 5) or bool((det["scores"] > 0.25).all())
    assert main(["viz", str(run_dir), "--image", str(image), "--input-size", "100"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    # a teacher loaded from a checkpoint (no teacher/ folder in the run) still gets its panel, boxes and all
    moved = tmp_path / "elsewhere" / "model.pt"
    moved.parent.mkdir()
    (run_dir / "teacher" / "model.pt").rename(moved)
    (run_dir / "teacher" / "metrics.jsonl").unlink()
    (run_dir / "teacher").rmdir()
    tree = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    tree["teachers"][0]["checkpoint"] = str(moved)  # a run folder's recipe.yaml lists its teachers
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    loaded = Run(run_dir)
    assert "teacher" not in loaded.phases
    example = image_example(loaded, image, 160)
    moved_panels = detection_panels(loaded, example)
    assert [title for title, _ in moved_panels] == ["teacher", "baseline", "distilled"]
    torch.testing.assert_close(moved_panels[0][1]["boxes"], panels[0][1]["boxes"])  # the same weights' boxes
    (run_dir / "report.html").unlink(missing_ok=True)
    assert main(["report", str(run_dir)]) == 0  # the report again, its teacher drawn from the checkpoint
    assert "written:" in capsys.readouterr().out
    assert (run_dir / "report.html").is_file() and (run_dir / "figures" / "detections.png").is_file()
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    moved.unlink()  # gone since the run: no teacher panel, a warning, and the rest still drawn
    with pytest.warns(UserWarning, match="no teacher panel"):
        assert [title for title, _ in detection_panels(Run(run_dir), example)] == ["baseline", "distilled"]


def test_detection_and_curve_figures_draw():
    image = torch.rand(3, 64, 64)
    det = {"boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0]]), "scores": torch.tensor([0.9]),
           "labels": torch.tensor([1])}
    gt = {"boxes": torch.tensor([[5.0, 5.0, 31.0, 41.0]]), "labels": torch.tensor([1])}
    fig = detection_figure(image, [("ground truth", gt), ("teacher", det)], ["a", "b"], 0.25)
    assert [ax.get_title() for ax in fig.axes] == ["ground truth\n1 boxes", "teacher\n1 boxes with score > 0.25"]
    assert [t.get_text() for t in fig.axes[1].texts] == ["b 0.90"]
    assert png_bytes(fig)[:4] == b"\x89PNG"
    histories = {"teacher": [{"epoch": 1, "stage": "train", "train/ce": 2.0, "test/accuracy": 0.5}],
                 "distilled": [{"epoch": 1, "stage": "hint", "train/hint": 1.0, "test/accuracy": 0.4,
                                "weight/hint": 4.0},
                               {"epoch": 2, "stage": "kd", "train/kd": 0.3, "test/accuracy": 0.6,
                                "weight/kd": 1.0}]}
    fig = curves_figure(histories)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["train/ce", "train/hint", "train/kd", "test/accuracy",
                      "distilled: term weights (weight/<term>)"]
    png_bytes(fig)


def test_a_detection_recipe_without_hints_still_shows_its_neck_levels():
    from hintdistill.config import recipe_from_dict

    tree = {"name": "d", "task": "detection", "data": {"name": "voc", "data_dir": "x"}, "teacher": {"name": "yolo"},
            "student": {"name": "yolo"}, "distill": [{"terms": [{"type": "chen_kd"}]}]}
    pairs = recipe_pairs(recipe_from_dict(tree), "detection")
    assert [(p.hint, p.guided) for p in pairs] == [("neck.p3", "neck.p3"), ("neck.p4", "neck.p4"), ("neck.p5", "neck.p5")]
    tree["distill"][0]["terms"].append({"type": "neck_hints", "levels": [["neck.p4", "neck.p3"]]})
    assert [(p.hint, p.guided) for p in recipe_pairs(recipe_from_dict(tree), "detection")] == [("neck.p4", "neck.p3")]
    classification = dict(tree, task="classification", distill=[{"terms": [{"type": "ce"}]}])
    assert recipe_pairs(recipe_from_dict(classification), "classification") == []
