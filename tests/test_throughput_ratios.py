"""The throughput benchmark's target ratios, paired round by round (benchmarks/throughput.py; its timings
themselves are measured, not tested)."""

import pytest
import torch
from conftest import load_script


def test_paired_ratios_cancel_a_load_change_between_rounds():
    bench = load_script("benchmarks/throughput.py")
    # the machine slows down 3x in round 2: every variant's time triples; hintdistill is 5% slower in each round
    hand = [1.0, 3.0, 1.0, 1.0]
    times = {"hand_student": hand, "hd_student": [1.05 * t for t in hand], "aa_control": [1.0, 1.0, 3.0, 1.0]}
    paired = bench.paired_ratios(times)
    assert paired["(c)/(a)"]["median"] == pytest.approx(1 / 1.05, abs=1e-3)
    assert paired["(c)/(a)"]["q1"] == paired["(c)/(a)"]["q3"] == paired["(c)/(a)"]["median"]
    assert paired["A/A"]["target"] is None and paired["A/A"]["q1"] < 1 < paired["A/A"]["q3"] + 1e-9
    assert "(d)/(b)" not in paired  # variants that did not run have no target row
    rows = [{"workload": "w", "variant": "hand_student", "images_per_s": 100.0},
            {"workload": "w", "variant": "hd_student", "images_per_s": 95.2,
             "paired": {"(c)/(a)": paired["(c)/(a)"]}}]
    line = [x for x in bench.target_table(rows) if "(c)/(a)" in x][0]
    assert "| 0.952 |" in line and "0.952 (0.952-0.952)" in line and line.endswith("| 0.95 | yes |")


def test_hintdistill_variants_train_the_students_batchnorms_in_every_round(tmp_path):
    # as the hand loop does: a round past the stage's last epoch would put them in eval mode (a cheaper step)
    bench = load_script("benchmarks/throughput.py")
    wl = bench.Workload("fmnist_cnn", 8, 2)
    for kind in ("hd_student", "hd_kd", "hd_kd_cached", "hd_hint"):
        run, stage = bench.hd_variant(wl, kind, tmp_path)
        for _ in range(3):
            run()
        bns = [m for m in stage.student.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert bns and all(m.training for m in bns), kind
        counts = {int(m.num_batches_tracked) for m in bns}  # the hint stage stops early: layers above it do not run
        assert counts == {3 * 2} if kind != "hd_hint" else counts == {0, 3 * 2}, kind
