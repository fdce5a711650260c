"""hintdistill: knowledge distillation (Hinton et al. 2015) and hint learning (FitNets, Romero et al.
2015) for image classification and object detection (Chen et al. 2017)."""

from .distiller import Distiller, freeze
from .errors import ConfigError, HintDistillError, ShapeError
from .finite import NonFiniteError
from .schema import LinearRamp
from .taps import Outputs, Taps, feature_key
from .terms import CrossEntropy, HintLoss, SoftTargetKD, Term

__version__ = "0.1.0"

__all__ = [
    "Distiller", "LinearRamp", "freeze", "Taps", "Outputs", "feature_key", "Term", "CrossEntropy",
    "SoftTargetKD", "HintLoss", "HintDistillError", "ConfigError", "ShapeError",
    "NonFiniteError",
]
