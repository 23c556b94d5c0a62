"""``workbench queue add/list/run/remove`` and ``workbench sweep``: runs one after another, and grids of runs."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("queue", help="a queue of runs, run one after another on this machine",
                       description="Queue runs and run them one after another, each as its own process: a run that "
                                   "fails does not stop the queue (unless --stop-on-error). The queue lives in "
                                   "<runs_root>/.queue beside the runs it makes.")
    qsub = q.add_subparsers(dest="queue_command", metavar="ACTION", required=True)
    add = qsub.add_parser("add", help="queue a run file (or a sweep of it: --grid / --list)")
    add.add_argument("run_file", help="the run file (.toml)")
    _sweep_arguments(add)
    listing = qsub.add_parser("list", help="show the queue")
    listing.add_argument("--root", metavar="DIR", help="the runs folder whose queue to show (default: ./runs)")
    run = qsub.add_parser("run", help="run the pending entries in order")
    run.add_argument("--root", metavar="DIR", help="the runs folder whose queue to run (default: ./runs)")
    run.add_argument("--stop-on-error", action="store_true", help="stop the queue at the first failed run")
    remove = qsub.add_parser("remove", help="take an entry off the queue (its run folder is kept)")
    remove.add_argument("number", type=int)
    remove.add_argument("--root", metavar="DIR")
    move = qsub.add_parser("move", help="move a pending entry up or down the queue")
    move.add_argument("number", type=int)
    move.add_argument("--by", type=int, required=True, metavar="N", help="places to move: negative is earlier")
    move.add_argument("--root", metavar="DIR")
    q.set_defaults(func=run_queue_command)

    s = sub.add_parser("sweep", help="run a grid of runs over any fields and compare them (the rank trade-off)",
                       description="Expand RUN.toml over the given fields (--grid: every combination; --list: the "
                                   "i-th value of each field together), queue the runs, run them one after another, "
                                   "and print each run's values, trainable parameters, adapter size, time and "
                                   "losses, with the runs on the cost/quality Pareto front marked *.")
    s.add_argument("run_file", help="the run file (.toml)")
    _sweep_arguments(s)
    s.add_argument("--no-run", action="store_true", help="only queue the runs (run them with `workbench queue run`)")
    s.add_argument("--stop-on-error", action="store_true", help="stop the sweep at the first failed run")
    s.set_defaults(func=run_sweep)


def _sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2,…",
                   help="vary a field over values, in every combination with the other --grid fields "
                        "(e.g. lora.r=4,8,16); repeat for more fields")
    p.add_argument("--list", dest="paired", action="append", default=[], metavar="FIELD=V1,V2,…",
                   help="vary fields together: the first values make the first run, and so on")
    p.add_argument("--name", help="the sweep's name (default: the run file's output.name, else 'sweep')")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="change a field of the run file for every run of the sweep (e.g. training.max_steps=20), "
                        "as `workbench train --set` does")


def _points(args: argparse.Namespace):
    from workbench.core.config import ConfigError, RunConfig
    from workbench.core.sweep import expand, parse_axes

    config = RunConfig.from_toml(args.run_file)
    if args.overrides:
        config = config.with_overrides(args.overrides)
    if args.grid and args.paired:
        raise ConfigError(["--grid and --list cannot be mixed in one sweep"], "the sweep",
                          "use --grid for every combination, or --list for values that go together")
    axes = parse_axes(args.grid or args.paired)
    return config, expand(config, axes, paired=bool(args.paired), name=args.name), list(axes)


def run_queue_command(args: argparse.Namespace) -> int:
    from workbench.core import run_queue

    if args.queue_command == "add":
        from workbench.core.config import RunConfig

        if args.grid or args.paired:
            _, points, _ = _points(args)
            for point in points:
                entry = run_queue.add_to_queue(point.config, name=point.name)
                print(f"queued {entry.id} {entry.name}")
        else:
            config = RunConfig.from_toml(args.run_file)
            entry = run_queue.add_to_queue(config.with_overrides(args.overrides) if args.overrides else config,
                                           name=args.name)
            print(f"queued {entry.id} {entry.name}")
        return 0
    root = args.root or _default_root()
    if args.queue_command == "list":
        entries = run_queue.queue_entries(root)
        if not entries:
            print(f"the queue in {run_queue.queue_dir(root)} is empty")
            return 0
        rows = [("#", "NAME", "STATUS", "RUN FOLDER", "MESSAGE")]
        rows += [(e.id, e.name, e.status, e.run_dir or "-", e.message) for e in entries]
        print(_columns(rows))
        return 0
    if args.queue_command == "remove":
        entry = run_queue.remove_entry(root, args.number)
        print(f"removed {entry.id} {entry.name}")
        return 0
    if args.queue_command == "move":
        order = run_queue.move_entry(root, args.number, args.by)
        print("queue order: " + " ".join(e.id for e in order))
        return 0
    ran = _drive(root, None, stop_on_error=args.stop_on_error)
    failed = sum(e.status == run_queue.FAILED for e in ran)
    print(f"{len(ran)} run(s): {len(ran) - failed} ended well, {failed} failed" if ran else "nothing pending")
    return 0 if not failed else 2


def run_sweep(args: argparse.Namespace) -> int:
    from workbench.core import run_queue
    from workbench.core.sweep import sweep_table

    config, points, varied = _points(args)
    entries = [run_queue.add_to_queue(point.config, name=point.name) for point in points]
    print(f"sweep {points[0].config.output.group}: {len(entries)} run(s) queued in "
          f"{run_queue.queue_dir(config.output.runs_root)}")
    if args.no_run:
        return 0
    ran = _drive(config.output.runs_root, [e.number for e in entries], stop_on_error=args.stop_on_error)
    rows = sweep_table([Path(e.run_dir) for e in ran if e.run_dir], varied)
    print(_sweep_columns(rows, varied))
    failed = sum(e.status == run_queue.FAILED for e in ran)
    return 0 if not failed else 2


def _drive(root, only, *, stop_on_error: bool):
    """Run the queue with a line per start and end; Ctrl-C stops the current run after its step (it saves its
    adapter and checkpoint) and leaves the rest of the queue pending."""
    from workbench.core import run_queue

    stop = {"requested": False}

    def on_sigint(signum, frame):
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        print("stopping the current run after its step; the rest of the queue stays pending (Ctrl-C again to "
              "abort)", flush=True)

    def report(entry) -> None:
        if entry.status == run_queue.RUNNING:
            print(f"[{entry.id}] {entry.name}: running in {entry.run_dir}", flush=True)
        else:
            print(f"[{entry.id}] {entry.name}: {entry.status}" + (f" — {entry.message}" if entry.message else ""),
                  flush=True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        return run_queue.run_queue(root, only=only, continue_on_error=not stop_on_error,
                                   should_stop=lambda: stop["requested"], report=report)
    finally:
        signal.signal(signal.SIGINT, previous)


def _default_root() -> str:
    from workbench.core.config import OutputConfig

    return OutputConfig().runs_root


def _columns(rows) -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _sweep_columns(rows, varied) -> str:
    from workbench.core.fsutil import format_size

    from .runs import _duration, _number

    # Task metrics: each metric's best evaluation after step 0 (by its direction) and its step; retention at the
    # step of the best checkpoint (core/sweep.best_metrics).
    shown = [k for k in ("json_exact", "exact_match", "json_fields", "json_valid", "label", "regex", "perplexity",
                         "eval_accuracy", "eval_f1", "retention_agreement", "retention_ppl_ratio")
             if any(k in r.best for r in rows)]
    header = ("", "NAME", *varied, "STATUS", "TRAINABLE", "ADAPTER", "TIME", "LOSS", "BEST EVAL",
              *(f"BEST {k.removeprefix('eval_').upper()}" if not k.startswith("retention_") else k.upper()
                for k in shown))
    table = [header]
    for r in rows:
        eval_loss = r.best.get("eval_loss")
        table.append(("*" if r.on_front else "", r.name, *(r.values[k] for k in varied), r.status,
                      f"{r.trainable_params:,}" if r.trainable_params is not None else "-",
                      format_size(r.adapter_bytes) if r.adapter_bytes is not None else "-",
                      _duration(r.duration_s), _number(r.last_loss),
                      _at(eval_loss) if eval_loss is not None else _number(r.best_eval_loss),
                      *(_at(r.best.get(k)) for k in shown)))
    notes = "\n* on the Pareto front: no other run has fewer trainable parameters and a lower loss"
    notes += "\nBEST …: the best evaluation after step 0 @ its step"
    if any(k.startswith("retention_") for k in shown):
        notes += "; RETENTION_…: at the step of the best checkpoint (eval.best_metric)"
    return _columns(table) + notes


def _at(best) -> str:
    """``0.8125 @40``: a metric's best value and the step it came from."""
    from .runs import _number

    return "-" if best is None else f"{_number(best.value)} @{best.step}"
