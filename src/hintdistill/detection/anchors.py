"""Anchors from the training boxes by k-means with the IoU distance (YOLOv2, Redmon & Farhadi 2017):

    d(box, centroid) = 1 − IoU(box, centroid)

where both are (w, h) pairs placed at the same corner, so IoU = min(w)·min(h) / (w·h + w_c·h_c − min(w)·min(h)).
Centroids are updated to the mean (w, h) of their cluster; the result is sorted by area, so the first three
anchors go to stride 8, the next three to 16, the last three to 32.
"""

from __future__ import annotations

import torch

from ..errors import DataError


def wh_iou(wh1: torch.Tensor, wh2: torch.Tensor) -> torch.Tensor:
    """IoU of corner-aligned boxes given as ``[N, 2]`` and ``[K, 2]`` (w, h) → ``[N, K]``."""
    inter = torch.min(wh1[:, None], wh2[None]).prod(-1)
    return inter / (wh1.prod(-1)[:, None] + wh2.prod(-1)[None] - inter)


def kmeans_anchors(wh: torch.Tensor, k: int = 9, iters: int = 100, seed: int = 0) -> torch.Tensor:
    """``k`` anchors ``[k, 2]`` (w, h) from box sizes ``wh`` ``[N, 2]`` (pixels of the network input).

    Initialised k-means++-style (each next centroid drawn with probability ∝ its distance), deterministic
    for a given ``seed``.
    """
    wh = torch.as_tensor(wh, dtype=torch.float64)
    wh = wh[(wh > 0).all(1)]
    if len(wh) < k:
        raise DataError(f"k-means needs at least {k} boxes with positive size, got {len(wh)}: "
                        f"check that the data set has annotations, or pass anchors explicitly.")
    gen = torch.Generator().manual_seed(seed)
    centroids = wh[torch.randint(len(wh), (1,), generator=gen)]
    while len(centroids) < k:
        dist = (1 - wh_iou(wh, centroids)).min(1).values
        pick = torch.multinomial(dist + 1e-12, 1, generator=gen)
        centroids = torch.cat([centroids, wh[pick]])
    for _ in range(iters):
        assign = (1 - wh_iou(wh, centroids)).argmin(1)
        new = centroids.clone()
        for j in range(k):
            members = wh[assign == j]
            if len(members):  # an empty cluster keeps its centroid
                new[j] = members.mean(0)
        if torch.allclose(new, centroids):
            break
        centroids = new
    return centroids[centroids.prod(1).argsort()].float()


def mean_best_iou(wh: torch.Tensor, anchors: torch.Tensor) -> float:
    """Average over boxes of the best IoU with any anchor: how well the anchors fit the data."""
    wh = torch.as_tensor(wh, dtype=torch.float32)
    return float(wh_iou(wh, torch.as_tensor(anchors, dtype=torch.float32)).max(1).values.mean())
