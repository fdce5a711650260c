"""What every data-loader worker process runs first. A stop (Ctrl-C, which the terminal sends to the whole
foreground process group; SIGTERM from ``kill -- -PGID``, SLURM or a container runtime) is the main process's to
handle: it finishes the step, saves and exits 130/143 (``engine/interrupt.py``). A worker killed by the same signal
would instead make the main process raise "DataLoader worker killed" wherever it happened to be (a test pass, a
training step), so the workers ignore both; they still exit when the main process does (PyTorch's watchdog)."""

from __future__ import annotations

import signal


def ignore_stop_signals(_worker_id: int) -> None:
    """``worker_init_fn`` of every DataLoader the package builds (module-level, so spawned workers can load it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
