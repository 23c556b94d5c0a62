"""``workbench runs``: list the runs under a folder with their status, progress and losses."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workbench.core.runs import RunSummary

RECENT = 20  # runs listed without --all


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "runs",
        help="list training runs and their status",
        description="List the runs under a folder, newest first, with their status (new, running, paused, finished, "
        "stopped, failed, crashed), steps, last and best evaluation loss, model and start time.",
    )
    p.add_argument(
        "--root",
        metavar="DIR",
        help="folder holding one sub-folder per run (default: the runs_root of a default run file, ./runs)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON array with one object per run, for scripts")
    p.add_argument("--all", action="store_true", help=f"list every run (default: the {RECENT} most recent)")
    p.add_argument("--status", metavar="RUN_DIR",
                   help="print one word, the status of the run in RUN_DIR (new, running, finished, stopped, failed, "
                        "crashed), for scripts")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from workbench.core.runs import list_runs

    if args.status:
        from workbench.core.runs import run_status

        print(run_status(args.status).value)
        return 0
    if args.root:
        root = Path(args.root)
    else:  # the schema's default (pydantic is imported only for it)
        from workbench.core.config import OutputConfig

        root = Path(OutputConfig().runs_root)
    runs = list_runs(root)
    shown = runs if args.all else runs[:RECENT]
    if args.json:
        print(json.dumps([summary.to_dict() for summary in shown], indent=2))
    elif not runs:
        print(f"no runs under {root.resolve()}")
    else:
        print(_table(shown))
    if len(shown) < len(runs):
        print(f"{len(runs) - len(shown)} older run(s) not shown; --all lists every run", file=sys.stderr)
    return 0


def _table(runs: list[RunSummary]) -> str:
    from workbench.core.runs import model_short_name

    header = ("NAME", "STATUS", "STEPS", "LOSS", "BEST EVAL", "MODEL", "STARTED", "DURATION")
    rows = [header]
    for s in runs:
        rows.append(
            (
                s.name,
                s.shown_status,
                f"{s.step}/{s.total_steps}" if s.total_steps else str(s.step),
                _number(s.last_loss),
                _number(s.best_eval_loss),
                model_short_name(s.model_source) if s.model_source else "-",
                (s.started_at or s.created_at).strftime("%Y-%m-%d %H:%M"),
                _duration(s.duration_s),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
