"""What the window remembers between sessions as "recent" lists (models, run files, data files): newest first,
at most ``RECENT_LIMIT`` each, in the application's QSettings."""

from __future__ import annotations

from PySide6.QtCore import QSettings

RECENT_LIMIT = 10


class Recents:
    def __init__(self, settings: QSettings):
        self.settings = settings

    def items(self, key: str) -> list[str]:
        value = self.settings.value(key, [])
        return [value] if isinstance(value, str) else list(value or [])

    def remember(self, key: str, item: str) -> None:
        items = [item] + [x for x in self.items(key) if x != item]
        self.settings.setValue(key, items[:RECENT_LIMIT])
