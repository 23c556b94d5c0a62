"""The window's start-up: its shell is painted first, its tabs are built in the event-loop turns after.

A bare PySide6 window shows in a few hundred milliseconds; the whole window took four times that, most of it
importing the run-file schema (pydantic) and the panels and building seven tabs before anything was on screen.
``BuildsInSteps`` gives the main window a two-part construction:

* ``__init__`` builds the shell only — the frame at its size, the tab bar with every tab's title, a status line —
  from Qt alone, so the window's first paint imports none of workbench's panels, ``core.config`` or pydantic
  (``tests/gui/test_startup.py`` checks the list);
* ``_build_steps()`` (a generator in the window's class: the rest of what its constructor did, with a ``yield``
  between the pieces) then runs one piece per event-loop turn (``IdleSteps``) from the turn after the shell's
  first paint, the first visible tab first, each page replacing its placeholder as it is made.

Code that needs the window before it is complete gets it complete: any public attribute asked for while the
pieces are still being built (``window.store`` in a test or a script, a slot, closing the window) finishes them
at once, so a window used right after ``MainWindow()`` behaves as one built in one go. ``when_built`` runs a
callable once everything is there (app.main opens the demo and starts the warm-up that way).

This module imports only Qt.
"""

from __future__ import annotations

from typing import Callable, Generator

from PySide6.QtCore import QEvent, Qt, QTimer
from PySide6.QtWidgets import QLabel, QMainWindow, QTabWidget, QWidget

from .widgets.lazy_plot import IdleSteps

TAB_TITLES = ("Model && layers", "Settings", "Data", "Train", "Runs", "Inspect adapter", "Playground")
WINDOW_SIZE = (1200, 800)


class BuildsInSteps:
    """Mixin for a QMainWindow whose class defines ``_build_steps()``; see the module docstring."""

    _built_callbacks: list[Callable[[], None]]

    def _build_shell(self) -> None:
        """The frame, the tab bar and a placeholder per tab; the pieces are built from the next turn on."""
        self._built_callbacks = []
        self.tabs = QTabWidget()
        for title in TAB_TITLES:
            placeholder = QLabel("Starting…")
            placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
            placeholder.setEnabled(False)  # greyed: a page being built, not a message
            self.tabs.addTab(placeholder, title)
        self.setCentralWidget(self.tabs)
        self.resize(*WINDOW_SIZE)
        self.setWindowTitle("LoRA Workbench")

    def _start_building(self) -> IdleSteps:
        """The pieces, from the next event-loop turn on (started by the first paint, or by whatever needs the
        window complete first)."""
        building = self.__dict__.get("_building")
        if building is None:
            building = self._building = IdleSteps(self, self._build_steps())
            building.done.connect(self._built)
        return building

    def _start_building_after_paint(self) -> None:
        if self.isVisible():  # not if it was closed before this turn (nothing asked for it since)
            self._start_building()

    def closeEvent(self, event) -> None:
        """A window closed before its tabs exist (within its first second) has no run or edit to ask about, and
        (unless a job was started on it already: ``_jobs``, the window's count) nothing to wait for: it closes
        without building them. Otherwise the window's own closing runs, on the complete window."""
        if self.is_built or getattr(self, "_jobs", 0):
            self.finish_building()
            super().closeEvent(event)  # type: ignore[misc]
            return
        building = self.__dict__.get("_building")
        if building is not None:
            building.stop()
        self._built_callbacks = []
        QMainWindow.closeEvent(self, event)  # type: ignore[arg-type]
        self.closed.emit()  # type: ignore[attr-defined]  (the window's signal: the application may quit)

    def event(self, event: QEvent) -> bool:
        handled = super().event(event)  # type: ignore[misc]
        # The shell has been painted (an UpdateRequest paints a window's dirty widgets and flushes them to the
        # screen): the pieces start in the next turn, so that the first paint never waits for them. A 0 ms
        # timer alone does not do: it can fire before the window's first paint.
        if event.type() == QEvent.Type.UpdateRequest and not self.__dict__.get("_build_asked"):
            self._build_asked = True
            QTimer.singleShot(0, self, self._start_building_after_paint)  # queued behind what the paint queued
        return handled

    def _build_steps(self) -> Generator[None, None, None]:  # pragma: no cover - the window's class defines it
        raise NotImplementedError
        yield

    def _set_page(self, index: int, page: QWidget) -> None:
        """The built page in place of tab ``index``'s placeholder (the tab stays current if it was)."""
        current = self.tabs.currentIndex()
        placeholder = self.tabs.widget(index)
        self.tabs.removeTab(index)
        self.tabs.insertTab(index, page, TAB_TITLES[index])
        if current == index:
            self.tabs.setCurrentIndex(index)
        placeholder.deleteLater()

    @property
    def is_built(self) -> bool:
        building = self.__dict__.get("_building")
        return building is not None and not building.running

    def finish_building(self) -> None:
        """Build whatever is left now (nothing if the window is complete)."""
        building = self._start_building()
        if building.running and not building.stepping:
            building.finish()

    def when_built(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the window is complete: now if it is."""
        if self.is_built:
            callback()
        else:
            self._built_callbacks.append(callback)
            self._start_building()  # a window never painted (hidden, say) is built all the same

    def _built(self, _value: object) -> None:
        callbacks, self._built_callbacks = self._built_callbacks, []
        for callback in callbacks:
            callback()

    def __getattr__(self, name: str):
        # Only for names not found: a public one is one of the pieces still to build. Private names are never
        # forwarded (a half-built window's own checks, ``getattr(self, "_x", default)``, stay cheap and exact).
        if not name.startswith("_") and "_built_callbacks" in self.__dict__:  # (the shell exists)
            building = self._start_building()
            if building.running and not building.stepping:
                building.finish()
                return getattr(self, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
