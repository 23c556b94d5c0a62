"""Command line: ``workbench [gui]`` starts the window; the other subcommands run the same engine headless.

Each subcommand lives in ``workbench/commands/<module>.py`` with ``register(subparsers)`` that adds its
parser and sets ``func(args) -> int``. Heavy imports (torch, transformers) happen inside ``func`` so that
``workbench --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from workbench.core.exitcodes import EXIT_BUG, EXIT_INTERRUPTED, EXIT_OK, EXIT_STOPPED, EXIT_USER  # noqa: F401

COMMAND_MODULES = ("gui", "inspect", "train", "runs", "launch", "adapters", "demo", "queue", "desktop", "intruders")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workbench",
        description="LoRA Workbench: design, train, inspect, export and merge LoRA adapters. "
        "Run without a subcommand to open the window.",
    )
    from workbench import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"workbench.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].lower().endswith(".toml") and argv[0] not in COMMAND_MODULES:
        argv = ["gui", *argv]  # `workbench RUN.toml` opens the window with that run file, as `workbench gui RUN.toml`
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["gui", *argv])
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = SurvivingStream(sys.stdout), SurvivingStream(sys.stderr)
    try:
        return run_guarded(args)
    finally:
        _quiet_closed_streams()
        sys.stdout, sys.stderr = streams


def run_guarded(args: argparse.Namespace) -> int:
    """The one place every command's failure is reported: never a traceback on screen."""
    from workbench.core.errors import WorkbenchError

    try:
        return int(args.func(args) or 0)
    except WorkbenchError as exc:
        say(f"error: {exc.message}")
        if exc.hint:
            say(f"hint: {exc.hint}")
        return EXIT_USER
    except BrokenPipeError:  # output piped into `head` (or a log collector) that closed early: not an error
        return EXIT_OK
    except KeyboardInterrupt:
        say("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        from workbench.core.crashlog import report_unexpected

        line, where, _log = report_unexpected(f"workbench {args.command}", exc)
        say(f"error: {line}")
        say(where)
        return EXIT_BUG


def say(text: str) -> None:
    """One line to stderr; a closed or broken stderr is not a second error."""
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # ValueError: the stream was closed by someone
        pass


class SurvivingStream:
    """sys.stdout / sys.stderr for the length of a command: when the reader goes away (`| head`, a log collector
    that died, a closed terminal) the first failed write points the stream's file descriptor at /dev/null, so
    that nothing else that writes there — a library's progress bar, a warning, our own console — fails the
    run because of it. What the run does is recorded in its folder; the exit code still tells the outcome."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):
            _to_devnull(self._stream)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            _to_devnull(self._stream)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _to_devnull(stream) -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, stream.fileno())
        finally:
            os.close(devnull)
        stream.flush()  # what was buffered goes to /dev/null now
    except (OSError, ValueError, AttributeError):  # no real file descriptor (a test's capture): nothing to do
        pass


def _quiet_closed_streams() -> None:
    """A reader that went away must not turn into Python's "Exception ignored … BrokenPipeError" at exit
    (and exit code 120): flush now, and point a broken stream at /dev/null."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            _to_devnull(stream)
