"""Model families and the name registry; importing this package registers every built-in family."""

from . import classification, darknet, yolo  # noqa: F401  (each family registers its names)
from .registry import available, build_model, register

__all__ = ["available", "build_model", "register"]
