"""``workbench demo [--train]``: the built-in model and the demo task, headless.

Without ``--train`` it converts the built-in model if this is its first use (with progress; about a
minute, once) and says what the demo is and how to run it. With ``--train`` it then trains the demo run
file, exactly as ``workbench train resources/examples/demo.toml`` does from the repository root, but from
any working directory: the run file's relative data paths are read relative to the repository root.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="prepare the built-in model and the demo task; --train trains it headless",
        description="Convert the built-in SmolLM2-135M-Instruct model on first use (once, cached) and show the demo "
                    "task: payment sentences to one-line JSON. With --train, train the demo run "
                    "(resources/examples/demo.toml) and print the samples before and after.",
    )
    p.add_argument("--train", action="store_true", help="train the demo run now (a few minutes on a laptop CPU)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the demo run, e.g. --set training.max_steps=10 (repeatable)")
    p.add_argument("--run-dir", help="exact run folder to create (default: a new folder under ./runs)")
    p.add_argument("--quiet", action="store_true", help="no progress line while training")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from workbench.core.builtin import builtin_model, ensure_builtin, is_builtin_source
    from workbench.core.demo import demo_config, demo_run_file

    config = demo_config(args.overrides)
    out = sys.stdout
    source = config.model.source
    if is_builtin_source(source):
        model = builtin_model(source)
        progress = _ConversionProgress(sys.stderr)
        folder = ensure_builtin(source, sink=progress)
        progress.end()
        state = f"converted now in {progress.seconds:.0f} s" if progress.converted else "already converted"
        print(f"base model:  {model.source} — {model.title}, {model.license} ({model.distribution} {model.version})", file=out)
        print(f"             {folder} ({state})", file=out)
    else:
        print(f"base model:  {source}", file=out)
    for label, files in (("train", config.data.train_files), ("validation", config.data.validation_files)):
        for f in files:
            print(f"{label + ':':<12} {f} ({_rows(Path(f))} rows)", file=out)
    print(f"run file:    {demo_run_file()}", file=out)
    if not args.train:
        print("\nTask: turn a sentence about a payment into one line of JSON "
              '{"name", "date" (ISO), "amount" (a number), "currency" (USD/EUR/GBP)}.', file=out)
        print("Train it headless:   workbench demo --train", file=out)
        print("Or open the window:  workbench", file=out)
        return 0

    from workbench.commands.train import drive
    from workbench.core.training import run

    out.flush()
    return drive(lambda sink, control: run(config, sink, control, run_dir=args.run_dir), args.quiet)


def _rows(path: Path) -> int | str:
    try:
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    except OSError:
        return "missing"


class _ConversionProgress:
    """Prints the one-time conversion's steps on one line (or one line per step when not a terminal)."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.converted = False
        self.started = time.monotonic()
        self.seconds = 0.0

    def emit(self, event) -> None:
        from workbench.core.events import Message, Progress

        if isinstance(event, Progress) and event.task == "convert":
            if not self.converted:
                self.started = time.monotonic()
                self.converted = True
            line = f"converting the built-in model (once): {event.done}/{event.total} {event.detail}"
            self.stream.write(("\r" + line.ljust(110)) if self.tty else line + "\n")
            self.stream.flush()
            self.seconds = time.monotonic() - self.started
        elif isinstance(event, Message):
            self.stream.write(event.text + "\n")

    def end(self) -> None:
        if self.tty and self.converted:
            self.stream.write("\n")
            self.stream.flush()
