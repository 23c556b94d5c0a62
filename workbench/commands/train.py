"""``workbench train RUN.toml`` and ``workbench resume RUN_DIR``: the engine with a console face."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a LoRA adapter from a run file (headless)",
                       description="Train the run described by RUN.toml. Ctrl-C stops gracefully: the adapter and a "
                                   "checkpoint are saved, and `workbench resume RUN_DIR` continues later.")
    p.add_argument("run_file", help="run configuration (.toml), e.g. one saved from the window")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set training.learning_rate=1e-4 (repeatable)")
    p.add_argument("--run-dir", help="exact run folder to create (default: under output.runs_root)")
    p.add_argument("--quiet", action="store_true", help="no progress line, only the final summary")
    p.set_defaults(func=run_train)

    r = sub.add_parser("resume", help="continue a stopped or crashed run from its newest complete checkpoint")
    r.add_argument("run_dir", help="the run folder")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=run_resume)

    c = sub.add_parser("control", help="stop, pause, continue or checkpoint a run in another process (or on a cluster)",
                       description="Ask a running training to stop (saving adapter and checkpoint), pause, continue after "
                                   "a pause, or save a checkpoint now — through its run folder, so it works for runs "
                                   "started elsewhere, including torchrun jobs on shared storage.")
    c.add_argument("run_dir", help="the run folder")
    c.add_argument("action", choices=["stop", "pause", "continue", "checkpoint"])
    c.set_defaults(func=run_control)


def run_control(args: argparse.Namespace) -> int:
    from workbench.core.errors import WorkbenchError
    from workbench.core.runs import RunStatus, run_status, send_control

    status = run_status(args.run_dir)
    if status is not RunStatus.RUNNING:
        raise WorkbenchError(f"the run {args.run_dir} is not running ({status.value})", "see `workbench runs`")
    send_control(args.run_dir, "resume" if args.action == "continue" else args.action)
    print(f"{args.action} requested; the run acts on it after its current step")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from workbench.core.config import RunConfig

    config = RunConfig.from_toml(args.run_file)
    if args.overrides:
        config = config.with_overrides(args.overrides)
    # The engine (torch, transformers, datasets: seconds) only once the run file is known good: a missing or bad
    # run file, or a bad --set, is answered at once.
    from workbench.core.training import run

    return drive(lambda sink, control: run(config, sink, control, run_dir=args.run_dir), args.quiet)


def run_resume(args: argparse.Namespace) -> int:
    from workbench.core.training import resume

    return drive(lambda sink, control: resume(args.run_dir, sink, control), args.quiet)


# Signals that mean "stop soon, keep the work": SIGTERM is what Slurm (scancel, time limit), docker stop, systemd
# and most schedulers send; SIGUSR1 is the pre-emption warning a job can ask for (sbatch --signal=USR1@120).
STOP_SIGNALS = ("SIGTERM", "SIGUSR1")


def drive(start, quiet: bool) -> int:
    """Run ``start(sink, control)`` with a console face; the exit code is the run's final status."""
    from workbench.cli import say
    from workbench.core.exitcodes import EXIT_OK, EXIT_STOPPED
    from workbench.core.control import RunControl

    control = RunControl()
    console = ConsoleSink(quiet=quiet)

    def on_sigint(signum, frame):
        if control.stop_requested:  # second Ctrl-C: the user really wants out
            raise KeyboardInterrupt
        console.note("stopping after this step (adapter and checkpoint are saved); Ctrl-C again to abort")
        control.request_stop()

    def on_stop_signal(signum, frame):
        if not control.stop_requested:
            console.note(f"{signal.Signals(signum).name} received: stopping after this step (adapter and checkpoint "
                         "are saved; `workbench resume` continues the run)")
        control.request_stop()

    # Under torchrun only rank 0 takes requests (they reach the other ranks through the engine); the other
    # ranks ignore Ctrl-C and the stop signals so that none of them stops on its own (torchrun forwards a
    # SIGTERM to every rank).
    is_main = os.environ.get("RANK", "0") == "0"
    handlers = {signal.SIGINT: on_sigint if is_main else signal.SIG_IGN}
    for name in STOP_SIGNALS:
        if hasattr(signal, name):  # SIGUSR1 does not exist on Windows
            handlers[getattr(signal, name)] = on_stop_signal if is_main else signal.SIG_IGN
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        result = start(console, control)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        console.end_line()
    if is_main:  # under torchrun, one summary line, not one per process
        try:
            print(f"{result.status}: step {result.final_step}, adapter in {result.adapter_dir}", flush=True)
        except (OSError, ValueError):  # stdout went away: the run's outcome is in its folder and the exit code
            say(f"{result.status}: step {result.final_step}, adapter in {result.adapter_dir}")
    if result.status == "finished":
        return EXIT_OK
    # torchrun counts any exit code but 0 as a crashed worker: it prints a ChildFailedError traceback, exits 1
    # and, with --max-restarts, starts the run again. Under it a stopped run exits 0; its folder says
    # "stopped" (`workbench runs --status RUN_DIR`, which the Slurm script reads to requeue the job).
    return EXIT_OK if "TORCHELASTIC_RUN_ID" in os.environ else EXIT_STOPPED


class ConsoleSink:
    """A progress bar and one status line (loss, lr, tokens/s, ETA), rewritten in place on a terminal."""

    def __init__(self, quiet: bool = False, stream=None):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        try:
            self.tty = self.stream.isatty()
        except (OSError, ValueError):  # already closed
            self.tty = False
        self._open_line = False
        self._last_print = 0.0
        self.closed = False  # the stream failed once: written to no more

    def emit(self, event) -> None:
        from workbench.core import events as ev

        if isinstance(event, ev.RunStarted):
            self.note(f"run folder: {event.run_dir}")
            self.note(f"device: {event.device} ({event.device_name}), precision {event.precision}, "
                      f"{event.trainable_params:,} trainable of {event.total_params:,} parameters, {event.total_steps} steps, "
                      f"global batch {event.global_batch}")
        elif isinstance(event, ev.Step):
            if not self.quiet:
                self._progress(event)
        elif isinstance(event, ev.Evaluation):
            self.note(f"step {event.step}: eval loss {event.eval_loss:.4f}")
        elif isinstance(event, ev.CheckpointSaved):
            self.note(f"checkpoint saved: {event.path}")
        elif isinstance(event, ev.Sample):
            self.note(f"sample @ step {event.step}: {event.prompt!r} → {event.completion!r}")
        elif isinstance(event, (ev.Paused, ev.Resumed)):
            self.note(f"{event.kind} at step {event.step}")
        elif isinstance(event, ev.Progress):  # e.g. the built-in model's one-time conversion
            self.note(f"{event.task}: {event.done}/{event.total} {event.unit} {event.detail}".rstrip())
        elif isinstance(event, ev.Message):
            self.note(("warning: " if event.level == "warning" else "") + event.text)
        # Failed is not printed: the exception that follows it reaches the CLI, which prints it once.

    def _progress(self, e) -> None:
        now = time.monotonic()
        last = e.step >= e.total_steps
        if self.tty and not last and now - self._last_print < 0.2:
            return
        self._last_print = now
        width = 24
        filled = int(width * e.step / max(e.total_steps, 1))
        bar = "█" * filled + "·" * (width - filled)
        tps = f"{e.tokens_per_second:,.0f} tok/s" if e.tokens_per_second else "– tok/s"
        if e.trained_tokens_per_second:  # padding and template tokens flatter tok/s: what carries loss, and examples
            tps += f" ({e.trained_tokens_per_second:,.0f} trained, {e.examples_per_second or 0:,.1f} ex/s)"
        eta = _duration(e.eta_s) if e.eta_s is not None else "–"
        line = f"[{bar}] {e.step}/{e.total_steps}  loss {e.loss:.4f}  lr {e.learning_rate:.2e}  {tps}  ETA {eta}"
        if self.tty:
            self._write("\r" + line.ljust(100))
            self._open_line = True
        else:
            self._write(line + "\n")

    def note(self, text: str) -> None:
        self.end_line()
        self._write(text + "\n")

    def end_line(self) -> None:
        if self._open_line:
            self._open_line = False
            self._write("\n")

    def _write(self, text: str) -> None:
        """The console is a courtesy: when it goes away (`| head`, a log collector that died) the run goes on,
        recorded in its folder, and the console is silent from then on."""
        if self.closed:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # BrokenPipeError, EIO from a vanished terminal, a closed file
            self.closed = True


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
