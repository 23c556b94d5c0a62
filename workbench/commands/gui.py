from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gui", help="open the window (the default when no subcommand is given)")
    p.add_argument("run_file", nargs="?", help="run configuration (.toml) to open")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from workbench.core.errors import WorkbenchError

    if not _display_available():
        raise WorkbenchError(
            "no display server found (DISPLAY and WAYLAND_DISPLAY are unset), so the window cannot open",
            "on a desktop, start it from the desktop session; on a server, use a virtual display: "
            "`xvfb-run -a .venv/bin/workbench` (Debian/Ubuntu: apt-get install xvfb) — or work headless: "
            "`.venv/bin/workbench demo --train`, `workbench train RUN.toml`",
        )
    try:
        from workbench.gui.app import main as gui_main
    except ImportError as exc:
        raise WorkbenchError(f"the window cannot start: {exc}", "install the GUI dependencies with `make run`") from None
    return gui_main(args.run_file)


def _display_available() -> bool:
    """On Linux and the BSDs a window needs an X11 or Wayland server; Windows and macOS always have one.
    An explicit QT_QPA_PLATFORM (offscreen, vnc, eglfs…) is the user's choice and is respected."""
    import os
    import sys

    if sys.platform in ("win32", "darwin") or os.environ.get("QT_QPA_PLATFORM"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
