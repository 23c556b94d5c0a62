"""The Runs tab's Sweep view as a screenshot for the README: a finished sweep's table and rank trade-off plot.

Opens the real window under a virtual X server (re-runs itself through ``xvfb-run`` when no display is set), points
the Runs tab at a runs folder that holds a sweep (``workbench sweep … --name GROUP``), shows the group's table and
plot with the chosen quality on the vertical axis, and saves one PNG per quality into docs/screenshots/.

    .venv/bin/python packaging/sweep_screenshot.py runs --group ranks --quality json_exact:rank-sweep \\
        --quality retention_agreement:rank-sweep-retention
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from screenshots import OUT, ROOT, SIZE, ensure_display, settle, wait  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs_root", type=Path, help="the runs folder that holds the sweep's run folders")
    ap.add_argument("--group", required=True, help="the sweep (output.group) to show")
    ap.add_argument("--quality", action="append", default=[], metavar="KEY:NAME",
                    help="a plot quality (best_eval_loss, json_exact, retention_agreement, …) and the PNG's name")
    args = ap.parse_args()
    ensure_display()
    qualities = [q.split(":", 1) for q in args.quality] or [["best_eval_loss", "rank-sweep"]]

    from PySide6.QtCore import QSettings

    from workbench.gui.app import create_app
    from workbench.gui.main_window import MainWindow

    create_app()
    with tempfile.TemporaryDirectory() as tmp:
        window = MainWindow(QSettings(str(Path(tmp) / "settings.ini"), QSettings.Format.IniFormat))
        window.resize(SIZE[0] + 80, SIZE[1])  # the table's metric columns and the plot side by side (xvfb: +100)
        window.show()
        window.store.update("output", runs_root=str(args.runs_root.resolve()))
        runs = window.runs
        window.tabs.setCurrentWidget(runs)
        wait(lambda: len(runs.summaries) > 0, timeout=120)
        view = runs.sweep
        runs.views.setCurrentWidget(view)
        from PySide6.QtWidgets import QSplitter

        runs.findChild(QSplitter).setSizes([150, SIZE[1] - 150])  # the run list short, the sweep view tall
        view.findChild(QSplitter).setSizes([930, 550])  # the table's columns, then the plot
        wait(lambda: view.data.group is not None, timeout=120)
        if view.data.group != args.group:
            view.group_box.setCurrentText(args.group)
            view.reload()
            wait(lambda: view.data.group == args.group, timeout=120)
        OUT.mkdir(parents=True, exist_ok=True)
        for key, name in qualities:
            index = view.quality_box.findData(key)
            if index < 0:
                sys.exit(f"the sweep has no {key!r} to plot")
            view.quality_box.setCurrentIndex(index)
            view.draw()
            settle(1200)
            path = OUT / f"{name}.png"
            window.grab().save(str(path))
            print("saved", path.relative_to(ROOT), "—", view.quality_box.currentText())
            for x, y, run in view.plotted:
                print(f"  {run}: {x:,.0f} trainable, {y:.4g}{'  (front)' if (x, y, run) in view.front else ''}")
        window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
