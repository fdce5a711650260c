"""Darknet cfgs for the tests, written here: small layouts covering every supported layer type, and
generators for the published yolov4 and yolov4-tiny layouts (from their layer tables) to check Darknet's
parameter and BFLOPs figures."""

from __future__ import annotations


def net(width: int, height: int | None = None, channels: int = 3) -> str:
    return f"[net]\nbatch=1\nwidth={width}\nheight={height or width}\nchannels={channels}\n"


def conv(filters: int, size: int = 1, stride: int = 1, act: str = "leaky", bn: bool = True, groups: int = 1) -> str:
    return (f"[convolutional]\n{'batch_normalize=1' + chr(10) if bn else ''}filters={filters}\nsize={size}\n"
            f"stride={stride}\npad=1\n{'groups=' + str(groups) + chr(10) if groups > 1 else ''}activation={act}\n")


def route(*layers: int, groups: int = 1, group_id: int = 0) -> str:
    extra = f"groups={groups}\ngroup_id={group_id}\n" if groups > 1 else ""
    return f"[route]\nlayers={','.join(map(str, layers))}\n{extra}"


def shortcut(src: int = -3) -> str:
    return f"[shortcut]\nfrom={src}\nactivation=linear\n"


def maxpool(size: int, stride: int) -> str:
    return f"[maxpool]\nsize={size}\nstride={stride}\n"


def upsample(stride: int = 2) -> str:
    return f"[upsample]\nstride={stride}\n"


def yolo(mask, anchors, classes: int, scale: float = 1.0, new_coords: int = 0) -> str:
    flat = ", ".join(f"{w},{h}" for w, h in anchors)
    return (f"[yolo]\nmask={','.join(map(str, mask))}\nanchors={flat}\nclasses={classes}\nnum={len(anchors)}\n"
            f"scale_x_y={scale}\nnew_coords={new_coords}\njitter=.3\nignore_thresh=.7\n")


def head(mask, anchors, classes, act="linear", **kw) -> str:
    """The 1x1 conv (with bias, no BN) that feeds a [yolo], and the [yolo]."""
    return conv(len(mask) * (5 + classes), 1, act=act, bn=False) + yolo(mask, anchors, classes, **kw)


ANCHORS6 = [(10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319)]
ANCHORS9 = [(12, 16), (19, 36), (40, 28), (36, 75), (76, 55), (72, 146), (142, 110), (192, 243), (459, 401)]


def tiny_v3(classes: int = 3, width: int = 64) -> str:
    """yolov3-tiny's shape: conv/maxpool stem, a size-2 stride-1 maxpool, two heads (stride 32 first)."""
    body = [conv(8, 3), maxpool(2, 2), conv(16, 3), maxpool(2, 2), conv(16, 3), maxpool(2, 2),   # 0-5
            conv(32, 3), maxpool(2, 2), conv(32, 3), maxpool(2, 2), conv(64, 3), maxpool(2, 1),  # 6-11
            conv(64, 3), conv(32, 1), conv(64, 3), head([3, 4, 5], ANCHORS6, classes),          # 12-16
            route(-4), conv(16, 1), upsample(), route(-1, 8), conv(32, 3),                      # 17-21
            head([0, 1, 2], ANCHORS6, classes)]                                                 # 22-23
    return net(width) + "\n".join(body)


def _csp_tiny_block(c: int) -> list[str]:
    """yolov4-tiny's block: conv, half of it through two convs, concat, 1x1, concat with the input conv."""
    return [conv(c, 3), route(-1, groups=2, group_id=1), conv(c // 2, 3), conv(c // 2, 3), route(-1, -2),
            conv(c, 1), route(-6, -1), maxpool(2, 2)]


def tiny_v4(classes: int = 80, width: int = 416, c: int = 32, scale: float = 1.05) -> str:
    """yolov4-tiny's layout (38 layers; c=32 is the published width): route groups, two heads."""
    body = [conv(c, 3, 2), conv(2 * c, 3, 2)]                                                  # 0-1
    for mult in (2, 4, 8):
        body += _csp_tiny_block(mult * c)                                                       # 2-25
    body += [conv(16 * c, 3), conv(8 * c, 1), conv(16 * c, 3),                                  # 26-28
             head([3, 4, 5], ANCHORS6, classes, scale=scale),                                   # 29-30
             route(-4), conv(4 * c, 1), upsample(), route(-1, 23), conv(8 * c, 3),              # 31-35
             head([1, 2, 3], ANCHORS6, classes, scale=scale)]                                   # 36-37
    return net(width) + "\n".join(body)


def spp_mish(classes: int = 2, width: int = 64, yolov5_heads: bool = False) -> str:
    """A CSP stage with mish and a residual shortcut, an SPP block (maxpool 5/9/13, stride 1), three heads
    at strides 4, 8, 16 (listed coarsest first) with scale_x_y, a grouped conv and a dropout.
    ``yolov5_heads``: new_coords=1 and scale_x_y=2 heads, the yolo family's box parametrisation."""

    def head3(mask, scale):
        if yolov5_heads:
            return head(mask, ANCHORS9, classes, act="logistic", scale=2.0, new_coords=1)
        return head(mask, ANCHORS9, classes, scale=scale)

    body = [conv(8, 3, act="mish"), conv(16, 3, 2, act="mish"), conv(8, 1, act="mish"), route(-2),    # 0-3
            conv(8, 1, act="mish"), conv(8, 3, act="mish"), conv(8, 3, act="mish"), shortcut(-3),     # 4-7
            conv(8, 1, act="mish"), route(-1, -7), conv(16, 3, 2, act="mish", groups=4),              # 8-10
            conv(16, 3, 2, act="relu"), conv(32, 3, 2, act="leaky"), conv(16, 1),                     # 11-13
            maxpool(5, 1), route(-2), maxpool(9, 1), route(-4), maxpool(13, 1), route(-1, -3, -5, -6),  # 14-19
            conv(16, 1), "[dropout]\nprobability=0.1\n", conv(32, 3),                                  # 20-22
            head3([6, 7, 8], 1.05),                                                                    # 23-24
            route(-4), upsample(), route(-1, 11), conv(16, 3),                                         # 25-28
            head3([3, 4, 5], 1.1),                                                                     # 29-30
            route(10), conv(16, 3), head3([0, 1, 2], 1.2)]                                             # 31-34
    return net(width) + "\n".join(body)


def new_coords(classes: int = 4, width: int = 64) -> str:
    """Scaled-YOLOv4 heads: swish backbone, logistic head convs, new_coords=1, scale_x_y=2; two levels."""
    body = [conv(8, 3, 2, act="swish"), conv(16, 3, 2, act="swish"), conv(16, 3, 2, act="swish"),    # 0-2
            conv(32, 3, 2, act="swish"), conv(32, 3, act="logistic"),                                 # 3-4
            head([0, 1, 2], ANCHORS6, classes, act="logistic", scale=2.0, new_coords=1),             # 5-6
            route(-3), conv(32, 3, 2, act="swish"),                                                   # 7-8
            head([3, 4, 5], ANCHORS6, classes, act="logistic", scale=2.0, new_coords=1)]             # 9-10
    return net(width) + "\n".join(body)


def _csp_stage(c_out: int, blocks: int, first: bool) -> list[str]:
    """A CSPDarknet53 stage: stride-2 conv, split into two 1x1 branches, residual blocks on one, concat, 1x1."""
    c = c_out if first else c_out // 2  # the first stage keeps full width in both branches
    layers = [conv(c_out, 3, 2, "mish"), conv(c, 1, act="mish"), route(-2), conv(c, 1, act="mish")]
    for _ in range(blocks):
        layers += [conv(c // 2 if first else c, 1, act="mish"), conv(c, 3, act="mish"), shortcut(-3)]
    layers += [conv(c, 1, act="mish"), route(-1, -(3 * blocks + 4)), conv(c_out if not first else c, 1, act="mish")]
    return layers


def yolov4(classes: int = 80, width: int = 608, div: int = 1) -> str:
    """yolov4.cfg's layout (162 layers): CSPDarknet53 (mish), SPP, PANet (leaky), heads at 8, 16, 32.
    ``div``: every feature conv has filters/div (the same layout, cheaper to run)."""

    def cv(filters: int, *args, **kw) -> str:
        return conv(filters // div, *args, **kw)

    body = [cv(32, 3, act="mish")]
    # layers 1-104: five CSP stages, whose outputs are layers 10, 23, 54, 85, 104
    for c_out, blocks, first in ((64, 1, True), (128, 2, False), (256, 8, False), (512, 8, False),
                                 (1024, 4, False)):
        body += _csp_stage(c_out // div, blocks, first)
    body += [cv(512, 1), cv(1024, 3), cv(512, 1),                                             # 105-107
             maxpool(5, 1), route(-2), maxpool(9, 1), route(-4), maxpool(13, 1),               # 108-112
             route(-1, -3, -5, -6),                                                            # 113 (SPP)
             cv(512, 1), cv(1024, 3), cv(512, 1), cv(256, 1), upsample(), route(85),           # 114-119
             cv(256, 1), route(-1, -3), cv(256, 1), cv(512, 3), cv(256, 1), cv(512, 3),        # 120-125
             cv(256, 1), cv(128, 1), upsample(), route(54), cv(128, 1), route(-1, -3),         # 126-131
             cv(128, 1), cv(256, 3), cv(128, 1), cv(256, 3), cv(128, 1),                       # 132-136
             cv(256, 3), head([0, 1, 2], ANCHORS9, classes, scale=1.2),                        # 137-139
             route(-4), cv(256, 3, 2), route(-1, -16), cv(256, 1), cv(512, 3), cv(256, 1),     # 140-145
             cv(512, 3), cv(256, 1), cv(512, 3), head([3, 4, 5], ANCHORS9, classes, scale=1.1),  # 146-150
             route(-4), cv(512, 3, 2), route(-1, -37), cv(512, 1), cv(1024, 3), cv(512, 1),    # 151-156
             cv(1024, 3), cv(512, 1), cv(1024, 3),                                             # 157-159
             head([6, 7, 8], ANCHORS9, classes, scale=1.05)]                                   # 160-161
    return net(width) + "\n".join(body)
