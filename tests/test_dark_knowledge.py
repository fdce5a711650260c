"""The report's dark-knowledge figures: teacher vs distilled student softmax(z / T) and their disagreements."""

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_RECIPE, needs_fashion

from hintdistill import dark_knowledge as dk
from hintdistill.config import recipe_from_dict
from hintdistill.data.classification import STATS, load_tensors
from hintdistill.engine.checkpoint import load_model
from hintdistill.engine.pipeline import run_recipe
from hintdistill.figures import plt
from hintdistill.run_folder import Run

torch.set_num_threads(1)
T = 3.0  # not the kd term's default (4), so the report must read it from the recipe


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory):
    tree = copy.deepcopy(TINY_RECIPE)
    tree["output_dir"] = str(tmp_path_factory.mktemp("runs") / "tiny")
    tree["distill"][0]["terms"][1]["temperature"] = T
    run_recipe(recipe_from_dict(tree), log=lambda *a: None)
    return Run(tree["output_dir"])


def test_temperature_comes_from_the_last_kd_or_dkd_term():
    tree = copy.deepcopy(TINY_RECIPE)
    tree["distill"] = [{"name": "hint", "terms": [{"type": "hint", "hint": "a", "guided": "b"}]},
                       {"name": "dkd", "terms": [{"type": "ce"}, {"type": "dkd", "temperature": 2.5}]}]
    assert dk.kd_temperature(recipe_from_dict(tree))[:2] == (2.5, [0])
    tree["distill"] = tree["distill"][:1]
    t, teachers, source = dk.kd_temperature(recipe_from_dict(tree))
    assert (t, teachers) == (1.0, None) and "no kd or dkd term" in source


def hand_softmax(logits: torch.Tensor, t: float) -> torch.Tensor:
    e = torch.exp(logits / t - (logits / t).max(1, keepdim=True).values)
    return e / e.sum(1, keepdim=True)


@needs_fashion
def test_bars_are_softmax_of_the_models_logits_at_t_and_1(kd_run):
    pred = dk.class_predictions(kd_run)
    assert pred.temperature == T and "stage 'kd'" in pred.source
    # the models, run here on the first test images, independently of the report's code
    images, labels = load_tensors("fashion_mnist", "test")
    mean, std = STATS["fashion_mnist"]
    x = (images[:256].float() / 255 - mean[0]) / std[0]
    teacher, student = (load_model(kd_run.folder / p / "model.pt")[0].eval() for p in ("teacher", "distilled"))
    with torch.no_grad():
        zt, zs = teacher(x), student(x)
    assert torch.equal(pred.labels, labels[:256])
    differ = (zt.argmax(1) != zs.argmax(1)).nonzero().flatten().tolist()
    assert differ and pred.disagreements().tolist() == differ
    shown = dk.chosen_examples(pred)
    assert len(shown) == 6 and set(differ[:3]) <= set(shown) and shown == sorted(shown)
    fig = dk.soft_targets_figure(pred, shown)
    axes = fig.get_axes()
    for row, i in enumerate(shown):
        for col, t in ((1, T), (2, 1.0)):
            ax = axes[3 * row + col]
            assert ax.get_title() == f"T = {t:g}"
            bars = {c.get_label(): [b.get_height() for b in c] for c in ax.containers}
            assert bars["teacher"] == pytest.approx(hand_softmax(zt[i:i + 1], t)[0].tolist(), abs=1e-5)
            assert bars["distilled student"] == pytest.approx(hand_softmax(zs[i:i + 1], t)[0].tolist(), abs=1e-5)
    soft = hand_softmax(zt[shown], T)
    assert (soft.max(1).values < hand_softmax(zt[shown], 1.0).max(1).values).all()  # T > 1 softens
    plt.close(fig)
    fig = dk.disagreement_figure(pred, limit=4)
    titles = [ax.get_title() for ax in fig.get_axes() if ax.has_data()]
    i = differ[0]
    pt, ps = F.softmax(zt[i], 0), F.softmax(zs[i], 0)
    assert len(titles) == min(4, len(differ))
    assert f"teacher {pred.name(int(pt.argmax()))} {pt.max():.2f}" in titles[0]
    assert f"student {pred.name(int(ps.argmax()))} {ps.max():.2f}" in titles[0]
    assert f"disagree on {len(differ)} of 256 test images" in fig._suptitle.get_text()
    plt.close(fig)


@needs_fashion
def test_report_html_holds_both_figures_and_the_count(kd_run):
    text = (kd_run.folder / "report.html").read_text()
    names = re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+" alt="([^"]+)"', text)
    assert {"soft_targets", "disagreements"} <= set(names)
    assert (kd_run.folder / "figures" / "soft_targets.png").is_file()
    n = len(dk.class_predictions(kd_run).disagreements())
    assert f"T = {T:g}, the kd term of stage &#x27;kd&#x27;" in text
    assert f"disagree on {n} of 256 test images" in text and 'id="problems"' not in text
