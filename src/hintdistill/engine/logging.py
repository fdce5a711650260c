"""Run logs: ``metrics.jsonl`` (one JSON object per epoch) and TensorBoard events, rank 0 only."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .checkpoint import writing

KEPT = "The phase's checkpoint.pt from its last finished epoch is intact (the cut line is dropped on resume)."


class MetricsLog:
    def __init__(self, folder: Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = folder / "metrics.jsonl"
        self.writer = None
        if enabled:
            folder.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self.writer = SummaryWriter(str(folder / "tb"))
                except ImportError:  # tensorboard is a soft dependency of the logs, not of training
                    self.writer = None

    def log(self, record: dict, step: int) -> None:
        if not self.enabled:
            return
        with writing(str(self.path), KEPT), open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and k != "epoch":
                    self.writer.add_scalar(k, v, step)
            self.writer.flush()

    def trim(self, finished_epochs: int) -> None:
        """On resume, drop the records of epochs after the checkpoint (a run killed between logging an epoch and
        saving it would log that epoch twice) and a line cut short by a full disk."""
        if not (self.enabled and self.path.is_file()):
            return
        kept = [r for r in read_records(self.path) if r.get("epoch", 0) <= finished_epochs]
        with writing(str(self.path), KEPT):
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, self.path)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_records(path: Path) -> list[dict]:
    """``read_metrics`` that skips a line which is not a JSON object (cut short by a full disk or a kill)."""
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
