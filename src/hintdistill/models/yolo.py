"""``yolo``: a YOLOv4/v5-style anchor-based detector with width and depth multipliers.

    backbone  stem → 4 × (stride-2 conv + CSP block) → SPPF      (C3 at /8, C4 at /16, C5 at /32)
    neck      PAN: top-down (upsample + concat + CSP), then bottom-up (stride-2 conv + concat + CSP);
              ``neck.p3`` (/8), ``neck.p4`` (/16), ``neck.p5`` (/32) are the modules whose outputs
              are the three levels, so they can be tapped by name as hint or guided layers
    head      ``head.levels.{0,1,2}``: one 1×1 conv per level, A·(5+C) channels

``forward(x)`` returns, in train and eval mode alike, a list of three raw maps ``[B, A, H, W, 5+C]``
(logits, no decoding: see ``hintdistill.detection.boxes`` for the layout), which ``Taps`` turns into
``head:0`` (stride 8), ``head:1`` (16), ``head:2`` (32). ``decode`` and ``postprocess`` turn them into
boxes. Anchors are a buffer (``anchors``, ``[3, 3, 2]`` pixels) so they travel in the state_dict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.ops import batched_nms

from ..detection.heads import HeadSpec, decode
from ..errors import ConfigError
from .registry import register

# YOLOv5's COCO anchors at 640 px; replace them with k-means anchors of your data
# (``hintdistill.detection.anchors.kmeans_anchors``).
DEFAULT_ANCHORS = [(10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198), (373, 326)]
STRIDES = (8, 16, 32)
# (depth multiple, width multiple), as YOLOv5's n/s/m/l.
SIZES = {"n": (0.33, 0.25), "s": (0.33, 0.50), "m": (0.67, 0.75), "l": (1.0, 1.0)}
BASE_CHANNELS = (64, 128, 256, 512, 1024)
BASE_DEPTHS = (3, 6, 9, 3)


class ConvBNAct(nn.Sequential):
    """Conv → BatchNorm → SiLU."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1):
        super().__init__(nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False), nn.BatchNorm2d(c_out), nn.SiLU())


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool = True):
        super().__init__()
        self.cv1, self.cv2 = ConvBNAct(c, c, 1), ConvBNAct(c, c, 3)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.shortcut else y


class CSPBlock(nn.Module):
    """Cross-stage partial block (YOLOv5's C3): half the channels go through n bottlenecks."""

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = True):
        super().__init__()
        c = c_out // 2
        self.cv1, self.cv2 = ConvBNAct(c_in, c, 1), ConvBNAct(c_in, c, 1)
        self.m = nn.Sequential(*(Bottleneck(c, shortcut) for _ in range(n)))
        self.cv3 = ConvBNAct(2 * c, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat([self.m(self.cv1(x)), self.cv2(x)], dim=1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5×5 max-pools, concatenated."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        c = c_in // 2
        self.cv1, self.cv2 = ConvBNAct(c_in, c, 1), ConvBNAct(4 * c, c_out, 1)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.pool(x)
        y2 = self.pool(y1)
        return self.cv2(torch.cat([x, y1, y2, self.pool(y2)], dim=1))


class Backbone(nn.Module):
    """CSP backbone; returns the stride-8, -16 and -32 features."""

    def __init__(self, in_channels: int, ch: Sequence[int], n: Sequence[int]):
        super().__init__()
        self.stem = ConvBNAct(in_channels, ch[0], 3, 2)
        self.stage1 = nn.Sequential(ConvBNAct(ch[0], ch[1], 3, 2), CSPBlock(ch[1], ch[1], n[0]))
        self.stage2 = nn.Sequential(ConvBNAct(ch[1], ch[2], 3, 2), CSPBlock(ch[2], ch[2], n[1]))
        self.stage3 = nn.Sequential(ConvBNAct(ch[2], ch[3], 3, 2), CSPBlock(ch[3], ch[3], n[2]))
        self.stage4 = nn.Sequential(ConvBNAct(ch[3], ch[4], 3, 2), CSPBlock(ch[4], ch[4], n[3]), SPPF(ch[4], ch[4]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c3 = self.stage2(self.stage1(self.stem(x)))
        c4 = self.stage3(c3)
        return c3, c4, self.stage4(c4)


class PANNeck(nn.Module):
    """Path-aggregation neck; ``p3``, ``p4``, ``p5`` are the CSP blocks that output the three levels."""

    def __init__(self, ch: Sequence[int], n: int):
        super().__init__()
        c3, c4, c5 = ch[2], ch[3], ch[4]
        self.lateral5 = ConvBNAct(c5, c4, 1)
        self.top_down4 = CSPBlock(2 * c4, c4, n, shortcut=False)
        self.lateral4 = ConvBNAct(c4, c3, 1)
        self.p3 = CSPBlock(2 * c3, c3, n, shortcut=False)
        self.down3 = ConvBNAct(c3, c3, 3, 2)
        self.p4 = CSPBlock(2 * c3, c4, n, shortcut=False)
        self.down4 = ConvBNAct(c4, c4, 3, 2)
        self.p5 = CSPBlock(2 * c4, c5, n, shortcut=False)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, c3: torch.Tensor, c4: torch.Tensor, c5: torch.Tensor) -> list[torch.Tensor]:
        l5 = self.lateral5(c5)
        l4 = self.lateral4(self.top_down4(torch.cat([self.up(l5), c4], 1)))
        p3 = self.p3(torch.cat([self.up(l4), c3], 1))
        p4 = self.p4(torch.cat([self.down3(p3), l4], 1))
        p5 = self.p5(torch.cat([self.down4(p4), l5], 1))
        return [p3, p4, p5]


class DetectHead(nn.Module):
    """One 1×1 conv per level; output reshaped to ``[B, A, H, W, 5+C]``."""

    def __init__(self, channels: Sequence[int], num_anchors: int, num_classes: int):
        super().__init__()
        self.num_anchors, self.num_outputs = num_anchors, 5 + num_classes
        self.levels = nn.ModuleList(nn.Conv2d(c, num_anchors * self.num_outputs, 1) for c in channels)
        for conv, stride in zip(self.levels, STRIDES, strict=True):
            # YOLOv5's prior: about 8 objects per 640² image, class probability 0.6 / C.
            bias = conv.bias.data.view(num_anchors, -1)
            bias[:, 4] = math.log(8 / (640 / stride) ** 2)
            bias[:, 5:] = math.log(0.6 / max(num_classes - 0.99, 0.01))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for conv, f in zip(self.levels, feats, strict=True):
            y = conv(f)
            b, _, h, w = y.shape
            out.append(y.view(b, self.num_anchors, self.num_outputs, h, w).permute(0, 1, 3, 4, 2))
        return out


class YOLO(nn.Module):
    """Anchor-based one-stage detector; see the module docstring for the outputs."""

    def __init__(self, num_classes: int, size: str = "n", anchors: Sequence[Sequence[float]] | None = None,
                 in_channels: int = 3, width: float | None = None, depth: float | None = None):
        super().__init__()
        if size not in SIZES:
            raise ConfigError(f"unknown yolo size '{size}'; choose one of {', '.join(SIZES)}")
        if num_classes < 1:
            raise ConfigError(f"yolo needs num_classes >= 1, got {num_classes}")
        anchors = DEFAULT_ANCHORS if anchors is None else anchors
        anchor_t = torch.as_tensor(anchors, dtype=torch.float32)
        if anchor_t.numel() != 18:
            raise ConfigError(f"yolo needs 9 anchors as (w, h) pixel pairs, 3 per level; got shape "
                              f"{tuple(anchor_t.shape)}. Compute them with detection.anchors.kmeans_anchors.")
        d_mult, w_mult = SIZES[size]
        d_mult, w_mult = depth or d_mult, width or w_mult
        ch = [max(8, int(round(c * w_mult / 8)) * 8) for c in BASE_CHANNELS]
        n = [max(1, round(k * d_mult)) for k in BASE_DEPTHS]
        self.num_classes, self.size = num_classes, size
        self.register_buffer("anchors", anchor_t.view(3, 3, 2).clone())
        self.register_buffer("strides", torch.tensor(STRIDES, dtype=torch.float32))
        self.backbone = Backbone(in_channels, ch, n)
        self.neck = PANNeck(ch, n[0])
        self.head = DetectHead([ch[2], ch[3], ch[4]], 3, num_classes)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.head(self.neck(*self.backbone(x)))

    @property
    def head_specs(self) -> list[HeadSpec]:
        """The head contract (``detection.heads``): strides 8, 16, 32, the anchors buffer (so a loaded
        checkpoint's anchors count), YOLOv5's box decoding."""
        return [HeadSpec(float(stride), tuple((float(w), float(h)) for w, h in anchors.tolist()), "yolov5",
                         num_classes=self.num_classes)
                for anchors, stride in zip(self.anchors, self.strides.tolist(), strict=True)]

    def decode(self, raw_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Raw maps → ``[B, N, 5+C]``: ``x1, y1, x2, y2`` (input pixels), objectness, class probabilities."""
        return decode(raw_maps, self.head_specs)

    @torch.no_grad()
    def postprocess(self, raw_maps: Sequence[torch.Tensor], conf_thresh: float = 0.25, iou_thresh: float = 0.45,
                    max_det: int = 300, max_candidates: int = 30000) -> list[dict[str, torch.Tensor]]:
        """Decode, keep (box, class) pairs with objectness·p(class) > ``conf_thresh``, class-wise NMS.

        Returns one dict per image: ``boxes`` [K, 4] xyxy pixels, ``scores`` [K], ``labels`` [K] (0-based).
        """
        results = []
        for det in self.decode(raw_maps).float():
            det = det[det[:, 4] > conf_thresh]
            scores = det[:, 5:] * det[:, 4:5]
            idx, labels = (scores > conf_thresh).nonzero(as_tuple=True)
            boxes, scores = det[idx, :4], scores[idx, labels]
            if scores.numel() > max_candidates:
                top = scores.topk(max_candidates).indices
                boxes, scores, labels = boxes[top], scores[top], labels[top]
            keep = batched_nms(boxes, scores, labels, iou_thresh)[:max_det]
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return results


@register("yolo")
def yolo(num_classes: int, size: str = "n", anchors: Sequence[Sequence[float]] | None = None,
         in_channels: int = 3, width: float | None = None, depth: float | None = None) -> YOLO:
    """Registry factory: ``{"name": "yolo", "args": {"num_classes": 3, "size": "s", "anchors": [...]}}``."""
    return YOLO(num_classes, size, anchors, in_channels, width, depth)
