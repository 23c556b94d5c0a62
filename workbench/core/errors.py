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


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text: library errors often append pages of detail."""
    return str(exc).strip().split("\n")[0]


class ModelSourceError(WorkbenchError):
    """The model source cannot be opened (missing, malformed, unsafe, unsupported, offline)."""


class ConsentRequired(ModelSourceError):
    """The model can be opened only if the user explicitly allows something unsafe by default.

    ``setting`` is the ``model.*`` field that allows it (``allow_pickle`` or ``trust_remote_code``) and
    ``files`` what would be unpickled or run, so a window can ask "trust these?" and name them.
    """

    def __init__(self, message: str, hint: str, *, setting: str, files: list[str]):
        super().__init__(message, hint)
        self.setting = setting
        self.files = files


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
