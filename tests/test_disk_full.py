"""A full disk while appending metrics.jsonl or writing the summary (issue 12): exit 2 with a message that says
what is intact, the previous checkpoint intact, and the same command resumes (a writer patched to fail)."""

import errno
import os

import pytest
import yaml
from conftest import needs_fashion

import hintdistill.engine.logging as run_logs
import hintdistill.report
from hintdistill.cli import main
from hintdistill.engine.checkpoint import safe_load
from hintdistill.engine.logging import read_metrics

pytestmark = needs_fashion


@pytest.fixture
def recipe_file(tiny_recipe, tmp_path, monkeypatch):
    monkeypatch.setattr(hintdistill.report, "write_report", lambda run_dir: run_dir / "report.html")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe))
    return path


def full_disk(*_args):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_while_appending_metrics(recipe_file, tmp_path, monkeypatch, capsys):
    real_open = open

    class HalfLine:
        """Writes half of the distilled phase's second record, then finds the disk full."""

        def __init__(self, path, mode):
            self.file = real_open(path, mode)

        def write(self, text):
            if '"phase": "distilled"' in text and '"epoch": 2' in text:
                self.file.write(text[: len(text) // 2])
                raise full_disk()
            return self.file.write(text)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr(run_logs, "open", HalfLine, raising=False)
    assert main(["run", str(recipe_file)]) == 2
    err = capsys.readouterr().err
    metrics = tmp_path / "run" / "distilled" / "metrics.jsonl"
    assert err.startswith(f"error: cannot write {metrics}: the disk is full (No space left on device). The phase's "
                          "checkpoint.pt from its last finished epoch is intact") and "Traceback" not in err
    assert "rerun the same command to resume" in err
    state = safe_load(tmp_path / "run" / "distilled" / "checkpoint.pt")
    assert (state["epoch"], state["done"]) == (1, False)
    with pytest.raises(ValueError):
        read_metrics(metrics)  # the cut line is there...

    monkeypatch.undo()
    monkeypatch.setattr(hintdistill.report, "write_report", lambda run_dir: run_dir / "report.html")
    assert main(["run", str(recipe_file)]) == 0
    assert [r["epoch"] for r in read_metrics(metrics)] == [1, 2]  # ...and dropped on resume


def test_full_disk_while_writing_the_summary(recipe_file, tmp_path, monkeypatch, capsys):
    def no_space(summary, run_dir, *args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(run_dir / "summary.json"))

    monkeypatch.setattr(hintdistill.report, "write_summary", no_space)
    assert main(["run", str(recipe_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {tmp_path / 'run' / 'summary.json'}: the disk is full")
    assert "Every checkpoint.pt and model.pt written so far is intact" in err and "Traceback" not in err
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").glob("*/model.pt")}
    assert len(stamps) == 2 and all(safe_load(p.with_name("checkpoint.pt"))["done"] for p in stamps)

    monkeypatch.undo()
    monkeypatch.setattr(hintdistill.report, "write_report", lambda run_dir: run_dir / "report.html")
    assert main(["run", str(recipe_file)]) == 0
    assert "finished earlier" in capsys.readouterr().out
    assert (tmp_path / "run" / "summary.md").is_file()
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing trained or rewritten again
