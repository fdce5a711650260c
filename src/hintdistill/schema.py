"""The pieces of the recipe schema that terms share with ``config``: strict models and term weights.

Kept apart from ``config`` so a term file can declare its own schema without importing the recipe
(which is built from the term registry).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """A recipe section: an unknown field is an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


class LinearWeight(Strict):
    """A weight annealed linearly from ``start`` to ``end`` over the stage's first ``epochs``."""

    start: float
    end: float
    epochs: float = Field(gt=0)


Weight = float | LinearWeight
