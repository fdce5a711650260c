"""Detection recipes end to end: BCCD through run_recipe, k-means anchors in model.pt, the detection terms
built from their recipe entries, data errors that name the path."""

from pathlib import Path

import pytest
import torch
import yaml

from hintdistill.build import build_data, build_terms
from hintdistill.config import load_recipe, recipe_from_dict
from hintdistill.detection.anchors import kmeans_anchors
from hintdistill.detection.build import multiscale_sizes, rescale_batch
from hintdistill.detection.evaluate import evaluate_detector
from hintdistill.detection.loss import YoloLoss
from hintdistill.engine.batchnorm import with_batch_statistics
from hintdistill.engine.checkpoint import load_model, safe_load
from hintdistill.engine.pipeline import run_recipe
from hintdistill.errors import ConfigError, DataError
from hintdistill.terms.detection import ChenDetectionKD, NeckHints, ObjectnessScaledKD

# tiny tensors: more threads than one only fight the other jobs on a 2-core machine
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
BCCD = ROOT.parent / "shared/data/bccd"
needs_bccd = pytest.mark.skipif(not BCCD.exists(), reason=f"BCCD not found at {BCCD}")


def tiny_recipe(tmp_path, terms, **data) -> dict:
    """Two tiny yolos on 6 BCCD images at 64 px, one epoch per phase, no worker processes."""
    train = {"epochs": 1, "batch_size": 3, "optimizer": {"name": "sgd", "lr": 0.01}, "terms": [{"type": "detection"}]}
    return {
        "name": "tiny_det", "task": "detection", "output_dir": str(tmp_path / "run"), "eval_batch_size": 4,
        "latency_batch": 1,
        "data": {"name": "voc", "data_dir": str(BCCD), "image_size": 64, "train_subset": 6, "test_subset": 4,
                 "workers": 0, **data},
        "teacher": {"name": "yolo", "args": {"size": "n", "width": 0.125, "depth": 0.33}, "train": train},
        "student": {"name": "yolo", "args": {"size": "n", "width": 0.0625, "depth": 0.33}},
        "baseline": dict(train, augment=["hflip"]),
        "distill": [dict(train, name="distill", augment=["hflip", "jitter", "mosaic", "multiscale"], terms=terms)],
    }


@needs_bccd
def test_detection_recipe_runs_end_to_end_with_kmeans_anchors_in_model_files(tmp_path):
    terms = [{"type": "chen_kd"}, {"type": "objectness_kd", "weight": 0.5},
             {"type": "neck_hints", "weight": 0.5, "imitation_mask": True}]
    recipe = recipe_from_dict(tiny_recipe(tmp_path, terms))
    summary = run_recipe(recipe, log=lambda *_: None)
    assert [r["model"] for r in summary["rows"]] == ["teacher", "baseline", "distilled"]
    for row in summary["rows"]:
        assert 0.0 <= row["map50"] <= 1.0 and 0.0 <= row["map"] <= row["map50"] + 1e-9
        assert row["params"] > 0 and row["gflops"] > 0 and row["cpu_ms_per_image"] > 0
        # trained or loaded, every row keeps its per-class AP@0.5 (their mean is mAP@0.5: no class is absent)
        assert list(row["ap50_per_class"]) == ["Platelets", "RBC", "WBC"]
        assert abs(sum(row["ap50_per_class"].values()) / 3 - row["map50"]) < 1e-6
    assert (tmp_path / "run/summary.json").is_file() and "mAP@0.5" in (tmp_path / "run/summary.md").read_text()

    data = build_data(recipe)
    expected = kmeans_anchors(data.train_loader(6, [], 0, 0, 1).dataset.box_sizes(), seed=0)
    for phase in ("teacher", "baseline", "distilled"):
        ckpt = safe_load(tmp_path / "run" / phase / "model.pt")
        anchors = ckpt["spec"]["args"]["anchors"]
        assert isinstance(anchors, list) and all(isinstance(v, float) for pair in anchors for v in pair)
        torch.testing.assert_close(torch.tensor(anchors), expected, atol=0.01, rtol=0)
        torch.testing.assert_close(ckpt["state_dict"]["anchors"], expected.view(3, 3, 2), atol=0.01, rtol=0)
        assert not any(k.startswith(("terms", "teachers")) for k in ckpt["state_dict"])  # no adapter inside
    assert data.primary_metric == "map50" and data.class_names == ["Platelets", "RBC", "WBC"]
    assert data.context["anchors"] == data.model_defaults["anchors"] and data.context["strides"] == (8, 16, 32)
    # each trained phase is also tested with its test batches' own BatchNorm statistics (the dependence check)
    trained = {r["model"]: r for r in summary["rows"]}
    for phase in ("teacher", "baseline", "distilled"):
        model = load_model(tmp_path / "run" / phase / "model.pt")[0]
        again = evaluate_detector(with_batch_statistics(model), data.test_loader)["map50"]
        assert trained[phase]["map50_batch_stats"] == pytest.approx(again, abs=1e-6)


def test_multiscale_sizes_and_rescaled_boxes():
    assert multiscale_sizes(192) == [96, 128, 160, 192, 224, 256, 288]
    assert multiscale_sizes(64) == [32, 64, 96]
    images = torch.rand(2, 3, 64, 64)
    targets = [{"boxes": torch.tensor([[8.0, 16.0, 40.0, 48.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    big, scaled = rescale_batch(images, targets, 96)
    assert big.shape == (2, 3, 96, 96) and torch.equal(scaled[0]["boxes"], torch.tensor([[12.0, 24.0, 60.0, 72.0]]))
    assert scaled[0]["labels"] is targets[0]["labels"] and scaled[1]["boxes"].shape == (0, 4)
    assert rescale_batch(images, targets, 64)[0] is images  # the drawn size may be the input's own


@needs_bccd
def test_multiscale_batches_vary_in_size_per_epoch_and_repeat_with_the_seed(tmp_path):
    data = build_data(recipe_from_dict(tiny_recipe(tmp_path, [{"type": "detection"}])))
    loader = data.train_loader(1, ["multiscale"], 5, 0, 1)

    def sides(epoch):
        loader.set_epoch(epoch)
        return [images.shape[-1] for images, _ in loader]

    first = sides(1)
    assert first == sides(1) and set(first) <= {32, 64, 96} and len(set(first)) > 1 and first != sides(2)
    assert {images.shape[-1] for images, _ in data.test_loader} == {64}  # evaluation stays at the input size


def test_augment_is_checked_against_the_task_when_the_recipe_loads(tmp_path):
    tree = tiny_recipe(tmp_path, [{"type": "detection"}])
    tree["baseline"]["augment"] = ["crop"]
    with pytest.raises(ConfigError, match=r"baseline.augment: \['crop'\] not available for detection"):
        recipe_from_dict(tree)
    demo = yaml.safe_load((ROOT / "recipes/demo.yaml").read_text())
    demo["distill"][-1]["augment"] = ["hflip", "multiscale"]
    with pytest.raises(ConfigError, match=r"distill.1.augment: \['multiscale'\] not available for classification"):
        recipe_from_dict(demo)


@needs_bccd
def test_train_loader_is_seeded_per_epoch_and_test_loader_names_classes(tmp_path):
    data = build_data(recipe_from_dict(tiny_recipe(tmp_path, [{"type": "detection"}])))
    loader = data.train_loader(2, ["hflip"], 5, 0, 1)
    assert len(loader) == 3 and data.input_shape == (3, 64, 64)

    def ids(epoch):
        loader.set_epoch(epoch)
        return [t["image_id"] for _, targets in loader for t in targets]

    assert ids(1) == ids(1) and sorted(ids(1)) == list(range(6)) and ids(1) != ids(2)
    images, targets = next(iter(data.test_loader))
    assert images.shape == (4, 3, 64, 64) and len(data.test_loader.dataset) == 4
    assert data.test_loader.dataset.classes == ["Platelets", "RBC", "WBC"]  # evaluate_detector's class names


def test_bad_voc_path_is_a_data_error_naming_it(tmp_path):
    missing = tmp_path / "no_bccd_here"
    tree = tiny_recipe(tmp_path, [{"type": "detection"}], data_dir=str(missing))
    with pytest.raises(DataError, match=str(missing)):
        build_data(recipe_from_dict(tree))
    (missing / "Annotations").mkdir(parents=True)  # a folder that is not a full VOC folder
    with pytest.raises(DataError, match="JPEGImages"):
        build_data(recipe_from_dict(tree))


def test_detection_terms_are_built_from_recipe_entries_with_the_task_anchors():
    anchors = [[float(i), float(i)] for i in range(1, 10)]
    recipe = recipe_from_dict({
        "name": "t", "task": "detection", "data": {"name": "voc", "data_dir": "x"},
        "teacher": {"name": "yolo"}, "student": {"name": "yolo"},
        "distill": [{"terms": [{"type": "detection"}, {"type": "objectness_kd", "fm_nms": False},
                               {"type": "neck_hints", "adapter": "identity", "distance": "l1"}]},
                    {"terms": [{"type": "chen_kd", "background_weight": 1.0, "nu": 0.0, "obj_weight": 2.0}]}]})
    context = {"anchors": anchors, "strides": (8, 16, 32)}
    terms = {**build_terms(recipe.distill[0].terms, context), **build_terms(recipe.distill[1].terms, context)}
    assert list(terms) == ["detection", "objectness_kd", "neck_hints", "chen_kd"]
    assert isinstance(terms["detection"][0], YoloLoss)
    torch.testing.assert_close(terms["detection"][0].anchors, torch.tensor(anchors).view(3, 3, 2))
    assert isinstance(terms["objectness_kd"][0], ObjectnessScaledKD) and not terms["objectness_kd"][0].fm_nms
    okd_iou = build_terms(recipe_from_dict({**recipe.model_dump(mode="json", exclude_none=True), "distill": [
        {"terms": [{"type": "detection"}, {"type": "objectness_kd", "quality": "iou"}]}]}).distill[0].terms, context)
    assert okd_iou["objectness_kd"][0].quality == "iou" and len(okd_iou["objectness_kd"][0].heads) == 3
    chen = terms["chen_kd"][0]
    assert isinstance(chen, ChenDetectionKD) and chen.background_weight == 1.0 and chen.nu == 0.0
    assert chen.hard.obj_weight == 2.0 * chen.mu and chen.hard.cls_weight == 0.5 * chen.mu  # μ on the hard part
    hints = terms["neck_hints"][0]
    assert isinstance(hints, NeckHints) and terms["neck_hints"][1] == 0.05  # γ = 0.05 by default


def test_chen_kd_and_detection_in_one_stage_is_refused():
    tree = {"name": "t", "task": "detection", "data": {"name": "voc", "data_dir": "x"}, "teacher": {"name": "yolo"},
            "student": {"name": "yolo"}, "distill": [{"terms": [{"type": "detection"}, {"type": "chen_kd"}]}]}
    with pytest.raises(ConfigError, match="remove the 'detection' term"):
        recipe_from_dict(tree)


def test_chen_l2_regression_targets_the_teacher_box_unbounded():
    """Student box logits 0 → params (2σ − 0.5, (2σ)²) = (0.5, 0.5, 1, 1) at every positive; teacher logits
    log 3 (σ = 0.75) → (1, 1, 2.25, 2.25). L2 = 0.5² + 0.5² + 1.25² + 1.25² at each positive, so also its mean."""
    anchors = [[8.0, 8.0]] * 9
    s = [torch.zeros(1, 3, 4, 4, 7), torch.zeros(1, 3, 2, 2, 7), torch.zeros(1, 3, 1, 1, 7)]
    t = [m.clone() for m in s]
    for m in t:
        m[..., :4] = torch.log(torch.tensor(3.0))  # σ = 0.75
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 12.0, 12.0]]), "labels": torch.tensor([0])}]
    l2 = ChenDetectionKD(anchors, mu=1.0, nu=1.0, regression="l2")
    assert float(l2.bounded_regression(s, t, targets)) == pytest.approx(2 * 0.25 + 2 * 1.25 ** 2)
    # bounded: the 8×8 GT box fits the 8×8 anchors (w, h params 1 = the student's), so the student is nearer
    # the GT than the teacher (off by 1.25 in w and h) at every positive: L_b = 0
    bounded = ChenDetectionKD(anchors, mu=1.0, nu=1.0, regression="bounded")
    assert float(bounded.bounded_regression(s, t, targets)) == pytest.approx(0.0)


@pytest.mark.parametrize("name", ["bccd_yolo_teacher", "bccd_yolo_student", "bccd_yolo_distill"])
def test_bccd_recipes_validate(name):
    recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml")
    assert recipe.task == "detection" and recipe.data.name == "voc"
    assert recipe.student.name == "yolo" and recipe.student.args.get("size") == "n"


def test_ciou_gradient_is_finite_for_a_box_whose_height_rounds_to_zero():
    """The first BCCD smoke run diverged at step 6: a predicted height (2σ(t_h))²·anchor that vanished in
    xyxy made torchvision's atan(w/h) backward NaN."""
    from hintdistill.detection.boxes import ciou

    pred = torch.tensor([[87.28, 164.54, 133.76, 164.54]], requires_grad=True)
    value = ciou(pred, torch.tensor([[80.4, 134.0, 154.8, 204.0]]))
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(pred.grad).all()
