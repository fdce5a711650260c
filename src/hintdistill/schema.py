"""The pieces of the recipe schema that terms share with ``config``: strict models and term weights.

Kept apart from ``config`` so a term file can declare its own schema without importing the recipe
(which is built from the term registry).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, with_config


class Strict(BaseModel):
    """A recipe section: an unknown field is an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


@with_config(ConfigDict(extra="forbid"))
@dataclass
class LinearRamp:
    """A term weight ramped linearly from ``start`` to ``end`` over ``epochs`` (FitNets: 4 → 1), then held.

    In a recipe: ``weight: {start: 4, end: 1, epochs: 10}`` (``epochs`` > 0 there)."""

    start: float
    end: float
    epochs: Annotated[float, Field(gt=0)]

    def __call__(self, epoch: float) -> float:
        if self.epochs <= 0:
            return self.end
        frac = min(max(epoch / self.epochs, 0.0), 1.0)
        return self.start + (self.end - self.start) * frac


Weight = float | LinearRamp
