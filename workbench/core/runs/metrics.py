"""metrics.jsonl: reading a run's events, whole or as they are appended, and tolerating torn lines.

``metrics.jsonl`` holds every event of a run, one JSON object per line, append-only (``events.JsonlSink``
writes it; the recorder is the only writer). Readers may find the last line still being written, or torn by a
crash: a piece without its newline is never parsed (a tailer leaves it for its next poll), lines that are not
JSON objects are skipped, and so are events of kinds this version does not know. The file is only ever cut back
by ``prepare_resume`` (see ``resume``); ``MetricsTailer`` notices that and starts again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..events import Event, event_from_dict
from .layout import PathLike, RunFolder

# Bytes read from the end of metrics.jsonl to find the last outcome of a run that claims to be running.
TAIL_BYTES = 64 * 1024


def parse_lines(data: bytes) -> list[Event]:
    """Events from the complete lines of ``data``. A trailing piece without a newline (a line still being
    written, or torn by a crash) is ignored, and so are lines that are not JSON objects (a torn line that
    later writes were appended to) and events of kinds this version does not know."""
    events = []
    for line in data[: data.rfind(b"\n") + 1].splitlines():
        try:
            obj = json.loads(line)
        except ValueError:  # also UnicodeDecodeError
            continue
        event = event_from_dict(obj) if isinstance(obj, dict) else None
        if event is not None:
            events.append(event)
    return events


def read_tail(path: Path, max_bytes: int = TAIL_BYTES) -> list[Event]:
    """The events among the last ``max_bytes`` of a metrics file (its first, cut line skipped)."""
    try:
        with open(path, "rb") as fh:
            start = max(0, fh.seek(0, os.SEEK_END) - max_bytes)
            fh.seek(start)
            data = fh.read()
    except FileNotFoundError:
        return []
    if start > 0:
        data = data[data.find(b"\n") + 1 :] if b"\n" in data else b""
    return parse_lines(data)


def drop_torn_line(path: Path) -> None:
    """Cut a last line without its newline (a writer killed mid-line) off the end of ``path``."""
    try:
        with open(path, "r+b") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size == 0:
                return
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return
            start = max(0, size - TAIL_BYTES)
            while True:  # find the last newline, reading backwards a block at a time
                fh.seek(start)
                block = fh.read(size - start)
                cut = block.rfind(b"\n")
                if cut >= 0:
                    fh.truncate(start + cut + 1)
                    break
                if start == 0:
                    fh.truncate(0)
                    break
                size, start = start, max(0, start - TAIL_BYTES)
            os.fsync(fh.fileno())
    except FileNotFoundError:
        pass


def read_events(run_dir: PathLike) -> list[Event]:
    """Every event of a run's metrics.jsonl, in order; tolerant as ``MetricsTailer.poll`` is."""
    return MetricsTailer(run_dir).poll()


class MetricsTailer:
    """Follows a run's metrics.jsonl as another process appends to it (live plots, ``workbench runs``).

    ``poll()`` returns the events completed since the previous call. It keeps the byte offset of the end
    of the last complete line it consumed, so a line still being written is left for the next poll, and
    a missing file (the run has not started yet) just gives no events. To notice that the file was cut
    back (``prepare_resume``) or replaced, it re-reads the last line it consumed and compares it: if it
    changed, the tailer starts again from the beginning and sets ``restarted`` for that poll, telling the
    caller to drop what it had (the returned events are then the whole history).
    """

    def __init__(self, run_dir: PathLike):
        self.path = RunFolder(run_dir).metrics_file
        self.restarted = False
        self._offset = 0  # end of the last consumed complete line
        self._last_line = b""  # that line, newline included

    def poll(self) -> list[Event]:
        self.restarted = False
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return []
        with fh:
            if self._offset and not self._continues(fh):
                self._offset, self._last_line, self.restarted = 0, b"", True
            fh.seek(self._offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        if end == 0:
            return []
        self._offset += end
        self._last_line = data[data.rfind(b"\n", 0, end - 1) + 1 : end]
        return parse_lines(data[:end])

    def _continues(self, fh: Any) -> bool:
        fh.seek(self._offset - len(self._last_line))
        return fh.read(len(self._last_line)) == self._last_line
