"""Which data setting a data problem concerns, and its wording for the window.

The engine's messages name run-file settings (``data.train_files``, ``data.skip_bad_rows = true``) because the
command line and run files are how most of them are met. The window shows each problem next to the control it
concerns and names that control instead; this module decides both, without Qt, so the rules are tested here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import DataConfig
from .results import _SKIP_HINT

# Run-file setting → what the Data tab calls it.
CONTROL_NAMES = {
    "data.train_files": "the Training files list",
    "data.validation_files": "the Validation files list",
    "data.validation_split": "the Hold out box",
    "data.format": "the Format box",
    "data.columns": "the Columns boxes",
    "data.text_split": "the Split text box",
    "data.alpaca_template": "the Alpaca prompt box",
    "data.skip_bad_rows": "Skip bad rows",
    "data.max_length": "Max length (Settings tab)",
    "data.chat_template": "the chat template (run file)",
}
SKIP_HINT_IN_WINDOW = ("Fix the row, or tick “Skip bad rows” to leave bad rows out (they are counted and "
                       "reported).")


@dataclass(frozen=True)
class DataProblem:
    """A problem as the Data tab shows it: ``setting`` is the DataConfig field whose control it belongs next to
    (``train_files``, ``validation_files``, ``format``, ``columns``, ``validation_split``) or "" for none;
    ``bad_row``: a row is bad, so skipping bad rows would get past it."""

    setting: str
    message: str
    hint: str
    bad_row: bool

    @property
    def text(self) -> str:
        return f"{self.message}\n{self.hint}" if self.hint else self.message


def describe(text: str, cfg: DataConfig) -> DataProblem:
    """``text`` as a worker reports a ``DataError`` (message, blank line, hint) for the data settings ``cfg``."""
    message, _, hint = text.partition("\n\n")
    bad_row = hint.strip() == _SKIP_HINT
    return DataProblem(_setting_of(message, cfg), message.strip(),
                       SKIP_HINT_IN_WINDOW if bad_row else _in_window_words(hint.strip()), bad_row)


def _setting_of(message: str, cfg: DataConfig) -> str:
    for setting, files in (("validation_files", cfg.validation_files), ("train_files", cfg.train_files)):
        for name in files:
            path = Path(name).expanduser()
            # A file's own problems start with its path; a LLaMA-Factory list beside it speaks for it too.
            if message.startswith((f"{path}:", f"{path} ", f"{path.parent / 'dataset_info.json'}:")):
                return setting
    for prefix, setting in (("data.columns", "columns"), ("validation_split", "validation_split"),
                            ("No training files", "train_files"), ("The train files", "train_files"),
                            ("The validation files", "validation_files")):
        if message.startswith(prefix):
            return setting
    return ""


def _in_window_words(hint: str) -> str:
    for setting, control in CONTROL_NAMES.items():
        hint = hint.replace(f"{setting} = ", f"{control}: ").replace(setting, control)
    return hint
