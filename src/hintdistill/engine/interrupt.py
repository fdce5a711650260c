"""Ctrl-C (SIGINT) and SIGTERM during ``hintdistill run`` (issue 12): the signal only asks; the stage finishes its
current step, saves a checkpoint at that step boundary and raises ``Interrupted``, which the command line turns
into a message saying how to resume and exit 128 + the signal (130, 143). A second signal stops at once."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

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

    def ask(signum, _frame):
        if STOP.signum is not None:  # asked twice: the user does not want to wait for the step to finish
            raise KeyboardInterrupt
        STOP.signum = signum

    previous = {s: signal.signal(s, ask) for s in SIGNALS}
    STOP.signum = None
    try:
        yield
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


def batches(loader: Iterable) -> Iterator:
    """``loader``'s batches; a loader error after a stop request (a worker killed by the terminal's Ctrl-C)
    becomes ``LoaderStopped``, so the stage still saves at the last step boundary."""
    iterator = iter(loader)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except Exception as e:
            if STOP.signum is None:
                raise
            raise LoaderStopped from e
        yield item
