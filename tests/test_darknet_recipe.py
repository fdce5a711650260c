"""recipes/darknet_distill.yaml end to end on a few BCCD images, and the deployment check: the distilled
student's student.cfg + student.weights, read by OpenCV's Darknet importer, predict what its model.pt does."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
import yaml
from conftest import load_script

from hintdistill import report
from hintdistill.config import recipe_from_dict
from hintdistill.engine.checkpoint import load_model
from hintdistill.engine.pipeline import run_recipe

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
BCCD = ROOT.parent / "shared/data/bccd"


@pytest.mark.skipif(not BCCD.exists(), reason=f"BCCD not found at {BCCD}")
def test_darknet_recipe_ships_a_student_that_opencv_runs_the_same(tmp_path, monkeypatch):
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless<5 (the dev extra) reads Darknet cfgs")
    cv2.setNumThreads(1)
    monkeypatch.chdir(ROOT)  # the recipe names its cfgs relative to the repository root
    monkeypatch.setattr(report, "write_report", lambda run_dir: run_dir / "report.html")
    tree = yaml.safe_load((ROOT / "recipes/darknet_distill.yaml").read_text())
    tree.update(output_dir=str(tmp_path / "run"), latency_batch=1, eval_batch_size=2)
    tree["data"].update(data_dir=str(BCCD), image_size=64, train_subset=4, test_subset=2, workers=0)
    tree["baseline"] = None  # the recipe's baseline trains the same student without a teacher: not needed here
    for phase in (tree["teacher"]["train"], tree["distill"][0]):
        phase.update(epochs=1, batch_size=2)
    summary = run_recipe(recipe_from_dict(tree), log=lambda *_: None)
    assert [(r["model"], r["arch"]) for r in summary["rows"]] == [
        ("teacher", "darknet"), ("distilled", "darknet")]

    run = tmp_path / "run"
    student, ckpt = load_model(run / "distilled/model.pt")
    teacher, _ = load_model(run / "teacher/model.pt")
    assert "weights" not in ckpt["spec"]["args"] and ckpt["spec"]["args"]["cfg"].startswith("[net]")
    assert [h.anchors for h in student.head_specs] == [h.anchors for h in teacher.head_specs]  # anchors: teacher
    assert [h.scale_x_y for h in teacher.head_specs] == [1.2, 1.1, 1.05]  # each keeps its own decoding
    assert [h.scale_x_y for h in student.head_specs] == [1.05] * 3

    net = cv2.dnn.readNetFromDarknet(str(run / "student.cfg"), str(run / "student.weights"))
    x = torch.rand(1, 3, 192, 192, generator=torch.Generator().manual_seed(0))  # the cfg's [net] size
    net.setInput(x.numpy())
    names = net.getUnconnectedOutLayersNames()
    theirs = dict(zip(names, net.forward(names), strict=True))
    with torch.no_grad():
        raw = student.eval()(x)
    assert len(theirs) == len(raw) == 3
    for level, spec in enumerate(student.head_specs):
        # OpenCV: one row per (cell y, cell x, anchor): cx/W, cy/H, w/W, h/H, objectness, obj·p(class) (0 below 0.2)
        cv = torch.from_numpy(theirs[f"yolo_{spec.layer}"])
        ours = student.decode_level(raw[level], level)[0].permute(1, 2, 0, 3).reshape(cv.shape)
        centre_size = torch.cat([(ours[:, :2] + ours[:, 2:4]) / 2, ours[:, 2:4] - ours[:, :2]], 1) / 192
        torch.testing.assert_close(centre_size, cv[:, :4], atol=1e-4, rtol=0)
        torch.testing.assert_close(ours[:, 4], cv[:, 4], atol=1e-4, rtol=0)
        scores, kept = ours[:, 5:] * ours[:, 4:5], cv[:, 5:] > 0
        torch.testing.assert_close(scores[kept], cv[:, 5:][kept], atol=1e-4, rtol=0)
        assert (scores[~kept] < 0.2 + 1e-4).all()


def test_benchmark_darknet_rows_are_valid_recipes_on_yolo_txt_data(tmp_path):
    """The Darknet benchmark rows are code only (not run here): their recipe trees validate, read BCCD as
    YOLO-txt from the scale's run folder, and build the intended teacher and student."""
    bench_mod = load_script("benchmarks/detection.py")
    args = argparse.Namespace(teacher_size=None, input_size=192, workers=None, batch_size=None, eval_every=None,
                              train_subset=None, test_subset=None, epochs_scale=1.0, teacher_epochs=None,
                              student_epochs=None, out=str(tmp_path), bn_frozen_epochs=None)
    bench = bench_mod.Bench(args, "bccd")
    trees = {"darknet_teacher": bench.teacher_tree("darknet_teacher"),
             **{row: bench.student_tree(row, 0) for row in ("darknet_student", "darknet_student_kd",
                                                             "darknet_teacher_kd")}}
    models = {}
    for row, tree in trees.items():
        recipe = recipe_from_dict(tree)
        assert recipe.data.name == "yolo" and recipe.data.data_dir == str(bench.yolo_txt_dir())
        models[row] = (recipe.teachers[0].name, recipe.student.name, [t.type for t in recipe.distill[0].terms])
    assert models == {"darknet_teacher": ("darknet", "yolo", ["detection"]),
                      "darknet_student": ("yolo", "darknet", ["detection"]),
                      "darknet_student_kd": ("yolo", "darknet", ["chen_kd"]),
                      "darknet_teacher_kd": ("darknet", "yolo", ["chen_kd"])}
    # teachers live in the teachers' folder, shared by students with and without bn_frozen_epochs (the recipes' 5)
    assert trees["darknet_teacher_kd"]["teacher"]["checkpoint"] == str(tmp_path / "bccd" / bench.teacher_out.name /
                                                                        "darknet_teacher/teacher/model.pt")
    # a Darknet model trains with the Darknet recipe's optimizer and clipping; the yolo n student keeps the common stage
    lr = lambda stage: (stage["optimizer"]["lr"], stage.get("grad_clip_norm"))  # noqa: E731
    assert lr(trees["darknet_teacher"]["teacher"]["train"]) == (0.01, 10.0)
    assert lr(trees["darknet_student"]["distill"][0]) == lr(trees["darknet_student_kd"]["distill"][0]) == (0.01, 10.0)
    assert lr(trees["darknet_teacher_kd"]["distill"][0]) == lr(bench.student_tree("chen_kd", 0)["distill"][0]) == \
        (0.04, None)
    # the other rows keep their VOC data and models
    assert bench.student_tree("chen_kd", 0)["data"]["name"] == "voc"

