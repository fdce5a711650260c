"""The throughput benchmark's target ratios, paired round by round (benchmarks/throughput.py; its timings
themselves are measured, not tested)."""

import pytest
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
