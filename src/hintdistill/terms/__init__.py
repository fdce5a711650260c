"""Loss terms: one family per file, each starting with its formula and paper. Importing this package
registers every built-in term (``registered()`` lists them, in the order recipes' errors name them)."""

# ruff: noqa: I001  (import order is registration order: ce, kd, hint, then the detection terms)
from .base import Term
from .registry import HintPair, TermConfig, register_term, registered, term_class, term_names
from .logits import CrossEntropy, SoftTargetKD, kd_loss, soft_targets
from .hints import HintLoss, feature_distance
from . import detection  # noqa: F401  (the detection terms and YoloLoss register themselves)
from .attention import AttentionTransfer
from .decoupled import DecoupledKD
from .pearson import PearsonKD

__all__ = ["Term", "TermConfig", "HintPair", "register_term", "registered", "term_class", "term_names",
           "CrossEntropy", "SoftTargetKD", "HintLoss", "kd_loss", "soft_targets", "feature_distance",
           "AttentionTransfer", "DecoupledKD", "PearsonKD"]
