"""``workbench export`` / ``merge`` / ``inspect-adapter``: adapters out of a run, into a model, under a lens."""

from __future__ import annotations

import argparse
import errno
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from workbench.core.fsutil import format_size


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a run's adapter, as trained or in a portable form")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder, or any PEFT LoRA adapter folder")
    p.add_argument("--out", required=True, metavar="DIR", help="new folder to write the adapter to")
    p.add_argument("--portable", action="store_true",
                   help="one rank, lora_alpha == r, each module's scale baked into lora_B: read the same way by "
                        "PEFT, vLLM and llama.cpp (no rank/alpha patterns, no rsLoRA; not for DoRA)")
    p.set_defaults(func=run_export)

    p = sub.add_parser("merge", help="merge an adapter into its base model, one tensor at a time")
    p.add_argument("--base", required=True, metavar="MODEL", help="base model: a local Hugging Face folder")
    p.add_argument("--adapter", required=True, metavar="DIR", help="run folder or PEFT LoRA/DoRA adapter folder")
    p.add_argument("--out", required=True, metavar="DIR", help="new folder for the merged model")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"],
                   help="dtype of the merged weights (default: keep the base model's)")
    p.set_defaults(func=run_merge)

    p = sub.add_parser("inspect-adapter", help="what an adapter changes, module by module")
    p.add_argument("adapter", metavar="DIR", help="run folder or PEFT LoRA/DoRA adapter folder")
    p.add_argument("--base", metavar="MODEL", help="base model folder: checks the fit and adds ||ΔW|| / ||W||")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run_inspect)


def run_export(args: argparse.Namespace) -> int:
    from workbench.core.export import export_adapter

    with _writing(args.out):
        out = export_adapter(args.run_dir, args.out, portable=args.portable)
    print(f"{'portable ' if args.portable else ''}adapter written to {out}")
    return 0


@contextmanager
def _writing(out: str) -> Iterator[None]:
    """An operating-system error while an output folder is written (disk full, no permission, a file where a
    folder should be) is the user's to fix: say so in one message. The engine has removed what it wrote."""
    try:
        yield
    except OSError as exc:
        from workbench.core.errors import OutputError

        reason = exc.strerror or str(exc)
        if exc.filename and str(exc.filename) != str(out):
            reason += f" ({exc.filename})"
        if exc.errno in (errno.ENOTDIR, errno.EEXIST) and exc.filename and Path(exc.filename).is_file():
            reason = f"{exc.filename} is a file, not a folder"
        if exc.errno == errno.ENOSPC:
            hint = "free some disk space, or choose --out on a disk with more room"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            hint = "choose an --out folder you can write to"
        elif exc.errno in (errno.ENOTDIR, errno.EEXIST):
            hint = "part of the --out path is a file, not a folder: choose another --out"
        else:
            hint = "choose another --out folder"
        written = " (nothing was written)" if not Path(out).exists() else ""
        raise OutputError(f"cannot write {out}: {reason}{written}", hint) from None


class _ConsoleProgress:
    """Prints merge progress to stderr: one self-overwriting line on a terminal, every 10 % otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.shown = -1

    def emit(self, event: Any) -> None:
        if event.kind == "message":
            print(f"\n{event.text}" if self.tty and self.shown >= 0 else event.text, file=sys.stderr)
        elif event.kind == "progress" and event.total:
            percent = 100 * event.done // event.total
            step = percent if self.tty else percent - percent % 10
            if step > self.shown:
                self.shown = step
                line = f"merging {percent:3d}%  {format_size(event.done)} of {format_size(event.total)}  {event.detail}"
                print(f"\r{line}" if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)


def run_merge(args: argparse.Namespace) -> int:
    from workbench.core.merge import merge_adapter

    progress = _ConsoleProgress()
    try:
        with _writing(args.out):
            result = merge_adapter(args.base, args.adapter, args.out, dtype=args.dtype, sink=progress)
    finally:
        if progress.tty:
            print(file=sys.stderr)
    print(f"merged {result.merged_modules} modules into {result.output} ({format_size(result.bytes_written)} of weights)")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from workbench.core.adapter_report import inspect_adapter

    report = inspect_adapter(args.adapter, args.base)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    ranks = sorted({m.rank for m in report.modules})
    rank_text = str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}–{ranks[-1]}"
    print(f"{report.adapter}: {report.method}, {len(report.modules)} modules, rank {rank_text}"
          + (f", base {report.base}" if report.base else ""))
    width = max(len(m.name) for m in report.modules)
    print(f"{'module':<{width}}  {'r':>3}  {'scale':>7}  {'‖ΔW‖F':>9}  {'‖ΔW‖/‖W‖':>9}  {'eff.r':>5}  top singular values")
    for m in report.modules:
        rel = f"{m.relative_norm:9.2e}" if m.relative_norm is not None else f"{'-':>9}"
        top = " ".join(f"{s:.3g}" for s in m.singular_values[:4])
        print(f"{m.name:<{width}}  {m.rank:>3}  {m.scale:>7.3g}  {m.delta_norm:9.3e}  {rel}  {m.effective_rank:>5}  {top}")
    print("eff.r: singular values carrying 90 % of ‖ΔW‖F²"
          + ("; DoRA: figures describe s·B·A before the learned magnitude" if report.method == "DoRA" else ""))
    return 0
