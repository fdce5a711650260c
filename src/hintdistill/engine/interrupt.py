"""Ctrl-C (SIGINT) and SIGTERM during ``hintdistill run`` (issue 12): the signal only asks; the stage finishes its
current step, saves a checkpoint at that step boundary and raises ``Interrupted``, which the command line turns
into a message saying how to resume and exit 128 + the signal (130, 143). A second signal stops at once.

The data-loader workers get the same signal when the whole process group is signalled (Ctrl-C on a terminal,
``kill -- -PGID``, a batch scheduler). PyTorch's SIGCHLD handler would then raise "DataLoader worker killed by
signal" at whatever line the main process was running (a convolution, a test pass). After a stop request that
handler is set aside: the loader reports its dead worker at its next batch, where ``batches`` (training) and
``stop_may_end_it`` (test passes) turn it into ``LoaderStopped``, and the stage saves at its last boundary. Any
other failure that follows a stop request ends the run as stopped, keeping the last saved checkpoint."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

from ..errors import HintDistillError, Interrupted
from .distributed import Dist, all_reduce_sum

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """The signal received (None until one is): read by the stages at every step boundary."""

    signum: int | None = None


STOP = StopRequest()


class LoaderStopped(Exception):
    """The data loader failed after a stop was requested (Ctrl-C reaches its worker processes too)."""


@contextmanager
def stop_at_step_boundary() -> Iterator[None]:
    """Install the handlers for the duration of a run (main thread only: elsewhere signals stay as they were)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    child = getattr(signal, "SIGCHLD", None)  # not on Windows
    previous = {}

    def ask(signum, _frame):
        if STOP.signum is not None:  # asked twice: the user does not want to wait for the step to finish
            raise KeyboardInterrupt
        STOP.signum = signum
        if child is not None:  # a worker killed by this same signal is expected now, not an error to raise anywhere
            previous.setdefault(child, signal.signal(child, lambda *_: None))

    previous.update({s: signal.signal(s, ask) for s in SIGNALS})
    STOP.signum = None
    try:
        yield
    except (Interrupted, HintDistillError):  # already the run's own ending
        raise
    except Exception as e:
        if STOP.signum is None:
            raise
        name = signal.Signals(STOP.signum).name
        raise Interrupted(STOP.signum, f"stopped by {name} before the next step boundary ({type(e).__name__}: {e}); "
                                       f"the last saved checkpoint is kept") from e
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        STOP.signum = None


def stop_requested(d: Dist, device: torch.device) -> int | None:
    """The signal to stop on, agreed by every process under DDP (or they would stop at different steps)."""
    if not d.enabled:
        return STOP.signum
    flag = all_reduce_sum(torch.tensor([float(STOP.signum is not None)], device=device), d)
    return STOP.signum or (signal.SIGTERM if float(flag) > 0 else None)


@contextmanager
def stop_may_end_it() -> Iterator[None]:
    """Around a loader's next batch or a test pass: a failure after a stop request (a worker killed by the same
    signal) becomes ``LoaderStopped``, for the stage to save at its last boundary."""
    try:
        yield
    except LoaderStopped:
        raise
    except Exception as e:
        if STOP.signum is None:
            raise
        raise LoaderStopped from e


def batches(loader: Iterable) -> Iterator:
    """``loader``'s batches; a loader error after a stop request (a worker killed by the terminal's Ctrl-C)
    becomes ``LoaderStopped``, so the stage still saves at the last step boundary."""
    iterator = iter(loader)
    while True:
        with stop_may_end_it():
            item = next(iterator, _END)
        if item is _END:
            return
        yield item


_END = object()
