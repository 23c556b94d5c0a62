"""The window's one run configuration, shared by every panel.

Panels never keep their own copy of a setting: they read ``store.config`` and write through ``update``,
which validates the change with the same schema the CLI and run files use (``RunConfig.copy_with``), so a
value the engine would refuse is refused here, with the engine's message. ``changed`` tells every panel to
refresh; ``dirty`` tracks unsaved edits for the title bar and the close prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from workbench.core.config import RunConfig


class ConfigStore(QObject):
    changed = Signal(str)  # the section that changed, or "" when the whole configuration was replaced
    dirtyChanged = Signal(bool)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.config = RunConfig()
        self.path: Path | None = None
        self._dirty = False

    @property
    def dirty(self) -> bool:
        return self._dirty

    def _set_dirty(self, dirty: bool) -> None:
        if dirty != self._dirty:
            self._dirty = dirty
            self.dirtyChanged.emit(dirty)

    def update(self, section: str, **fields: Any) -> None:
        """Change fields of one section. Raises ``ConfigError`` (nothing changes) if the result is invalid."""
        current = getattr(self.config, section)
        if all(getattr(current, k) == v for k, v in fields.items()):
            return
        self.config = self.config.copy_with(**{section: fields})
        self._set_dirty(True)
        self.changed.emit(section)

    def replace(self, config: RunConfig, path: Path | None = None) -> None:
        self.config = config
        self.path = path
        self._set_dirty(False)
        self.changed.emit("")

    def save(self, path: Path) -> None:
        self.config.save(path)
        self.path = path
        self._set_dirty(False)
