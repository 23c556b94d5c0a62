"""What the window remembers between sessions as "recent" lists (models, run files, data files): newest first,
at most ``RECENT_LIMIT`` each, in the application's QSettings.

A change reaches the settings ``WRITE_DELAY_MS`` later, in a turn of the event loop of its own: QSettings writes
its file in the turn after any change, with an fsync that held the GUI thread for 12-24 ms (more on a busy disk),
and the turn that remembers a model is the one that shows its tree. ``items`` reads the lists not yet written
first; ``flush`` writes them at once (the window does before it syncs its settings on closing).
"""

from __future__ import annotations

from PySide6.QtCore import QSettings, QTimer

RECENT_LIMIT = 10
WRITE_DELAY_MS = 500


class Recents:
    def __init__(self, settings: QSettings):
        self.settings = settings
        self._pending: dict[str, list[str]] = {}  # key → its newest list, not written to the settings yet
        self._timer = QTimer(singleShot=True, interval=WRITE_DELAY_MS)
        self._timer.timeout.connect(self.flush)

    def items(self, key: str) -> list[str]:
        if key in self._pending:
            return list(self._pending[key])
        value = self.settings.value(key, [])
        return [value] if isinstance(value, str) else list(value or [])

    def remember(self, key: str, item: str) -> None:
        items = [item] + [x for x in self.items(key) if x != item]
        if items[:RECENT_LIMIT] != self.items(key):  # the same list again (the same model re-opened): no write
            self._pending[key] = items[:RECENT_LIMIT]
            self._timer.start()

    def flush(self) -> None:
        """Write the lists remembered since the last write to the settings now."""
        self._timer.stop()
        pending, self._pending = self._pending, {}
        for key, items in pending.items():
            self.settings.setValue(key, items)
