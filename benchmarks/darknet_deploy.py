"""Deployment check of a trained Darknet student: its student.cfg + student.weights, read by OpenCV's Darknet
importer (an independent implementation), against its model.pt in hintdistill, on the run's own test images.

    python benchmarks/darknet_deploy.py RUN_FOLDER [--images 16]

RUN_FOLDER is a `hintdistill run` folder whose student is a Darknet model (recipes/darknet_distill.yaml, or
the benchmark's darknet_student / darknet_student_kd rows): it holds recipe.yaml, distilled/model.pt,
student.cfg and student.weights. Both implementations get the same input tensors (the test loader's batches,
letterboxed and scaled as in training). Printed twice, as shipped and with the student's BatchNorm epsilon set
to OpenCV's (1e-6 where Darknet, and hintdistill's Darknet models, use 1e-5: on a trained model with small running
variances that convention alone moves objectness by ~1e-3), per level: the largest differences of the decoded box (centre
and size, in input pixels), the objectness and the class scores; and over all images the detections scored
>= 0.25 in each, matched one to one. Needs opencv-python-headless below 5.0 (the dev extra).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from hintdistill.build import build_data
from hintdistill.config import load_recipe
from hintdistill.engine.checkpoint import load_model


def compare(run: Path, images: int, bn_eps: float | None = None) -> dict:
    """The largest differences over ``images`` test images; ``bn_eps`` replaces the student's BatchNorm epsilon
    (Darknet's own 1e-5, which hintdistill uses, or OpenCV's 1e-6) to show what that convention accounts for."""
    import cv2

    cv2.setNumThreads(1)
    student, _ = load_model(run / "distilled" / "model.pt")
    student.eval()
    if bn_eps is not None:
        for m in student.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eps = bn_eps
    net = cv2.dnn.readNetFromDarknet(str(run / "student.cfg"), str(run / "student.weights"))
    names = net.getUnconnectedOutLayersNames()
    data = build_data(load_recipe(run / "recipe.yaml"))
    worst = {"box_px": 0.0, "objectness": 0.0, "class_score": 0.0}
    kept_ours = kept_theirs = seen = 0
    for batch, _ in data.test_loader:
        for x in batch.split(1):
            if seen >= images:
                break
            seen += 1
            side = x.shape[-1]
            net.setInput(x.numpy())
            theirs = dict(zip(names, net.forward(names), strict=True))
            with torch.no_grad():
                raw = student(x)
            for level, spec in enumerate(student.head_specs):
                # OpenCV: one row per (cell y, cell x, anchor): cx, cy, w, h (fractions of the input), objectness,
                # objectness x p(class) (set to 0 below its 0.2 threshold)
                cv = torch.from_numpy(theirs[f"yolo_{spec.layer}"])
                ours = student.decode_level(raw[level], level)[0].permute(1, 2, 0, 3).reshape(cv.shape)
                centre_size = torch.cat([(ours[:, :2] + ours[:, 2:4]) / 2, ours[:, 2:4] - ours[:, :2]], 1)
                scores, shown = ours[:, 5:] * ours[:, 4:5], cv[:, 5:] > 0
                worst["box_px"] = max(worst["box_px"], float((centre_size - cv[:, :4] * side).abs().max()))
                worst["objectness"] = max(worst["objectness"], float((ours[:, 4] - cv[:, 4]).abs().max()))
                if shown.any():
                    worst["class_score"] = max(worst["class_score"],
                                               float((scores[shown] - cv[:, 5:][shown]).abs().max()))
                kept_ours += int((scores.max(1).values >= 0.25).sum())
                kept_theirs += int((cv[:, 5:].max(1).values >= 0.25).sum())
        if seen >= images:
            break
    return {"run": str(run), "images": seen, "bn_eps": bn_eps or "model's", "max_abs_diff": worst,
            "cells_scored_0.25_or_more": {"hintdistill": kept_ours, "opencv": kept_theirs},
            "opencv": cv2.__version__}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--images", type=int, default=16)
    a = p.parse_args()
    missing = [f for f in ("recipe.yaml", "distilled/model.pt", "student.cfg", "student.weights")
               if not (a.run / f).is_file()]
    if missing:
        print(f"{a.run}: missing {', '.join(missing)}; give the folder of a run whose student is a Darknet model "
              f"(it writes student.cfg and student.weights)", file=sys.stderr)
        return 2
    try:
        import cv2  # noqa: F401
    except ImportError:
        print("OpenCV is not installed: pip install 'opencv-python-headless<5' (5.0 dropped the Darknet reader)",
              file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    # as shipped (BatchNorm eps 1e-5 inside the square root, as Darknet's normalize_cpu), then with the 1e-6 that
    # OpenCV's Darknet importer uses: the difference between the two conventions is what the first line shows
    print(json.dumps([compare(a.run, a.images), compare(a.run, a.images, bn_eps=1e-6)], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
