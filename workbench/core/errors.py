"""Errors the user can act on.

Every failure caused by input (a path, a file, a setting) is raised as a ``WorkbenchError`` whose message
names the thing at fault and whose ``hint`` says what to do. The CLI prints them without a traceback and
exits non-zero; the window shows them in a message box. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class WorkbenchError(Exception):
    def __init__(self, message: str, hint: str = ""):
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message}\n{hint}")


class ModelSourceError(WorkbenchError):
    """The model source cannot be opened (missing, malformed, unsafe, unsupported, offline)."""


class SelectionError(WorkbenchError):
    """A layer selection that matches nothing or cannot be adapted."""


class DataError(WorkbenchError):
    """A dataset that cannot be used; names the file, the line or row, and the field."""


class AdapterError(WorkbenchError):
    """An adapter that does not fit its base model, or cannot be read safely."""


class OutputError(WorkbenchError):
    """An output location that cannot be written (exists, not writable, disk full)."""


class TrainingError(WorkbenchError):
    """Training cannot start or continue (NaN loss, out of memory, no data)."""
