"""Property-based tests (hypothesis): the recipe loader, the VOC XML reader and the checkpoint loader, fed random
and mutated input, either succeed or raise one of the clear error classes (HintDistillError: ConfigError,
DataError, CheckpointError...), never anything else.

Every test is derandomized (the same examples on every run) and bounded in examples; the counts are in
RELIABILITY.md. The examples are generated, so each test can fail: a reader that lets a ValueError or
KeyError through fails it, and hypothesis prints the smallest input that does so.
"""

import atexit
import copy
import io
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from hintdistill.config import Recipe, load_recipe, parse_overrides, recipe_from_dict
from hintdistill.data.voc import VOCDetection
from hintdistill.engine.checkpoint import load_model, safe_load, save_model
from hintdistill.errors import CheckpointError, ConfigError, DataError, HintDistillError
from hintdistill.models import build_model

# the properties are about exceptions; the readers' warnings (skipped boxes, duplicate zip names) are expected
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None)
SMALL = settings(FUZZ, max_examples=100)
WORK = Path(tempfile.mkdtemp(prefix="hintdistill-fuzz-"))  # module-wide: hypothesis examples cannot take tmp_path
atexit.register(shutil.rmtree, WORK, ignore_errors=True)

# -- values a recipe could hold, and some it should not ------------------------------------------------------
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
                    st.sampled_from(["ce", "kd", "hint", "cnn", "mnist", "voc", "sgd", "cosine", "-1", "1e9"]))
keys = st.one_of(st.sampled_from(["name", "type", "data", "teacher", "teachers", "student", "distill", "terms",
                                  "weight", "epochs", "args", "classes", "hint", "guided", "train", "lr"]),
                 st.text(max_size=8), st.integers(), st.booleans())
trees = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(keys, inner, max_size=5)), max_leaves=25)


def check_recipe(run) -> None:
    try:
        assert isinstance(run(), Recipe)
    except ConfigError:
        pass


@FUZZ
@given(tree=trees)
def test_random_documents_validate_or_give_config_error(tree):
    check_recipe(lambda: recipe_from_dict(copy.deepcopy(tree)))


@FUZZ
@given(content=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                         trees.map(lambda t: yaml.safe_dump(t, allow_unicode=True).encode())))
def test_random_files_load_or_give_config_error(content):
    path = WORK / "random.yaml"
    path.write_bytes(content)
    check_recipe(lambda: load_recipe(path))


def paths_into(tree, prefix=()):
    """Every (path, node) in a parsed recipe, the root included."""
    yield prefix, tree
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else []
    for k, v in items:
        yield from paths_into(v, (*prefix, k))


@FUZZ
@given(data=st.data())
def test_mutated_shipped_recipes_validate_or_give_config_error(data):
    source = data.draw(st.sampled_from(RECIPES), label="recipe")
    tree = yaml.safe_load(source.read_text())
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        path, node = data.draw(st.sampled_from(list(paths_into(tree))), label="at")
        action = data.draw(st.sampled_from(["replace", "delete", "add"]), label="action")
        if not path or action == "add":
            if isinstance(node, dict):
                node[data.draw(keys)] = data.draw(trees)
            elif isinstance(node, list):
                node.append(data.draw(trees))
            continue
        parent = tree
        for k in path[:-1]:
            parent = parent[k]
        if action == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(trees)
    check_recipe(lambda: recipe_from_dict(tree, source=source.name))


@FUZZ
@given(data=st.data())
def test_text_mutations_of_shipped_recipes_load_or_give_config_error(data):
    text = data.draw(st.sampled_from(RECIPES), label="recipe").read_bytes()
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        at = data.draw(st.integers(0, len(text)), label="offset")
        cut = data.draw(st.integers(0, 8), label="deleted")
        text = text[:at] + data.draw(st.binary(max_size=6) | st.sampled_from([b":", b"-", b"[", b"&a", b"*a", b"\n  "]),
                                     label="inserted") + text[at + cut:]
    path = WORK / "mutated.yaml"
    path.write_bytes(text)
    check_recipe(lambda: load_recipe(path))


@FUZZ
@given(overrides=st.lists(st.text(max_size=20) | st.builds("{}={}".format, st.sampled_from(
    ["seed", "distill.0.epochs", "data", "teacher.args", "distill.9", "x.y.z"]), st.text(max_size=12)), max_size=3))
def test_random_overrides_apply_or_give_config_error(overrides):
    tree = yaml.safe_load(RECIPES[0].read_text())
    try:
        parse_overrides(overrides)
    except ConfigError:
        return
    check_recipe(lambda: recipe_from_dict(tree, overrides))


# -- the VOC XML reader ------------------------------------------------------------------------------------
VOC = WORK / "voc"
for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
    (VOC / sub).mkdir(parents=True, exist_ok=True)
Image.new("RGB", (48, 32), (90, 120, 30)).save(VOC / "JPEGImages/a.jpg")
(VOC / "ImageSets/Main/train.txt").write_text("a\n")
GOOD_XML = ("<annotation><filename>a.jpg</filename><size><width>48</width><height>32</height></size>"
            "<object><name>dog</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>30</xmax><ymax>20</ymax></bndbox>"
            "</object><object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax>"
            "</bndbox></object></annotation>")
numbers = st.one_of(st.integers(-100, 200).map(str), st.floats().map(str), st.text(max_size=5),
                    st.sampled_from(["nan", "inf", "-inf", "1e400", "", " 7 "]))
xml_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12).map(
    lambda s: s.replace("&", "&amp;").replace("<", "&lt;"))


@st.composite
def annotations(draw) -> bytes:
    objects = "".join(
        f"<object><name>{draw(st.sampled_from(['dog', 'Dog', 'cat', '']) | xml_text)}</name><bndbox>"
        + "".join(f"<{k}>{draw(numbers)}</{k}>" for k in draw(st.permutations(["xmin", "ymin", "xmax", "ymax"])))
        + "</bndbox></object>" for _ in range(draw(st.integers(0, 4))))
    filename = draw(st.sampled_from(["a.jpg", "b.jpg", "", "../a.jpg", "/etc/passwd", "JPEGImages"]) | xml_text)
    size = f"<size><width>{draw(numbers)}</width><height>{draw(numbers)}</height></size>"
    return f"<annotation><filename>{filename}</filename>{size}{objects}</annotation>".encode()


@st.composite
def mutated_xml(draw) -> bytes:
    text = GOOD_XML.encode()
    for _ in range(draw(st.integers(1, 4))):
        at, cut = draw(st.integers(0, len(text))), draw(st.integers(0, 10))
        text = text[:at] + draw(st.binary(max_size=4) | st.sampled_from([b"<", b"</object>", b"&x;", b"nan"])) + text[at + cut:]
    return text


def read_voc(xml: bytes, classes=None) -> None:
    (VOC / "Annotations/a.xml").write_bytes(xml)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = VOCDetection(VOC, image_size=32, classes=classes)
    except DataError:
        return
    for record in ds.records:  # whatever was kept is usable: finite boxes inside the image, known labels
        assert torch.isfinite(record.boxes).all() and (record.boxes[:, 2:] > record.boxes[:, :2]).all()
        assert ((record.labels >= 0) & (record.labels < len(ds.classes))).all()
        assert record.image.parent == VOC / "JPEGImages"
    image, target = ds[0]
    assert image.shape == (3, 32, 32) and len(target["boxes"]) == len(target["labels"])


@FUZZ
@given(xml=annotations() | mutated_xml() | st.binary(max_size=200))
def test_voc_reader_on_random_and_mutated_xml(xml):
    read_voc(xml)


@SMALL
@given(xml=annotations() | mutated_xml())
def test_voc_reader_with_given_classes(xml):
    read_voc(xml, classes=["cat", "dog"])


# -- the checkpoint loader -----------------------------------------------------------------------------------
SPEC = {"name": "mlp", "args": {"in_features": 4, "hidden": [3], "num_classes": 2}}
MODEL_PT = WORK / "model.pt"
torch.manual_seed(0)
save_model(build_model(SPEC["name"], SPEC["args"]), SPEC, MODEL_PT)
MODEL_BYTES = MODEL_PT.read_bytes()
with zipfile.ZipFile(MODEL_PT) as z:
    MEMBERS = [(info.filename, z.read(info.filename)) for info in z.infolist()]


def load_any(content: bytes) -> None:
    path = WORK / "fuzz.pt"
    path.write_bytes(content)
    try:
        safe_load(path)
        load_model(path)
    except HintDistillError:
        pass


@FUZZ
@given(content=st.binary(max_size=400) | st.integers(0, len(MODEL_BYTES)).map(lambda n: MODEL_BYTES[:n]))
def test_random_and_truncated_checkpoints(content):
    if content == MODEL_BYTES:
        return
    path = WORK / "fuzz.pt"
    path.write_bytes(content)
    try:
        safe_load(path)
        raise AssertionError("a damaged file was read")
    except CheckpointError as e:
        assert str(path) in str(e)


@st.composite
def rezipped(draw) -> bytes:
    """model.pt's zip with members dropped, renamed, cut short or replaced by random bytes."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in MEMBERS:
            action = draw(st.sampled_from(["keep", "keep", "drop", "rename", "cut", "random"]))
            if action == "drop":
                continue
            if action == "rename":
                name = name.rsplit("/", 1)[0] + "/" + draw(st.sampled_from(["x", "data.pkl", "0", "version"]))
            elif action == "cut":
                data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
            elif action == "random":
                data = draw(st.binary(max_size=64))
            z.writestr(name, data)
    return out.getvalue()


@FUZZ
@given(content=rezipped())
def test_zip_archives_with_wrong_members(content):
    load_any(content)


tensors = st.builds(torch.zeros, st.lists(st.integers(0, 3), max_size=3).map(tuple))
contents = st.recursive(scalars | tensors, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=12) | st.sampled_from(["spec", "state_dict", "name", "args",
                                                                                    "student", "classifier.weight"]),
                                          inner, max_size=4), max_leaves=12)


@SMALL
@given(content=contents | st.fixed_dictionaries({"spec": contents | st.just(SPEC), "state_dict": contents}))
def test_well_formed_files_with_foreign_contents(content):
    buffer = io.BytesIO()
    torch.save(content, buffer)
    load_any(buffer.getvalue())


# -- the YOLO-txt label reader --------------------------------------------------------------------------------------
NUMBERS = st.sampled_from(["0", "1", "2", "3", "-1", "0.5", "0.25", "1.0", "1.2", "-0.1", "0", "nan", "inf", "1e-9",
                           "2.5", "x", "", "0.999", "1.004", "1.006"])
LINES = st.lists(NUMBERS, min_size=0, max_size=7).map(" ".join) | st.text(max_size=40)
LABEL_FILES = (st.lists(LINES, max_size=8).map(lambda ls: "\n".join(ls).encode("utf-8", "surrogatepass"))
               | st.binary(max_size=200))


@FUZZ
@given(content=LABEL_FILES)
def test_yolo_label_reader_keeps_only_valid_boxes(content):
    """Any label file: boxes inside the image with a known class, every other line counted, nothing raised."""
    from hintdistill.data.voc import Issues
    from hintdistill.data.yolo_txt import read_labels

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "img.txt"
        path.write_bytes(content)
        issues = Issues("fuzz")
        boxes, labels = read_labels(path, 640, 480, 3, issues)
    assert boxes.shape == (len(labels), 4) and torch.isfinite(boxes).all()
    assert ((labels >= 0) & (labels < 3)).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 640).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 3] <= 480).all() and (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    counted = sum(len(v) for v in issues.items.values())
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:  # the whole file is reported unreadable, its image used as background
        assert len(labels) == 0 and counted == 1
        return
    assert counted + len(labels) == sum(1 for line in text.splitlines() if line.strip())  # each line: box or issue
