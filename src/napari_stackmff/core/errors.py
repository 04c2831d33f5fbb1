"""Errors a user can act on.

Every problem with the user's input is raised as a :class:`StackMFFError` whose message names
the file (or argument) and says what to do, so the CLI and the widgets can show it as one line
instead of a traceback from deep inside numpy or torch.
"""

from __future__ import annotations


class StackMFFError(ValueError):
    """Base class for errors caused by the user's input or settings."""


class StackError(StackMFFError):
    """A focal stack could not be read or is not a valid stack."""


class WeightsError(StackMFFError):
    """A weights file is missing, corrupt or does not match the model."""


class OutputError(StackMFFError):
    """Results cannot be written where asked (e.g. they would overwrite an input)."""
