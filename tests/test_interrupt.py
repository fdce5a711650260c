"""The signal handling of ``hintdistill run`` (issue 12), without training: a first SIGINT/SIGTERM only asks, a
second one stops at once, the handlers are put back, and a loader that dies after the request is told apart."""

import os
import signal

import pytest

from hintdistill.engine.interrupt import STOP, LoaderStopped, batches, stop_at_step_boundary


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_asks_second_stops_at_once(signum):
    before = signal.getsignal(signum)
    with stop_at_step_boundary():
        os.kill(os.getpid(), signum)
        assert STOP.signum == signum  # asked: the stage will stop at its next step boundary
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signum)
    assert signal.getsignal(signum) is before and STOP.signum is None


def dying_loader():
    yield 1
    raise RuntimeError("DataLoader worker (pid 123) exited unexpectedly")


def test_a_loader_that_dies_after_a_stop_request_is_told_apart():
    with pytest.raises(RuntimeError, match="exited unexpectedly"):
        list(batches(dying_loader()))  # no stop asked: the loader's own error
    with stop_at_step_boundary():
        STOP.signum = signal.SIGINT  # as the terminal's Ctrl-C, which also reaches the loader's workers
        got = []
        with pytest.raises(LoaderStopped):
            for item in batches(dying_loader()):
                got.append(item)
        assert got == [1]
    assert list(batches([1, 2, 3])) == [1, 2, 3]
