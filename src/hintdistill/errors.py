"""Errors a user can act on: each message names the problem and the fix."""

from __future__ import annotations


class HintDistillError(Exception):
    """Base class of every error raised for bad input (bad recipe, bad layer name, bad data)."""

    exit_code = 2  # every error a user can cause exits 2 from the CLI; 1 is kept for internal errors


class ConfigError(HintDistillError):
    """The recipe or a command-line option is invalid; raised before any training starts."""


class DataError(HintDistillError):
    """A data set is missing, incomplete or unreadable."""


class ShapeError(HintDistillError):
    """Teacher and student features or outputs cannot be compared as configured."""


class CheckpointError(HintDistillError):
    """A checkpoint is missing, unreadable or does not fit the model."""


class TrainingDiverged(HintDistillError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


class Interrupted(Exception):
    """A run stopped by SIGINT/SIGTERM at a step boundary, its checkpoint saved (issue 12). Not a user error:
    the command line exits 128 + the signal (130 for Ctrl-C, 143 for SIGTERM), as a shell would."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
