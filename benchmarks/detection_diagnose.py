"""Why does a detection distillation term help or hurt? Per-term loss and gradient sizes, and the teacher's
objectness calibration on the student's cells, for one recipe's distill stage.

    python benchmarks/detection_diagnose.py RECIPE.yaml --teacher T/model.pt [--student S/model.pt]
        [--set key=value ...] [--batches 8] [--json OUT.json]

For ``--batches`` training batches (no augmentation) it prints, per term of ``distill.0``:
- the term's value and, for a term with ``loss_parts``, each named part's value;
- the gradient norm it (and each part) sends into the student's backbone, neck and head (each alone,
  weighted as in the recipe), so a part that dwarfs the detection loss's own gradient is visible at once;
and, over the same batches, the teacher's objectness on the GT-positive and on the negative cells of the
student's assignment (mean sigmoid, and the share of the soft term's mass that falls on negatives), and at
the positives the bounded regression's statistics (how often it is active, the teacher's and the student's
squared errors, and how many size targets lie near the (2 sigmoid)^2 = 4 ceiling); and whether the student's
objectness at its positives (in eval mode, as deployed) follows its own box's IoU with the GT (YOLO's objectness target) or is confident
where its box misses (positives with IoU < 0.3 and objectness > 0.5: what chen_kd's paper-form soft targets
taught the raccoon students that lost, see ``quality`` in ``hintdistill.terms.detection``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from hintdistill.build import build_data, build_terms, instantiate, model_spec
from hintdistill.config import load_recipe
from hintdistill.detection.assign import assign_targets, target_box_params
from hintdistill.detection.boxes import box_params, paired_iou
from hintdistill.detection.heads import decode_level, yolov5_heads
from hintdistill.detection.loss import head_maps
from hintdistill.distiller import Distiller
from hintdistill.engine.checkpoint import load_model


def grad_norms(student: torch.nn.Module, loss: torch.Tensor) -> dict[str, float]:
    """L2 norm of d loss / d params, per top-level part of the student (backbone, neck, head)."""
    params = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True, retain_graph=True)
    sq: dict[str, float] = {}
    for (name, _), g in zip(params, grads, strict=True):
        if g is not None:
            part = name.split(".")[0]
            sq[part] = sq.get(part, 0.0) + float(g.pow(2).sum())
    return {k: v ** 0.5 for k, v in sq.items()}


def teacher_calibration(s_maps, t_maps, targets, anchors, strides) -> dict[str, float]:
    """Teacher objectness at the student's positives vs negatives, and bounded-regression statistics."""
    pos = assign_targets(targets, anchors, strides, [tuple(m.shape[2:4]) for m in s_maps])
    obj_pos, obj_neg, neg_mass, total_mass = [], [], 0.0, 0.0
    d_s, d_t, active, near_ceiling, n_pos = [], [], 0, 0, 0
    for level, (s, t, p) in enumerate(zip(s_maps, t_maps, pos, strict=True)):
        t_obj = t[..., 4].sigmoid()
        is_pos = torch.zeros_like(t_obj, dtype=torch.bool)
        is_pos[p.batch, p.anchor, p.gj, p.gi] = True
        obj_pos.append(t_obj[is_pos])
        obj_neg.append(t_obj[~is_pos])
        neg_mass += float(t_obj[~is_pos].sum())
        total_mass += float(t_obj.sum())
        if len(p):
            y = target_box_params(p, anchors[level], strides[level])
            r_s = box_params(s[p.batch, p.anchor, p.gj, p.gi])
            r_t = box_params(t[p.batch, p.anchor, p.gj, p.gi])
            ds, dt = ((r_s - y) ** 2).sum(-1), ((r_t - y) ** 2).sum(-1)
            d_s.append(ds)
            d_t.append(dt)
            active += int((ds > dt).sum())
            near_ceiling += int((y[:, 2:] > 3.5).any(-1).sum())
            n_pos += len(p)
    cat = torch.cat
    return {
        "teacher_obj_at_positives": float(cat(obj_pos).mean()) if n_pos else float("nan"),
        "teacher_obj_at_negatives": float(cat(obj_neg).mean()),
        "teacher_obj_mass_on_negatives": neg_mass / max(total_mass, 1e-12),
        "positives": n_pos,
        "bounded_active_share": active / max(n_pos, 1),
        "student_sq_error": float(cat(d_s).mean()) if d_s else float("nan"),
        "teacher_sq_error": float(cat(d_t).mean()) if d_t else float("nan"),
        "size_target_above_3.5_share": near_ceiling / max(n_pos, 1),
    }


def student_calibration(s_maps, targets, anchors, strides) -> dict[str, float]:
    """At the GT positives: the correlation of the student's objectness with its box's IoU with the GT, and
    how many positives are confident (> 0.5) with a box that misses (IoU < 0.3)."""
    pos = assign_targets(targets, anchors, strides, [tuple(m.shape[2:4]) for m in s_maps])
    obj, iou = [], []
    for s, p, head in zip(s_maps, pos, yolov5_heads(anchors, strides), strict=True):
        d = decode_level(s, head)[p.batch, p.anchor, p.gj, p.gi]
        obj.append(d[:, 4])
        iou.append(paired_iou(d[:, :4], p.boxes))
    obj, iou = torch.cat(obj), torch.cat(iou)
    misses = iou < 0.3
    return {
        "student_obj_iou_correlation": float(torch.corrcoef(torch.stack([obj, iou]))[0, 1]) if len(obj) > 1
        else float("nan"),
        "student_confident_misses": float((misses & (obj > 0.5)).sum()),
        "student_obj_where_box_misses": float(obj[misses].mean()) if misses.any() else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("--teacher", required=True, help="the teacher's model.pt")
    ap.add_argument("--student", help="a trained student's model.pt (default: the recipe's fresh student)")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--json", help="write the figures here too")
    a = ap.parse_args()
    torch.set_num_threads(1)
    recipe = load_recipe(a.recipe, a.overrides)
    data = build_data(recipe)
    teacher, _ = load_model(a.teacher)
    torch.manual_seed(recipe.seed)
    student = load_model(a.student)[0] if a.student else instantiate(model_spec(recipe.student, data.model_defaults))
    stage = recipe.distill[0]
    loader = data.train_loader(stage.batch_size, [], recipe.seed, 0, 1)
    loader.set_epoch(0)
    example = data.example_batch()[0]
    distiller = Distiller(student, [teacher], build_terms(stage.terms, data.context), example_inputs=example)
    distiller.train()
    anchors = torch.as_tensor(data.context["anchors"], dtype=torch.float32).reshape(3, 3, 2)
    strides = [float(s) for s in data.context["strides"]]
    rows: dict[str, list[dict]] = {}
    calib: list[dict] = []
    for i, (x, y) in enumerate(loader):
        if i >= a.batches:
            break
        teacher_out = distiller.teacher_outputs(x)
        student_out = distiller.student_taps.run(x)
        for name, term in distiller.terms.items():
            weight = distiller.weight(name)
            value = weight * term(student_out, teacher_out, y)
            row = {"value": float(value), **{f"grad/{k}": v for k, v in grad_norms(student, value).items()}}
            parts = term.loss_parts(student_out, teacher_out, y) if hasattr(term, "loss_parts") else {}
            for part, v in parts.items():  # each named part's own size and gradient
                row[f"{part}/value"] = float(weight * v)
                row.update({f"{part}/grad/{k}": g for k, g in grad_norms(student, weight * v).items()})
            rows.setdefault(name, []).append(row)
        student.eval()  # as deployed: a student can lean on batch statistics that a test pass does not have
        with torch.no_grad():
            deployed = [m.detach() for m in student(x)]
        student.train()
        calib.append(teacher_calibration([m.detach() for m in head_maps(student_out)],
                                         head_maps(teacher_out[0], "teacher"), y, anchors, strides)
                     | student_calibration(deployed, y, anchors, strides))
    summary = {name: {k: statistics.fmean(r[k] for r in rs if k in r) for k in rs[0]} for name, rs in rows.items()}
    summary["calibration"] = {k: statistics.fmean(c[k] for c in calib) for k in calib[0]}
    print(json.dumps(summary, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
