"""Darknet cfg/weights models: against OpenCV's Darknet importer, weights round trips and misfits, cfg errors
with line numbers, Darknet's published parameter and BFLOPs figures, the head contract."""

from __future__ import annotations

import math
import struct

import darknet_cfgs as D
import pytest
import torch

from hintdistill.cli import main
from hintdistill.detection.boxes import decode_level as yolo_decode_level
from hintdistill.detection.loss import YoloLoss
from hintdistill.errors import CheckpointError, ConfigError
from hintdistill.models import build_model
from hintdistill.models.darknet import DarknetModel, MaxPoolLayer, build_darknet
from hintdistill.models.darknet_cfg import parse_network, parse_sections
from hintdistill.models.darknet_weights import save_cfg, save_weights, weights_bytes
from hintdistill.taps import Taps, outputs_from

torch.set_num_threads(1)


def randomised(text: str, seed: int = 0) -> DarknetModel:
    """A model with random weights and batch-norm statistics away from the identity, in eval mode."""
    torch.manual_seed(seed)
    model = build_darknet(text)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model.eval()


def write(tmp_path, text: str, model: DarknetModel | None = None):
    cfg = tmp_path / "m.cfg"
    cfg.write_text(text)
    weights = tmp_path / "m.weights"
    if model is not None:
        save_weights(model, weights)
    return cfg, weights


# --- against OpenCV's Darknet importer ------------------------------------------------------------------------

LAYOUTS = {
    "yolov3-tiny (maxpool 2/1, upsample, heads stride 32 first)": (D.tiny_v3(classes=3, width=128), 128, 128),
    "yolov4-tiny (route groups, scale_x_y), non-square": (D.tiny_v4(classes=3, c=8, width=96).replace(
        "height=96", "height=64"), 64, 96),
    "SPP, mish, relu, shortcut, grouped conv, dropout, 3 heads": (D.spp_mish(classes=2, width=64), 64, 64),
    "new_coords=1, swish, logistic heads, scale_x_y=2": (D.new_coords(classes=4, width=64), 64, 64),
    "yolov4 (162 layers, filters / 8)": (D.yolov4(classes=3, width=64, div=8), 64, 64),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_same_boxes_objectness_and_scores_as_opencv(tmp_path, layout):
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless<5 (the dev extra) reads Darknet cfgs")
    cv2.setNumThreads(1)
    text, h, w = LAYOUTS[layout]
    model = randomised(text)
    cfg, weights = write(tmp_path, text, model)
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(1))
    net.setInput(x.numpy())
    names = net.getUnconnectedOutLayersNames()
    theirs = dict(zip(names, net.forward(names), strict=True))
    with torch.no_grad():
        raw = model(x)
    assert len(theirs) == len(raw) == len(model.head_specs)
    for level, spec in enumerate(model.head_specs):
        # OpenCV: one row per (cell y, cell x, anchor): cx/W, cy/H, w/W, h/H, objectness, obj·p(class) (0 below 0.2)
        cv = torch.from_numpy(theirs[f"yolo_{spec.layer}"])
        ours = model.decode_level(raw[level], level)[0].permute(1, 2, 0, 3).reshape(cv.shape)
        scale = torch.tensor([w, h, w, h])
        centre_size = torch.cat([(ours[:, :2] + ours[:, 2:4]) / 2, ours[:, 2:4] - ours[:, :2]], 1) / scale
        torch.testing.assert_close(centre_size, cv[:, :4], atol=1e-4, rtol=0)
        torch.testing.assert_close(ours[:, 4], cv[:, 4], atol=1e-4, rtol=0)
        scores = ours[:, 5:] * ours[:, 4:5]
        kept = cv[:, 5:] > 0
        torch.testing.assert_close(scores[kept], cv[:, 5:][kept], atol=1e-4, rtol=0)
        assert (scores[~kept] < 0.2 + 1e-4).all() and kept.any()


# --- weights files -------------------------------------------------------------------------------------------

def test_weights_round_trip_is_bit_exact(tmp_path):
    text = D.spp_mish(classes=2)
    model = randomised(text)
    cfg, weights = write(tmp_path, text, model)
    loaded = build_model("darknet", {"cfg": str(cfg), "weights": str(weights)})
    assert weights_bytes(loaded) == weights.read_bytes()
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # header: Darknet's 0.2.5 with a 64-bit `seen`; 20 bytes, then 4 bytes per parameter and BN statistic
    n_floats = sum(p.numel() for p in model.parameters()) + sum(
        m.running_mean.numel() * 2 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    data = weights.read_bytes()
    assert struct.unpack_from("<3iQ", data) == (0, 2, 5, 0) and len(data) == 20 + 4 * n_floats


def test_old_header_with_32_bit_seen_loads_and_is_written_back_the_same(tmp_path):
    text = D.new_coords()
    model = randomised(text)
    body = weights_bytes(model)[20:]
    old = struct.pack("<3iI", 0, 1, 0, 12345) + body  # version 0.1: `seen` is 32-bit
    cfg, weights = write(tmp_path, text)
    weights.write_bytes(old)
    loaded = build_darknet(str(cfg), str(weights)).eval()
    assert loaded.weights_header == (0, 1, 0, 12345)
    assert weights_bytes(loaded) == old
    torch.testing.assert_close(loaded(torch.ones(1, 3, 64, 64))[0], model(torch.ones(1, 3, 64, 64))[0])


def test_truncated_and_oversized_weights_are_refused_naming_layer_and_bytes(tmp_path):
    text = D.tiny_v3(classes=3)
    cfg, weights = write(tmp_path, text, randomised(text))
    data = weights.read_bytes()
    need = len(data) - 20
    weights.write_bytes(data[:-4])  # the last layer (22, the second head's conv) loses one float
    with pytest.raises(CheckpointError, match=rf"holds {need - 4} bytes .* need {need}: it ends inside layer 22 "
                                              rf"\(.*m.cfg:\d+ \(\[convolutional\]\)\)"):
        build_darknet(str(cfg), str(weights))
    weights.write_bytes(data + b"\0" * 8)
    with pytest.raises(CheckpointError, match=rf"8 more than the 13 convolutional layers of the cfg need \({need}\)"):
        build_darknet(str(cfg), str(weights))
    weights.write_bytes(data[:10])
    with pytest.raises(CheckpointError, match="fewer than the 12-byte version header"):
        build_darknet(str(cfg), str(weights))
    # a file for 80 classes is larger than the 3-class cfg needs
    save_weights(build_darknet(D.tiny_v3(classes=80)), weights)
    with pytest.raises(CheckpointError, match="belongs to another cfg"):
        build_darknet(str(cfg), str(weights))


def test_partial_weights_upto_a_layer(tmp_path):
    text = D.tiny_v3(classes=3)
    model = randomised(text)
    cfg, weights = write(tmp_path, text)
    n_first = sum(4 * t.numel() for t in model.layers[0].state_dict().values() if t.dtype == torch.float32)
    weights.write_bytes(weights_bytes(model)[:20 + n_first])  # only layer 0, like Darknet's *.conv.N files
    loaded = build_darknet(str(cfg), str(weights), weights_upto=1)
    assert torch.equal(loaded.layers[0].conv.weight, model.layers[0].conv.weight)
    assert not torch.equal(loaded.layers[2].conv.weight, model.layers[2].conv.weight)
    with pytest.raises(CheckpointError, match="before layer 3"):
        build_darknet(str(cfg), str(weights), weights_upto=3)


def test_trained_model_ships_as_cfg_and_weights_with_other_classes_and_anchors(tmp_path):
    anchors = [(5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)]
    model = build_darknet(D.tiny_v4(classes=80, c=8, width=64), num_classes=2, anchors=anchors).eval()
    assert model.layers[29].conv.out_channels == 3 * 7 and model.num_classes == 2
    save_cfg(model, tmp_path / "student.cfg")
    save_weights(model, tmp_path / "student.weights")
    again = build_model("darknet", {"cfg": str(tmp_path / "student.cfg"),
                                    "weights": str(tmp_path / "student.weights")}).eval()
    assert again.cfg_text() == model.cfg_text()
    assert again.head_specs == model.head_specs and again.head_specs[0].anchors == ((7, 8), (9, 10), (11, 12))
    x = torch.rand(1, 3, 64, 64)
    for a, b in zip(model(x), again(x), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="9 anchors given but the head has num=6"):
        build_darknet(D.tiny_v4(c=8), anchors=D.ANCHORS9)


# --- cfg errors ----------------------------------------------------------------------------------------------

GOOD = D.net(64) + D.conv(8, 3) + D.head([0], [(10, 10)], 1)  # [net] 1-5, conv 6-12, head conv 13-18, [yolo] 19


@pytest.mark.parametrize("text, pattern", [
    (D.net(64) + "[crop]\nsize=3\n" + GOOD[len(D.net(64)):],
     r"cfg>:6: unsupported section \[crop\]; supported: \[net\], .*\[convolutional\], .*\[yolo\]"),
    (GOOD.replace("[convolutional]", "[convolutional]\nthis line has no equals"), r":7: malformed line 'this line"),
    (GOOD.replace("[convolutional]", "[convolutional"), r":6: malformed section header"),
    ("width=3\n" + GOOD, r":1: malformed line 'width=3', expected the first section header"),
    (GOOD.replace("filters=8\n", ""), r":6 \(\[convolutional\]\): missing required key 'filters'"),
    (GOOD.replace("size=3", "size=three"), r":9 \(\[convolutional\]\): size=three is not an integer"),
    (GOOD.replace("activation=leaky", "activation=gelu"), r":12 .*activation=gelu is not supported; use one of"),
    (D.net(64) + D.conv(8, 3) + D.route(-1, 5) + D.conv(6, act="linear", bn=False) + D.yolo([0], [(9, 9)], 1),
     r":14 \(\[route\]\): layers refers to layer 5 \(absolute 5\), but layer 1 can only use layers 0..0"),
    (D.net(64) + D.conv(8, 3) + D.shortcut(-4) + D.conv(6, act="linear", bn=False) + D.yolo([0], [(9, 9)], 1),
     r":14 \(\[shortcut\]\): from refers to layer -4 \(absolute -3\)"),
    (D.net(64) + D.conv(8, 3) + D.conv(8, 3, 2) + D.route(-1, -2) + D.head([0], [(9, 9)], 1),
     r"\(\[route\]\): layers \[1, 0\] have different spatial sizes"),
    (GOOD.replace("filters=6", "filters=7"),
     r":19 \(\[yolo\]\): .*filters=6 .*got \[convolutional\] with 7 channels"),
    (GOOD.replace("anchors=10,10", "anchors=10,10,4"), r":\d+ \(\[yolo\]\): 3 anchor numbers for num=1"),
    (GOOD.replace("mask=0", "mask=1"), r"mask=\[1\] must name anchors in 0..0"),
    (GOOD.replace("pad=1", "pad=1\ndilation=2"), r":12 \(\[convolutional\]\): dilation=2 is not supported"),
    (GOOD.replace("new_coords=0", "new_coords=1"), r"new_coords=1 reads a logistic conv; set activation=logistic"),
    (D.net(64) + D.conv(8, 3), r"has no \[yolo\] section"),
    (GOOD + D.route(-2) + D.head([0], [(10, 10)], 2), r":\d+ \(\[yolo\]\): classes=2 but the first \[yolo\] has classes=1"),
    (D.conv(8, 3), r"starts with a \[net\] section"),
])
def test_malformed_cfg_errors_name_the_line(text, pattern):
    parse_network(GOOD)  # the unedited cfg is valid
    with pytest.raises(ConfigError, match=pattern):
        parse_network(text)


def test_cfg_text_round_trips_through_the_parser():
    sections = parse_sections(D.spp_mish())
    model = build_darknet(D.spp_mish())
    again = parse_sections(model.cfg_text())
    assert [(s.name, s.options) for s in again] == [(s.name, s.options) for s in sections]


# --- Darknet's published figures -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, size, params, bflops", [
    (D.yolov4(), 608, 64_363_101, 128.5),
    (D.yolov4(width=416), 416, 64_363_101, 60.1),
    (D.tiny_v4(), 416, 6_056_606, 6.9),
])
def test_published_parameter_and_bflops_figures(text, size, params, bflops):
    with torch.device("meta"):  # count without allocating 64M parameters
        model = build_darknet(text)
    assert sum(p.numel() for p in model.parameters()) == params
    table, total = model.darknet_table(size, size)
    assert round(total, 1) == bflops
    assert len(table.splitlines()) == len(model.layers) + 2


def test_yolov4_layer_table_and_head_contract():
    with torch.device("meta"):
        model = build_darknet(D.yolov4())
    table, _ = model.darknet_table(608, 608)
    # Darknet's printout: layer 0 is 0.639 BF, the SPP route 113 concatenates 4 x 512 channels at 19 x 19
    assert "    0 conv          32    3 x 3/ 1  608 x 608 x    3 -> 608 x 608 x   32 0.639 BF" in table
    row = table.splitlines()[1 + 113].split()
    assert row[:6] == ["113", "route", "112", "110", "108", "107"] and row[-5:] == ["19", "x", "19", "x", "2048"]
    assert [s.layer for s in model.head_specs] == [139, 150, 161]
    assert [s.stride for s in model.head_specs] == [8, 16, 32] and model.anchors.shape == (3, 3, 2)
    assert [s.scale_x_y for s in model.head_specs] == [1.2, 1.1, 1.05]


# --- head contract -------------------------------------------------------------------------------------------

def test_heads_are_ordered_by_stride_and_layers_tappable_by_darknet_index():
    model = build_darknet(D.tiny_v3(classes=3, width=64)).eval()  # its cfg lists the stride-32 head first
    assert [s.layer for s in model.head_specs] == [23, 16] and model.strides.tolist() == [16, 32]
    assert not hasattr(model, "anchors")  # 2 levels x 3 anchors: no [3, 3, 2] buffer
    assert torch.equal(model.level_anchors[0], torch.tensor([[10.0, 14], [23, 27], [37, 58]]))
    out = Taps(model, ["layers.11", "layers.20"]).run(torch.rand(2, 3, 64, 64))
    assert out["head:0"].shape == (2, 3, 4, 4, 8) and out["head:1"].shape == (2, 3, 2, 2, 8)
    assert out["feat:layers.11"].shape == (2, 64, 2, 2)  # maxpool size 2 stride 1 keeps 2x2
    assert out["feat:layers.20"].shape == (2, 48, 4, 4)  # route of the upsampled 16 and layer 8's 32 channels
    assert model.decode([out["head:0"], out["head:1"]]).shape == (2, 3 * 16 + 3 * 4, 8)
    dets = model.postprocess([out["head:0"], out["head:1"]], conf_thresh=0.0)
    assert len(dets) == 2 and dets[0]["boxes"].shape[1] == 4


def test_decoding_worked_by_hand():
    model = build_darknet(D.tiny_v4(classes=1, c=8, width=64))  # scale_x_y 1.05, exp decoding
    raw = torch.zeros(1, 3, 4, 4, 6)
    raw[0, 1, 1, 0, 2] = math.log(2.0)  # level 0: stride 16, mask 1,2,3; anchor 1 is (37, 58); cell x=0, y=1
    box = model.decode_level(raw, 0)[0, 1, 1, 0]
    # x = (0 + 0.5·1.05 − 0.025)·16 = 8, y = 24; w = 2·37, h = 58; objectness σ(0) = 0.5
    torch.testing.assert_close(box, torch.tensor([8 - 37, 24 - 29, 8 + 37, 24 + 29, 0.5, 0.5]))
    model = build_darknet(D.new_coords(classes=1))  # new_coords=1, scale_x_y=2: (2σ)², as YOLOv5
    raw = torch.randn(2, 3, 4, 4, 6)
    ours = model.decode_level(raw, 0)
    torch.testing.assert_close(ours[..., :4], yolo_decode_level(raw, model.level_anchors[0], 16))
    raw.zero_()
    torch.testing.assert_close(model.decode_level(raw, 0)[0, 2, 3, 1, :4],  # σ(0)=.5: centre (1.5, 3.5) cells
                               torch.tensor([24 - 18.5, 56 - 29, 24 + 18.5, 56 + 29]))  # anchor (37, 58)


def test_yolo_family_loss_trains_a_darknet_model_with_yolov5_heads():
    """3 levels x 3 anchors and new_coords=1, scale_x_y=2: the built-in loss reads model.anchors/strides and
    its box parametrisation is the model's own decoding, so a few steps fit one image's boxes."""
    torch.manual_seed(0)
    model = build_darknet(D.spp_mish(classes=2, yolov5_heads=True))
    assert model.anchors.shape == (3, 3, 2) and model.strides.tolist() == [4, 8, 16]
    loss_fn = YoloLoss.for_model(model)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    targets = [{"boxes": torch.tensor([[8.0, 8, 30, 40]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[20.0, 10, 60, 60], [2, 2, 14, 18]]), "labels": torch.tensor([0, 1])}]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = loss_fn(outputs_from(model(x)), [], targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.3 * losses[0]


def test_maxpool_padding_follows_darknet():
    x = torch.tensor([[[[1.0, 5.0, 2.0], [0.0, 3.0, 9.0], [4.0, 1.0, 0.0]]]])
    # size 2 stride 1: padding 1, all of it right/bottom, so out[i, j] = max of x[i:i+2, j:j+2]
    torch.testing.assert_close(MaxPoolLayer(2, 1, 1)(x), torch.tensor([[[[5.0, 9.0, 9.0], [4.0, 9.0, 9.0],
                                                                          [4.0, 1.0, 0.0]]]]))
    # size 3 stride 2 on 3x3: padding 2 split 1/1 -> 2x2 output of 3x3 windows around (0,0),(0,2),(2,0),(2,2)
    torch.testing.assert_close(MaxPoolLayer(3, 2, 2)(x), torch.tensor([[[[5.0, 9.0], [4.0, 9.0]]]]))


def test_cli_inspect_prints_darknet_table(tmp_path, capsys):
    cfg, _ = write(tmp_path, D.tiny_v4())
    assert main(["inspect", f"darknet:{cfg}", "--input-shape", "3,416,416"]) == 0
    out = capsys.readouterr().out
    assert "Total BFLOPS 6.910" in out and "total parameters: 6056606" in out and "   30 yolo" in out
    assert main(["inspect", f"darknet:{cfg}", "--input-shape", "1,416,416"]) == 2
    assert "takes 3 channels" in capsys.readouterr().err
    assert main(["inspect", f"darknet:{tmp_path / 'missing.cfg'}", "--input-shape", "3,416,416"]) == 2
