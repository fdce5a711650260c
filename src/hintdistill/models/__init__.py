"""Model families and the name registry."""

from .registry import available, build_model, register

__all__ = ["available", "build_model", "register"]
