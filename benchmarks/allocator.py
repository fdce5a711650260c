"""The KD step of the fmnist pair with glibc's default malloc thresholds and with ``speed.keep_freed_memory``.

    OMP_NUM_THREADS=1 python benchmarks/allocator.py                      # glibc's defaults
    OMP_NUM_THREADS=1 python benchmarks/allocator.py --keep-freed-memory  # the thresholds `hintdistill run` sets
    python benchmarks/allocator.py --threads 2 [--keep-freed-memory]

The thresholds are per process and cannot be put back, so each configuration is its own process. In it, three
loops train the same student with Hinton KD on the same random data (benchmarks/throughput.py's fmnist_cnn
workload, batch 128): hintdistill's Stage (d), the hand loop (b) and torchdistill (g, where it is installed),
interleaved, one warm-up epoch each, then ``--rounds`` epochs of 8 steps; prints the median ms per step.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from throughput import Workload, hand_variant, hd_variant, td_variant


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep-freed-memory", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=10)
    a = p.parse_args()
    allocator = "glibc defaults"
    if a.keep_freed_memory:
        from hintdistill.engine.memory import keep_freed_memory

        allocator = keep_freed_memory()
    torch.set_num_threads(a.threads)
    wl = Workload("fmnist_cnn", 128, 8)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"hd_kd": hd_variant(wl, "hd_kd", Path(tmp))[0], "hand_kd": hand_variant(wl, "hand_kd")}
        try:
            runs["td_kd"] = td_variant(wl, "td_kd")
        except ImportError:
            pass
        for run in runs.values():
            run()
        times = {k: [] for k in runs}
        for _ in range(a.rounds):
            for k, run in runs.items():
                t0 = time.perf_counter()
                run()
                times[k].append(time.perf_counter() - t0)
    ms = {k: round(statistics.median(v) / wl.steps * 1000, 2) for k, v in times.items()}
    print(f"{allocator}; {a.threads} thread(s): ms per KD step {ms}")


if __name__ == "__main__":
    main()
