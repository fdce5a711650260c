"""Darknet ``.cfg`` files: parse them (every error names the line), infer shapes, count BFLOPs, write them back.

A cfg is a list of ``[section]`` headers each followed by ``key=value`` lines; the first section is ``[net]``
(input size), every later one is a layer whose Darknet index is its position after ``[net]``. ``route`` and
``shortcut`` refer to earlier layers by a negative offset or an absolute index. Layer semantics follow
AlexeyAB/darknet (``src/parser.c``): conv activation defaults to ``logistic``, ``pad=1`` means
``padding=size/2``, a maxpool's ``padding`` defaults to ``size-1`` (left ``padding//2``, the rest right).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

# section name as written (Darknet's aliases included) -> canonical kind
KINDS = {"net": "net", "network": "net", "convolutional": "convolutional", "conv": "convolutional",
         "route": "route", "shortcut": "shortcut", "upsample": "upsample", "maxpool": "maxpool", "max": "maxpool",
         "dropout": "dropout", "yolo": "yolo"}
ACTIVATIONS = ("linear", "leaky", "relu", "mish", "swish", "logistic")
# keys Darknet reads that change a layer's arithmetic in ways not built here: refuse rather than ignore
UNSUPPORTED = {"convolutional": {"dilation": "1", "antialiasing": "0", "binary": "0", "xnor": "0",
                                 "share_index": None, "deform": "0", "stride_x": None, "stride_y": None},
               "maxpool": {"maxpool_depth": "0", "antialiasing": "0", "stride_x": None, "stride_y": None},
               "upsample": {"scale": "1"}, "shortcut": {"weights_type": "none"}}
_REQUIRED = object()


@dataclass
class Section:
    """One ``[kind]`` block: its options as written, and the line of each for error messages."""

    name: str
    line: int
    source: str
    options: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return KINDS[self.name]

    def where(self, key: str | None = None) -> str:
        line = self.lines.get(key, self.line) if key else self.line
        return f"{self.source}:{line} ([{self.name}])"

    def _get(self, key: str, default, convert, what: str):
        if key not in self.options:
            if default is _REQUIRED:
                raise ConfigError(f"{self.where()}: missing required key '{key}' ({what})")
            return default
        try:
            return convert(self.options[key])
        except ValueError:
            raise ConfigError(f"{self.where(key)}: {key}={self.options[key]} is not {what}") from None

    def integer(self, key: str, default=_REQUIRED) -> int:
        return self._get(key, default, int, "an integer")

    def number(self, key: str, default=_REQUIRED) -> float:
        return self._get(key, default, float, "a number")

    def integers(self, key: str, default=_REQUIRED) -> list[int]:
        return self._get(key, default, lambda v: [int(x) for x in v.split(",") if x.strip()],
                         "a comma-separated list of integers")

    def numbers(self, key: str, default=_REQUIRED) -> list[float]:
        return self._get(key, default, lambda v: [float(x) for x in v.split(",") if x.strip()],
                         "a comma-separated list of numbers")

    def text(self, key: str, default=_REQUIRED) -> str:
        return self._get(key, default, str.strip, "text")


def parse_sections(text: str, source: str = "<cfg>") -> list[Section]:
    """The cfg's sections in order; a malformed line or unknown section is a ConfigError with its line."""
    sections: list[Section] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            name = line[1:-1].strip().lower() if line.endswith("]") else ""
            if not name:
                raise ConfigError(f"{source}:{number}: malformed section header '{raw.strip()}', expected [name]")
            if name not in KINDS:
                raise ConfigError(f"{source}:{number}: unsupported section [{name}]; supported: "
                                  f"{', '.join(f'[{k}]' for k in KINDS)}")
            sections.append(Section(name, number, source))
        elif "=" in line and sections:
            key, value = (part.strip() for part in line.split("=", 1))
            if not key:
                raise ConfigError(f"{source}:{number}: malformed line '{raw.strip()}': empty key before '='")
            sections[-1].options[key] = value
            sections[-1].lines[key] = number
        else:
            where = "a key=value line" if sections else "the first section header ([net])"
            raise ConfigError(f"{source}:{number}: malformed line '{raw.strip()}', expected {where}")
    if not sections or sections[0].kind != "net":
        raise ConfigError(f"{source}: a Darknet cfg starts with a [net] section (width, height, channels)")
    return sections


def format_cfg(sections: list[Section]) -> str:
    """The sections as cfg text (comments are not kept); ``parse_sections`` reads it back unchanged."""
    blocks = []
    for s in sections:
        blocks.append("\n".join([f"[{s.name}]"] + [f"{k}={v}" for k, v in s.options.items()]))
    return "\n\n".join(blocks) + "\n"


@dataclass
class Layer:
    """One Darknet layer with its parameters resolved: ``inputs`` are absolute layer indices (-1: the image)."""

    index: int
    kind: str
    section: Section
    inputs: list[int]
    in_channels: int
    out_channels: int
    stride: int  # total downsampling of this layer's output relative to the network input
    params: dict = field(default_factory=dict)


@dataclass
class Network:
    """A parsed cfg: the ``[net]`` input and the layers, ready to be built as modules."""

    sections: list[Section]
    width: int
    height: int
    channels: int
    layers: list[Layer]

    @property
    def heads(self) -> list[Layer]:
        return [layer for layer in self.layers if layer.kind == "yolo"]


def _reference(sec: Section, key: str, value: int, index: int, layers: list[Layer]) -> int:
    target = index + value if value < 0 else value
    if not 0 <= target < index:
        raise ConfigError(f"{sec.where(key)}: {key} refers to layer {value} (absolute {target}), but layer {index} "
                          f"can only use layers 0..{index - 1}")
    if layers[target].kind == "yolo":
        raise ConfigError(f"{sec.where(key)}: {key} refers to layer {target}, a [yolo] head; refer to a "
                          f"feature layer instead")
    return target


def _check_supported(sec: Section) -> None:
    for key, default in UNSUPPORTED.get(sec.kind, {}).items():
        if key in sec.options and (default is None or sec.options[key].strip().lower() != default):
            raise ConfigError(f"{sec.where(key)}: {key}={sec.options[key]} is not supported by hintdistill's "
                              f"Darknet layers; remove it or use a cfg without it")


def _activation(sec: Section, default: str) -> str:
    act = sec.text("activation", default).lower()
    if act not in ACTIVATIONS:
        raise ConfigError(f"{sec.where('activation')}: activation={act} is not supported; use one of "
                          f"{', '.join(ACTIVATIONS)}")
    return act


def _positive(sec: Section, **values: int) -> None:
    for key, v in values.items():
        if v < 1:
            raise ConfigError(f"{sec.where(key)}: {key}={v} must be at least 1")


def _conv(sec: Section, c: int) -> tuple[dict, int, int]:
    filters, size = sec.integer("filters"), sec.integer("size")
    stride, groups = sec.integer("stride", 1), sec.integer("groups", 1)
    _positive(sec, filters=filters, size=size, stride=stride, groups=groups)
    padding = size // 2 if sec.integer("pad", 0) else sec.integer("padding", 0)
    if c % groups or filters % groups:
        raise ConfigError(f"{sec.where('groups')}: groups={groups} must divide the input channels ({c}) and "
                          f"filters ({filters})")
    p = {"filters": filters, "size": size, "stride": stride, "padding": padding, "groups": groups,
         "batch_normalize": bool(sec.integer("batch_normalize", 0)), "activation": _activation(sec, "logistic")}
    return p, filters, stride


def _route(sec: Section, index: int, layers: list[Layer]) -> tuple[list[int], dict, int]:
    inputs = [_reference(sec, "layers", v, index, layers) for v in sec.integers("layers")]
    if not inputs:
        raise ConfigError(f"{sec.where('layers')}: layers= names no layer")
    groups, group_id = sec.integer("groups", 1), sec.integer("group_id", 0)
    _positive(sec, groups=groups)
    if not 0 <= group_id < groups:
        raise ConfigError(f"{sec.where('group_id')}: group_id={group_id} must be in 0..{groups - 1}")
    for i in inputs:
        if layers[i].out_channels % groups:
            raise ConfigError(f"{sec.where('groups')}: layer {i} has {layers[i].out_channels} channels, not "
                              f"divisible into groups={groups}")
    strides = {layers[i].stride for i in inputs}
    if len(strides) > 1:
        raise ConfigError(f"{sec.where('layers')}: layers {inputs} have different spatial sizes (strides "
                          f"{[layers[i].stride for i in inputs]}); a route concatenates maps of one size")
    return inputs, {"groups": groups, "group_id": group_id}, sum(layers[i].out_channels for i in inputs) // groups


def _yolo(sec: Section, prev: Layer | None) -> dict:
    classes, num = sec.integer("classes"), sec.integer("num", 1)
    _positive(sec, classes=classes, num=num)
    anchors = sec.numbers("anchors")
    if len(anchors) != 2 * num:
        raise ConfigError(f"{sec.where('anchors')}: {len(anchors)} anchor numbers for num={num}; expected "
                          f"{2 * num} (w,h pairs in input pixels)")
    mask = sec.integers("mask", list(range(num)))
    if not mask or any(not 0 <= m < num for m in mask):
        raise ConfigError(f"{sec.where('mask')}: mask={mask} must name anchors in 0..{num - 1}")
    new_coords = sec.integer("new_coords", 0)
    need = len(mask) * (5 + classes)
    if prev is None or prev.kind != "convolutional" or prev.out_channels != need:
        got = "no layer" if prev is None else f"[{prev.section.name}] with {prev.out_channels} channels"
        raise ConfigError(f"{sec.where()}: the layer before a [yolo] head must be a [convolutional] with "
                          f"filters={need} (len(mask) * (5 + classes)); got {got}")
    if new_coords and prev.params["activation"] != "logistic":
        raise ConfigError(f"{prev.section.where('activation')}: a [yolo] head with new_coords=1 reads a "
                          f"logistic conv; set activation=logistic")
    return {"classes": classes, "anchors": [(anchors[2 * m], anchors[2 * m + 1]) for m in mask],
            "scale_x_y": sec.number("scale_x_y", 1.0), "new_coords": bool(new_coords)}


def _layer(sec: Section, index: int, layers: list[Layer], in_c: int) -> Layer:
    prev = layers[-1] if layers else None
    c, stride = (prev.out_channels, prev.stride) if prev else (in_c, 1)
    inputs, params, out_c, out_stride = [index - 1], {}, c, stride
    kind = sec.kind
    if prev is not None and prev.kind == "yolo" and kind != "route":
        raise ConfigError(f"{sec.where()}: a [{sec.name}] cannot follow a [yolo] head directly; start the next "
                          f"branch with a [route]")
    if kind == "convolutional":
        params, out_c, s = _conv(sec, c)
        out_stride = stride * s
    elif kind == "route":
        inputs, params, out_c = _route(sec, index, layers)
        c, out_stride = out_c, layers[inputs[0]].stride
    elif kind == "shortcut":
        sources = [_reference(sec, "from", v, index, layers) for v in sec.integers("from")]
        for i in sources:
            if layers[i].out_channels != c or layers[i].stride != stride:
                raise ConfigError(f"{sec.where('from')}: layer {i} ({layers[i].out_channels} channels, stride "
                                  f"{layers[i].stride}) cannot be added to layer {index - 1} ({c} channels, stride "
                                  f"{stride})")
        inputs, params = [index - 1, *sources], {"activation": _activation(sec, "linear")}
    elif kind == "upsample":
        s = sec.integer("stride", 2)
        _positive(sec, stride=s)
        params, out_stride = {"stride": s}, stride // s
        if stride % s:
            raise ConfigError(f"{sec.where('stride')}: upsampling by {s} a map at stride {stride} from the input")
    elif kind == "maxpool":
        s = sec.integer("stride", 1)
        size = sec.integer("size", s)
        _positive(sec, size=size, stride=s)
        params, out_stride = {"size": size, "stride": s, "padding": sec.integer("padding", size - 1)}, stride * s
    elif kind == "dropout":
        params = {"probability": sec.number("probability", 0.2)}
    elif kind == "yolo":
        params = _yolo(sec, prev)
    else:
        raise ConfigError(f"{sec.where()}: a [{sec.name}] section may only come first")
    return Layer(index, kind, sec, inputs, c, out_c, out_stride, params)


def parse_network(text: str, source: str = "<cfg>") -> Network:
    """Parse and check a cfg; every layer's channels and stride are resolved, references checked."""
    return network_from_sections(parse_sections(text, source))


def network_from_sections(sections: list[Section]) -> Network:
    """Resolve parsed sections (possibly edited, e.g. another class count) into a Network."""
    net = sections[0]
    width, height, channels = net.integer("width"), net.integer("height"), net.integer("channels", 3)
    _positive(net, width=width, height=height, channels=channels)
    layers: list[Layer] = []
    for index, sec in enumerate(sections[1:]):
        _check_supported(sec)
        layers.append(_layer(sec, index, layers, channels))
    heads = [layer for layer in layers if layer.kind == "yolo"]
    if not heads:
        raise ConfigError(f"{net.source}: the cfg has no [yolo] section; hintdistill's darknet models are detectors")
    for head in heads[1:]:
        if head.params["classes"] != heads[0].params["classes"]:
            raise ConfigError(f"{head.section.where('classes')}: classes={head.params['classes']} but the first "
                              f"[yolo] has classes={heads[0].params['classes']}; every head predicts the same classes")
    return Network(sections, width, height, channels, layers)


Shape = tuple[int, int, int]  # (C, H, W)


def layer_shapes(network: Network, height: int, width: int) -> list[tuple[Shape, Shape]]:
    """(input, output) shape of every layer for a ``height`` x ``width`` input, with Darknet's size rules."""
    shapes: list[tuple[Shape, Shape]] = []
    for layer in network.layers:
        ins = [shapes[i][1] if i >= 0 else (network.channels, height, width) for i in layer.inputs]
        h, w = ins[0][1:]
        p = layer.params
        if any(s[1:] != (h, w) for s in ins):
            raise ConfigError(f"{layer.section.where()}: layer {layer.index} combines maps of sizes "
                              f"{[s[1:] for s in ins]} at input {height}x{width}; use an input size divisible "
                              f"by the network's largest stride")
        if layer.kind == "convolutional":
            h, w = ((n + 2 * p["padding"] - p["size"]) // p["stride"] + 1 for n in (h, w))
        elif layer.kind == "maxpool":
            h, w = ((n + p["padding"] - p["size"]) // p["stride"] + 1 for n in (h, w))
        elif layer.kind == "upsample":
            h, w = h * p["stride"], w * p["stride"]
        if h < 1 or w < 1:
            raise ConfigError(f"{layer.section.where()}: layer {layer.index} has no output at input "
                              f"{height}x{width}; use a larger input")
        out = (layer.out_channels, h, w)
        shapes.append((out if layer.kind == "route" else ins[0], out))
    return shapes


def layer_bflops(layer: Layer, out: Shape) -> float:
    """Darknet's count: 2·filters·(channels/groups)·size²·out_h·out_w per conv, size²·C·out pixels per
    maxpool, one add per output element and source per shortcut (as Darknet's layer table prints them)."""
    c, h, w = out
    p = layer.params
    if layer.kind == "convolutional":
        return 2 * c * (layer.in_channels // p["groups"]) * p["size"] ** 2 * h * w / 1e9
    if layer.kind == "maxpool":
        return p["size"] ** 2 * c * h * w / 1e9
    if layer.kind == "shortcut":
        return c * h * w * (len(layer.inputs) - 1) / 1e9
    return 0.0


def _describe(layer: Layer) -> tuple[str, str, str]:
    """(type, filters, size/stride) columns of Darknet's table."""
    p = layer.params
    if layer.kind == "convolutional":
        return "conv", str(p["filters"]), f"{p['size']} x {p['size']}/{p['stride']:>2}"
    if layer.kind == "maxpool":
        return "max", "", f"{p['size']} x {p['size']}/{p['stride']:>2}"
    if layer.kind == "upsample":
        return "upsample", "", f"{p['stride']}x"
    if layer.kind == "route":
        return "route", "", " ".join(map(str, layer.inputs))
    if layer.kind == "shortcut":
        return "shortcut", "", "from " + " ".join(map(str, layer.inputs[1:]))
    return layer.kind, "", ""


def network_table(network: Network, height: int, width: int) -> tuple[str, float]:
    """Darknet's layer table (index, type, filters, size/stride, input -> output, BFLOPs) and the total."""
    rows = [f"{'layer':>5} {'type':<9}{'filters':>7} {'size/strd':>11} {'input':>16}  {'output':>16}"]
    total = 0.0
    for layer, (i, o) in zip(network.layers, layer_shapes(network, height, width), strict=True):
        bf = layer_bflops(layer, o)
        total += bf
        what = _describe(layer)
        dims = [f"{s[2]:>4} x{s[1]:>4} x{s[0]:>5}" for s in (i, o)]
        rows.append(f"{layer.index:>5} {what[0]:<9}{what[1]:>7} {what[2]:>11} {dims[0]:>16} ->"
                    f"{dims[1]:>16}" + (f" {bf:.3f} BF" if bf else ""))
    rows.append(f"Total BFLOPS {total:.3f}")
    return "\n".join(rows), total


def read_cfg(cfg: str | Path) -> tuple[str, str]:
    """(text, source name) of a cfg given as a path, or as the cfg text itself (it contains a newline)."""
    if isinstance(cfg, str) and "\n" in cfg:
        return cfg, "<cfg text>"
    path = Path(cfg).expanduser()
    if not path.is_file():
        raise ConfigError(f"Darknet cfg {path} (resolved: {path.resolve()}) does not exist")
    return path.read_text(encoding="utf-8", errors="replace"), str(path)
