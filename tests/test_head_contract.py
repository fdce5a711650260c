"""The head contract (detection/heads.py): decodings worked by hand, any number of levels and anchors per level,
the loss and the distillation terms reading each model's own heads, refusals that say what differs, Darknet
specs that keep their cfg's anchors and rebuild without their files, the student taking the teacher's anchors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import darknet_cfgs as D
import pytest
import torch

from hintdistill.build import build_terms, model_spec, portable_spec, with_teacher_anchors
from hintdistill.config import ModelConfig, recipe_from_dict
from hintdistill.detection.assign import assign_targets
from hintdistill.detection.heads import HeadSpec, box_params, heads_context, yolov5_heads
from hintdistill.detection.loss import YoloLoss
from hintdistill.distiller import Distiller
from hintdistill.engine.checkpoint import load_model, load_teacher, save_model
from hintdistill.errors import ConfigError, ShapeError
from hintdistill.export import metadata
from hintdistill.models import build_model
from hintdistill.models.darknet import build_darknet
from hintdistill.taps import outputs_from
from hintdistill.terms.detection import ChenDetectionKD, ObjectnessScaledKD

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
TARGETS = [{"boxes": torch.tensor([[8.0, 8, 30, 40]]), "labels": torch.tensor([1])},
           {"boxes": torch.tensor([[20.0, 10, 60, 60], [2, 2, 14, 18]]), "labels": torch.tensor([0, 1])}]


def test_box_params_of_each_decoding_worked_by_hand():
    raw = torch.tensor([math.log(3.0), 0.0, math.log(2.0), 0.0])  # σ = 0.75, 0.5, 2/3, 0.5
    # YOLOv5: 2σ − 0.5 = 1.0, 0.5; (2σ)² = 16/9, 1
    torch.testing.assert_close(box_params(raw, HeadSpec(8, ((1, 1),))), torch.tensor([1.0, 0.5, 16 / 9, 1.0]))
    # Darknet, scale_x_y 1.2: 1.2σ − 0.1 = 0.8, 0.5; exp(t) = 2, 1
    dark = HeadSpec(8, ((1, 1),), "darknet", 1.2)
    torch.testing.assert_close(box_params(raw, dark), torch.tensor([0.8, 0.5, 2.0, 1.0]))
    # new_coords=1, scale_x_y 2: 2σ − 0.5 and (2σ)², YOLOv5's own
    new = HeadSpec(8, ((1, 1),), "darknet_new_coords", 2.0)
    torch.testing.assert_close(box_params(raw, new), torch.tensor([1.0, 0.5, 16 / 9, 1.0]))
    assert new.neighbours and not dark.neighbours and HeadSpec(8, ((1, 1),)).neighbours
    with pytest.raises(ShapeError, match="unknown box decoding"):
        HeadSpec(8, ((1, 1),), "anchor_free")


def test_assignment_with_other_anchor_counts_and_neighbours_per_level():
    # centre (11, 13): at stride 8 cell (1, 1), in its left and lower halves, so neighbours (0, 1) and (1, 2)
    targets = [{"boxes": torch.tensor([[3.0, 5, 19, 21]]), "labels": torch.tensor([0])}]
    anchors = [torch.tensor([[16.0, 16], [8, 8], [100, 100]]), torch.tensor([[16.0, 16], [64, 64]])]
    level0, level1 = assign_targets(targets, anchors, [8, 16], [(4, 4), (2, 2)], neighbours=[True, False])
    # level 0: anchors 16 and 8 match (ratios 1, 2; 100 gives 6.25), each in 3 cells
    assert sorted(zip(level0.anchor.tolist(), level0.gi.tolist(), level0.gj.tolist(), strict=True)) == [
        (0, 0, 1), (0, 1, 1), (0, 1, 2), (1, 0, 1), (1, 1, 1), (1, 1, 2)]
    # level 1: only anchor 16 (64 is a ratio of 4, not < 4), only the centre cell (0, 0)
    assert list(zip(level1.anchor.tolist(), level1.gi.tolist(), level1.gj.tolist(), strict=True)) == [(0, 0, 0)]


def test_new_coords_darknet_heads_give_the_yolo_family_loss_exactly():
    """new_coords=1, scale_x_y=2 is YOLOv5's parametrisation: the loss built from the Darknet model's heads and
    the one built from its anchors and strides as YOLOv5 heads give the same numbers on the same maps."""
    torch.manual_seed(0)
    model = build_darknet(D.spp_mish(classes=2, yolov5_heads=True))
    out = outputs_from(model(torch.rand(2, 3, 64, 64)))
    ours = YoloLoss.for_model(model)
    assert [h.decoding for h in ours.heads] == ["darknet_new_coords"] * 3
    plain = YoloLoss(yolov5_heads(model.anchors, [4, 8, 16]))
    assert ours(out, [], TARGETS).item() == plain(out, [], TARGETS).item() > 0


def test_exp_decoding_two_level_darknet_model_trains_with_the_loss():
    torch.manual_seed(0)
    model = build_darknet(D.tiny_v4(classes=2, c=8, width=64))  # 2 levels x 3 anchors, exp, scale_x_y 1.05
    loss_fn = YoloLoss.for_model(model)
    assert loss_fn.anchors.shape == (2, 3, 2) and loss_fn.balance == [4.0, 1.0] and loss_fn.strides == [16, 32]
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = loss_fn(outputs_from(model(x)), [], TARGETS)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.5 * losses[0]


def maps(levels, anchors=3, classes=3, size=8):
    return {f"head:{i}": torch.randn(1, anchors, size >> i, size >> i, 5 + classes) for i in range(levels)}


def test_per_anchor_terms_say_what_differs():
    yolo_heads = yolov5_heads(D.ANCHORS9, [8, 16, 32])
    two = [HeadSpec(16, tuple(D.ANCHORS6[:3]), "darknet"), HeadSpec(32, tuple(D.ANCHORS6[3:]), "darknet")]
    chen = ChenDetectionKD(yolo_heads, teacher_heads=two)
    with pytest.raises(ShapeError, match="levels: student 3, teacher 2"):
        chen.setup(maps(3), [maps(2)])
    other = yolov5_heads([[w + 1, h] for w, h in D.ANCHORS9], [8, 16, 32])
    with pytest.raises(ShapeError, match="anchor sizes: student stride 8: 3 anchors \\(12x16"):
        ObjectnessScaledKD(heads=yolo_heads, teacher_heads=other).setup(maps(3), [maps(3)])
    with pytest.raises(ShapeError, match="classes: student 3, teacher 2"):
        ChenDetectionKD(yolo_heads).setup(maps(3), [maps(3, classes=2)])
    ChenDetectionKD(yolo_heads, teacher_heads=[HeadSpec(h.stride, h.anchors, "darknet", 1.1) for h in yolo_heads]
                    ).setup(maps(3), [maps(3)])  # another decoding, same anchors: each side decodes its own


def test_darknet_teacher_distils_into_a_yolo_student_with_its_anchors():
    torch.manual_seed(0)
    teacher = build_darknet(ROOT / "recipes/cfg/yolov4-tiny-3l-bccd.cfg", num_classes=2).eval()  # exp, scale 1.05
    yolo_spec = {"name": "yolo", "args": {"num_classes": 2, "width": 0.0625}}
    student = build_model(**yolo_spec)
    spec = with_teacher_anchors(yolo_spec, student, teacher, explicit=False)
    student = build_model(**spec)
    assert teacher.head_specs[2].anchors == ((33.3, 34.3), (46.1, 41.2), (66.2, 60.7))
    torch.testing.assert_close(student.anchors[2], torch.tensor(teacher.head_specs[2].anchors))
    recipe = recipe_from_dict({"name": "t", "task": "detection", "data": {"name": "voc", "data_dir": "x"},
                               "teacher": {"name": "yolo"}, "student": {"name": "yolo"},
                               "distill": [{"terms": [{"type": "chen_kd"}, {"type": "objectness_kd"}]}]})
    context = heads_context({"anchors": D.ANCHORS9, "strides": (8, 16, 32)}, student, [teacher])
    terms = build_terms(recipe.distill[0].terms, context)
    chen = terms["chen_kd"][0]
    assert chen.heads == student.head_specs and chen.teacher_heads == teacher.head_specs
    x = torch.rand(2, 3, 64, 64)
    _, losses = Distiller(student, teacher, terms, example_inputs=x)(x, TARGETS)
    assert math.isfinite(losses["loss"].item()) and losses["chen_kd.bounded"].item() > 0


def test_teacher_anchors_only_where_the_heads_line_up():
    tiny = build_darknet(D.tiny_v3(classes=3))  # levels at 16 and 32
    spec = {"name": "yolo", "args": {"num_classes": 3}}
    yolo = build_model(**spec)
    assert with_teacher_anchors(spec, yolo, tiny, explicit=False) == spec
    with pytest.raises(ConfigError, match="anchors: teacher, but the heads differ.*stride 16: 3 anchors"):
        with_teacher_anchors(spec, yolo, tiny, explicit=True)


def test_darknet_takes_per_level_anchors_in_its_masks_order():
    levels = [[(1, 2), (3, 4), (5, 6)], [(7, 8), (9, 10), (11, 12)]]  # by stride: 16, then 32
    model = build_darknet(D.tiny_v3(classes=3), anchors=levels)  # its cfg lists the stride-32 head first
    assert model.head_specs[0].anchors == ((1, 2), (3, 4), (5, 6)) and model.head_specs[1].layer == 16
    assert model.head_specs[1].anchors == ((7, 8), (9, 10), (11, 12))
    with pytest.raises(ConfigError, match=r"\[2, 3\] anchors given, but the cfg's heads \(by stride\) have \[3, 3\]"):
        build_darknet(D.tiny_v3(classes=3), anchors=[levels[0][:2], levels[1]])


def test_darknet_spec_keeps_its_cfg_anchors_and_model_pt_needs_no_files(tmp_path):
    cfg = tmp_path / "m.cfg"
    cfg.write_text(D.tiny_v4(classes=3, c=8, width=64))
    defaults = {"num_classes": 2, "anchors": D.ANCHORS9}  # what the detection data build gives every model
    spec = model_spec(ModelConfig(name="darknet", args={"cfg": str(cfg)}), defaults)
    assert spec["args"] == {"num_classes": 2, "cfg": str(cfg)}
    assert model_spec(ModelConfig(name="yolo"), defaults)["args"]["anchors"] == D.ANCHORS9
    model = build_model(**spec).eval()
    assert model.num_classes == 2 and model.head_specs[1].anchors == tuple(D.ANCHORS6[3:])
    save_model(model, portable_spec({**spec, "args": {**spec["args"], "weights": "gone.weights"}}, model),
               tmp_path / "model.pt")
    cfg.unlink()
    again, ckpt = load_model(tmp_path / "model.pt")
    assert "weights" not in ckpt["spec"]["args"] and ckpt["spec"]["args"]["cfg"] == model.cfg_text()
    x = torch.rand(1, 3, 64, 64)
    assert all(torch.equal(a, b) for a, b in zip(model(x), again.eval()(x), strict=True))
    # a teacher loaded from that checkpoint keeps the anchors it was trained with, whatever the recipe's cfg says
    trained = build_darknet(D.tiny_v4(classes=2, c=8, width=64), anchors=[(w + 1, h) for w, h in D.ANCHORS6])
    save_model(trained, portable_spec({"name": "darknet", "args": {"cfg": "x"}}, trained), tmp_path / "t.pt")
    teacher = load_teacher(build_darknet(D.tiny_v4(classes=2, c=8, width=64)), str(tmp_path / "t.pt"))
    assert teacher.head_specs == trained.head_specs and teacher.head_specs[0].anchors[0] == (24, 27)


def test_export_metadata_states_each_heads_decoding():
    props = metadata(build_darknet(D.tiny_v3(classes=3)), {"name": "darknet", "args": {}})
    heads = json.loads(props["heads"])
    assert [(h["stride"], h["decoding"], h["anchors"][0]) for h in heads] == [(16, "darknet", [10, 14]),
                                                                              (32, "darknet", [81, 82])]
    assert "wh = exp(t_wh) * anchor" in props["box_decoding"] and "anchors" not in props  # no [3, 3, 2] tensor
    yolo = metadata(build_model("yolo", {"num_classes": 2, "width": 0.0625}), {})
    assert yolo["box_decoding"].startswith("yolov5: xy = (2 sigmoid(t_xy) - 0.5 + cell) * stride")
    assert json.loads(yolo["strides"]) == [8, 16, 32] and len(json.loads(yolo["anchors"])) == 3


def test_terms_from_the_models_heads_equal_terms_from_the_task_anchors_on_the_yolo_family():
    """What the Stage now builds (the models' heads) and what recipes built before (the task's anchors and strides)
    give the same numbers on the yolo family, term by term."""
    torch.manual_seed(0)
    student = build_model("yolo", {"num_classes": 3, "anchors": D.ANCHORS9, "width": 0.0625})
    teacher = build_model("yolo", {"num_classes": 3, "anchors": D.ANCHORS9, "width": 0.125}).eval()
    recipe = recipe_from_dict({"name": "t", "task": "detection", "data": {"name": "voc", "data_dir": "x"},
                               "teacher": {"name": "yolo"}, "student": {"name": "yolo"}, "distill": [{"terms": [
                                   {"type": "chen_kd", "mu": 0.3, "nu": 0.7, "margin": 0.01},
                                   {"type": "objectness_kd"}, {"type": "neck_hints", "imitation_mask": True}]}]})
    task = {"anchors": D.ANCHORS9, "strides": (8, 16, 32)}
    x = torch.rand(2, 3, 64, 64)
    values = []
    for context in (task, heads_context(task, student, [teacher])):
        torch.manual_seed(1)  # the hints' 1x1 adapters
        distiller = Distiller(student.eval(), teacher, build_terms(recipe.distill[0].terms, context), example_inputs=x)
        _, losses = distiller(x, TARGETS)
        distiller.remove_taps()
        values.append({k: v.item() for k, v in losses.items()})
    assert values[0] == values[1] and values[0]["chen_kd.bounded"] > 0 and values[0]["neck_hints"] > 0
