"""The window's last line of defence: an exception nobody caught becomes one line, never a traceback or an abort.

PySide6 hands an exception raised in a slot or a Qt virtual method (``paintEvent``...) to ``sys.excepthook``
and carries on; the default hook prints the traceback to a terminal the user may not have, and tells them
nothing. ``install`` replaces it: the traceback goes into a crash log (``core.crashlog``, as the CLI's guarded
entry point writes it) and the window shows what failed, the exception's first line and the log's path in
its status bar and a message box. Exceptions of other Python threads (``threading.excepthook``: a library's
helper thread; the window's own jobs report through their workers) are logged the same way, with the line on
stderr, since only the GUI thread may touch widgets.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Callable

_PACKAGE = str(Path(__file__).resolve().parents[1])  # .../workbench: frames in here name what failed


def failing_step(tb) -> str:
    """What failed, for the one line: the innermost function of this application in the traceback
    (``MainWindow.update_summary``), else the innermost function at all."""
    codes = []
    while tb is not None:
        codes.append(tb.tb_frame.f_code)
        tb = tb.tb_next
    ours = [c for c in codes if str(Path(c.co_filename).resolve()).startswith(_PACKAGE)]
    code = (ours or codes or [None])[-1]
    return getattr(code, "co_qualname", code.co_name) if code is not None else "The window"


def install(report: Callable[[str], None]) -> Callable[[], None]:
    """Route uncaught exceptions to ``report(line)`` (called on the GUI thread); returns a function that puts
    the previous hooks back."""
    from workbench.gui.workers import unexpected_error_text

    previous, previous_thread_hook = sys.excepthook, threading.excepthook

    def hook(exc_type, exc, tb) -> None:
        if issubclass(exc_type, KeyboardInterrupt):  # Ctrl-C in the terminal that started the window
            previous(exc_type, exc, tb)
            return
        try:
            if exc.__traceback__ is None:
                exc = exc.with_traceback(tb)
            line, _log = unexpected_error_text(failing_step(tb), exc)
            if threading.current_thread() is threading.main_thread():
                report(line)
            else:  # another thread must not touch widgets (the window's own jobs report through their worker)
                print(f"error: {line}", file=sys.stderr)
        except Exception:  # noqa: BLE001  (the report itself failed: at least one line on stderr)
            try:
                print(f"error: {exc_type.__name__}: {exc}", file=sys.stderr)
            except Exception:  # noqa: BLE001
                pass

    def thread_hook(args) -> None:
        if args.exc_type is SystemExit:
            return
        hook(args.exc_type, args.exc_value, args.exc_traceback)

    sys.excepthook, threading.excepthook = hook, thread_hook

    def uninstall() -> None:
        sys.excepthook, threading.excepthook = previous, previous_thread_hook

    return uninstall
