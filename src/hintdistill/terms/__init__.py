"""Loss terms: one family per file, each starting with its formula and paper."""

from .base import Term
from .hints import HintLoss, feature_distance
from .logits import CrossEntropy, SoftTargetKD, kd_loss, soft_targets

__all__ = ["Term", "CrossEntropy", "SoftTargetKD", "HintLoss", "kd_loss", "soft_targets", "feature_distance"]
