"""SIGTERM to a run's whole process group (``kill -- -PGID``, a batch scheduler, a container stop) reaches the data
loader's worker processes too. The run must still stop the documented way: save at the step boundary, say how to
resume, exit 143; not end in "DataLoader worker killed by signal" reported as an internal error."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_detection_recipe import needs_bccd, tiny_recipe

from hintdistill.engine.interrupt import STOP, stop_at_step_boundary

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.mark.skipif(not hasattr(signal, "SIGCHLD"), reason="no SIGCHLD on this platform")
def test_after_a_stop_request_a_dead_worker_is_not_raised_at_random_and_the_handler_comes_back():
    before = signal.getsignal(signal.SIGCHLD)
    with stop_at_step_boundary():
        assert signal.getsignal(signal.SIGCHLD) is before  # untouched until a stop is asked
        os.kill(os.getpid(), signal.SIGTERM)
        assert STOP.signum == signal.SIGTERM and signal.getsignal(signal.SIGCHLD) is not before
    assert signal.getsignal(signal.SIGCHLD) is before  # PyTorch's handler is back for later loaders


@needs_bccd
@pytest.mark.parametrize("delay", [0.0, 0.5])
def test_sigterm_to_the_process_group_with_loader_workers_saves_and_exits_143(tmp_path, delay):
    # 2 training steps an epoch and a long test pass (72 images, 2 a batch): the signal lands in a training step or
    # in a test pass; either way the workers die with the main process's request
    tree = tiny_recipe(tmp_path, [{"type": "detection"}], workers=2, train_subset=6, test_subset=72)
    tree["eval_batch_size"] = 2
    tree["teacher"]["train"] = dict(tree["teacher"]["train"], epochs=4, eval_every=1)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tree))
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "hintdistill.cli", "run", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("[teacher/train] epoch 1/4"):
            time.sleep(delay)  # 0: in epoch 2's training steps; 0.5 s: mostly in its test pass
            os.killpg(proc.pid, signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=120)
    text = "".join(seen) + rest
    assert proc.returncode == 143, text
    assert "stopped by SIGTERM" in text and "Rerun the same command" in text, text
    assert "internal error" not in text and "killed by signal" not in text, text
    assert (tmp_path / "run/teacher/checkpoint.pt").is_file()
