"""report.html: written by every `hintdistill run`, self-contained, and it loads cleanly in a real browser."""

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from test_viz import BCCD, classification_recipe, make_detection_run

from hintdistill.config import recipe_from_dict
from hintdistill.engine.checkpoint import safe_load
from hintdistill.engine.pipeline import run_recipe
from hintdistill.report import write_report

torch.set_num_threads(1)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Marks the page's state once it has loaded: JS and resource errors, every image's natural size, table rows.
CHECK_SCRIPT = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || (e.target && e.target.src) || 'error')),
                        true);
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const out = {images: imgs.length, broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
               rows: [...document.querySelectorAll('table#summary tbody tr')].map(r => r.cells[0].textContent),
               problems: document.querySelectorAll('#problems li').length, errors: window.__errors};
  const pre = document.createElement('pre'); pre.id = 'loadcheck'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def browser_check(page: Path, tmp_path: Path) -> dict:
    """Open a copy of ``page`` (with CHECK_SCRIPT) in headless Chromium; return what the script saw."""
    probe = tmp_path / f"check_{page.parent.name}.html"
    probe.write_text(page.read_text().replace("<head>", "<head>" + CHECK_SCRIPT, 1))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=10000", "--dump-dom",
           probe.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="loadcheck">(.*?)</pre>', dom, re.S)
    assert found, f"the page did not finish loading in Chromium; DOM starts: {dom[:300]!r}"
    return json.loads(html.unescape(found.group(1)))


def embedded_images(page: Path) -> list[str]:
    return re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+" alt="([^"]+)"', page.read_text())


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "cls"
    run_recipe(recipe_from_dict(classification_recipe(out)), log=lambda *a: None)
    return out


def test_every_run_writes_a_self_contained_report(cls_run):
    page = cls_run / "report.html"  # written by the pipeline itself at the end of the run
    text = page.read_text()
    assert embedded_images(page) == ["curves", "features_0_features.stage2__features.stage2", "soft_targets",
                                     "disagreements"]
    assert sorted(p.stem for p in (cls_run / "figures").glob("*.png")) == sorted(embedded_images(page))
    assert 'id="problems"' not in text
    for needle in ("test acc", "teacher", "baseline", "distilled", "hint features.stage2 ← features.stage2",
                   "name: tiny_fitnets"):
        assert needle in text
    assert not re.search(r'(src|href)="(?!data:)', text), "the page must not load anything from outside"
    # the untrained-adapter note appears exactly when the checkpoint kept no adapter weights
    kept = "stage_terms" in safe_load(cls_run / "distilled" / "checkpoint.pt")
    assert ("untrained" in text) != kept


def test_report_names_what_could_not_be_drawn(cls_run, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(cls_run, broken, ignore=shutil.ignore_patterns("report.html", "figures"))
    (broken / "summary.json").unlink()
    (broken / "baseline" / "metrics.jsonl").write_text("{not json\n")
    tree = yaml.safe_load((broken / "recipe.yaml").read_text())
    tree["distill"][0]["terms"][0]["hint"] = "features.nothing"
    (broken / "recipe.yaml").write_text(yaml.safe_dump(tree))
    text = write_report(broken).read_text()
    problems = [html.unescape(p) for p in re.findall(r"<li>(.*?)</li>", text.split('id="problems"')[1])]
    assert len(problems) == 3
    assert "section 'Results'" in problems[0] and "summary.json is missing" in problems[0]
    assert "figure 'curves'" in problems[1] and "JSONDecodeError" in problems[1]
    assert "section 'Feature maps and detections'" in problems[2]
    assert "no module named 'features.nothing'" in problems[2] and "features.stage2" in problems[2]
    assert "<pre>" in text  # the recipe is still shown


@pytest.fixture(scope="module")
def det_report(tmp_path_factory) -> Path | None:
    if not BCCD.is_dir():
        return None
    return write_report(make_detection_run(tmp_path_factory.mktemp("runs") / "det"))


@pytest.mark.skipif(not BCCD.is_dir(), reason=f"BCCD VOC folder not found at {BCCD}")
def test_detection_report_has_neck_levels_and_overlays(det_report):
    page = det_report
    assert embedded_images(page) == ["curves"] + [f"features_{i}_neck.p{i + 3}__neck.p{i + 3}" for i in range(3)] + [
        "detections"]
    text = page.read_text()
    assert "mAP@0.5" in text and 'id="problems"' not in text and "untrained" not in text


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_report_loads_in_headless_chromium(cls_run, det_report, tmp_path):
    for page in [cls_run / "report.html"] + ([det_report] if det_report else []):
        seen = browser_check(page, tmp_path)
        assert seen["errors"] == [] and seen["broken"] == [], seen
        assert seen["images"] == len(embedded_images(page)) >= 2
        assert seen["rows"] == ["teacher", "baseline", "distilled"]
        assert seen["problems"] == 0
