from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gui", help="open the window (the default when no subcommand is given)")
    p.add_argument("run_file", nargs="?", help="run configuration (.toml) to open")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from workbench.gui.app import main as gui_main
    except ImportError as exc:
        from workbench.core.errors import WorkbenchError

        raise WorkbenchError(f"the window cannot start: {exc}", "install the GUI dependencies with `make run`") from None
    return gui_main(args.run_file)
