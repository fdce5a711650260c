"""Say so when a stage is not learning, instead of training on silently for hours.

Two signs, each reported once per stage: the training loss has not fallen by ``min_drop`` (2 %) over
``patience`` (5) epochs, or a detector's test mAP@0.5 is still under ``near_zero`` (0.01) a third of the way
through (and after at least ``patience`` epochs). The loss rule looks at the first half of the stage only
(later, a flat loss is a run converging: a 30-epoch raccoon student's loss fell by under 2% over its last 5
cosine epochs) and ignores the warm-up's epochs, where the loss often rises as the rate ramps up (a YOLO
teacher with mosaic: 0.386 in epoch 1, 0.38-0.42 through epoch 6, then learning normally). It also keeps quiet
while the test score (mAP@0.5, or accuracy) rose by ``min_rise`` (0.02) or more at its last test: a 60-epoch
raccoon baseline's loss wandered 0.241-0.252 over epochs 15-19 while its mAP@0.5 climbed 0.17 -> 0.29 -> 0.41
(ending at 0.63), and "not learning" would have been wrong. Seen on the raccoon
set: at BCCD's learning rate (0.01) the loss stayed flat (0.37 -> 0.39) for 20 epochs and mAP@0.5 ended at
0.035; at 0.04 the same model learned.
"""

from __future__ import annotations


class LearningWatch:
    """Feed it every epoch's mean training loss and test metrics; it returns a warning or None."""

    def __init__(self, label: str, epochs: int, lr: float, patience: int = 5, min_drop: float = 0.02,
                 near_zero: float = 0.01, warmup: int = 0, min_rise: float = 0.02):
        self.label, self.epochs, self.lr, self.warmup = label, epochs, lr, warmup
        self.patience, self.min_drop, self.near_zero, self.min_rise = patience, min_drop, near_zero, min_rise
        self.seen = 0  # epochs fed so far
        self.losses: list[float] = []  # the training losses after the warm-up
        self.scores: list[float] = []  # the test scores (mAP@0.5 or accuracy), one per test
        self.warned: set[str] = set()

    def update(self, train_loss: float | None, metrics: dict | None) -> str | None:
        """The warning for this epoch, if one is due (each kind at most once)."""
        self.seen += 1
        if train_loss is not None and self.seen > self.warmup:
            self.losses.append(float(train_loss))
        score = (metrics or {}).get("map50", (metrics or {}).get("accuracy"))
        if score is not None:
            self.scores.append(float(score))
        return self._flat_loss() or self._no_detections(metrics)

    def _flat_loss(self) -> str | None:
        n = len(self.losses)
        if "loss" in self.warned or n <= self.patience or self.seen > self.epochs / 2:
            return None  # in the second half a flat loss is a run converging (cosine's tail), not one stuck
        if len(self.scores) >= 2 and self.scores[-1] - self.scores[-2] >= self.min_rise:
            return None  # the test score is still climbing: a noisy loss, not a stuck model
        before, recent = min(self.losses[: n - self.patience]), min(self.losses[n - self.patience:])
        if recent < (1 - self.min_drop) * before:
            return None
        self.warned.add("loss")
        return (f"[{self.label}] warning: the training loss has not fallen over the last {self.patience} epochs "
                f"(best {before:.4f} before them, {recent:.4f} since): the model is not learning. Try a higher "
                f"learning rate (now {self.lr:g}) or a longer warm-up, lower the distillation terms' weights, and "
                f"look at the data and predictions (hintdistill viz RUN --image PATH).")

    def _no_detections(self, metrics: dict | None) -> str | None:
        n = self.seen
        if "map" in self.warned or not metrics or "map50" not in metrics or n < max(self.patience, self.epochs / 3):
            return None
        if float(metrics["map50"]) >= self.near_zero:
            return None
        self.warned.add("map")
        return (f"[{self.label}] warning: test mAP@0.5 is {float(metrics['map50']):.4f} after {n} of {self.epochs} "
                f"epochs. Check that the boxes and classes load (hintdistill viz RUN --image PATH draws them), try a "
                f"higher learning rate (now {self.lr:g}; 0.04 learned on the sparse raccoon set where 0.01 did not) "
                f"and check that the anchors suit the objects at this input size.")
