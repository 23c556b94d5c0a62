"""``workbench export`` / ``merge`` / ``inspect-adapter``: adapters out of a run, into a model, under a lens."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from workbench.core.fsutil import format_size
from workbench.core.paths import translated_os_errors


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a run's adapter, as trained, in a portable form, or as GGUF / Ollama")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder, or any PEFT LoRA adapter folder")
    p.add_argument("--out", required=True, metavar="DIR", help="new folder to write the adapter to")
    p.add_argument("--portable", action="store_true",
                   help="one rank, lora_alpha == r, each module's scale baked into lora_B: read the same way by "
                        "PEFT, vLLM and llama.cpp (no rank/alpha patterns, no rsLoRA; not for DoRA)")
    gguf = p.add_argument_group("GGUF and Ollama (llama.cpp, Ollama, LM Studio, llamafile)")
    form = gguf.add_mutually_exclusive_group()
    form.add_argument("--gguf", action="store_true",
                      help="the base model with the adapter merged in, as one GGUF file (model-TYPE.gguf)")
    form.add_argument("--gguf-adapter", action="store_true",
                      help="the adapter in llama.cpp's GGUF adapter format (adapter-TYPE.gguf), for `llama-cli "
                           "--lora` or Ollama's ADAPTER line on the base's own GGUF file (not for DoRA)")
    gguf.add_argument("--ollama", action="store_true",
                      help="also write an Ollama Modelfile (chat template, stop tokens, parameters); implies --gguf "
                           "unless --gguf-adapter is given")
    gguf.add_argument("--type", metavar="TYPE",
                      help="GGUF type: f32, f16, bf16, q8_0 (default for --gguf), or with llama-cpp-python installed "
                           "q6_k, q5_k_m, q5_k_s, q4_k_m, q4_k_s, q3_k_m, q2_k; adapters: f32 (default), f16, bf16")
    gguf.add_argument("--base", metavar="MODEL",
                      help="the base model (default: the run's model.source from run.toml, else the adapter's "
                           "base_model_name_or_path)")
    gguf.add_argument("--base-gguf", metavar="FILE",
                      help="with --gguf-adapter: the GGUF file of the base the adapter will run on, checked to fit "
                           "(default: the GGUF the base was converted from, as for the built-in model)")
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
    if args.gguf or args.gguf_adapter or args.ollama:
        return _run_gguf_export(args)
    if args.type or args.base or args.base_gguf:
        from workbench.core.errors import WorkbenchError

        raise WorkbenchError("--type, --base and --base-gguf apply to GGUF exports only",
                             "add --gguf, --gguf-adapter or --ollama, or leave those options out")
    from workbench.core.export import export_adapter

    with translated_os_errors(args.out):
        out = export_adapter(args.run_dir, args.out, portable=args.portable)
    print(f"{'portable ' if args.portable else ''}adapter written to {out}")
    return 0


def _base_of(args: argparse.Namespace) -> str:
    """The base model of a GGUF export: --base, the run file's model.source, or the adapter's own record."""
    from workbench.core.errors import AdapterError

    if args.base:
        return args.base
    run_file = Path(args.run_dir) / "run.toml"
    if run_file.is_file():
        from workbench.core.config import RunConfig

        source = RunConfig.from_toml(run_file).model.source
        if source:
            return source
    from workbench.core.adapters import load_adapter

    recorded = load_adapter(args.run_dir).base_model_name
    if recorded and (Path(recorded).expanduser().exists() or recorded.startswith("builtin:") or "/" in recorded):
        return recorded
    raise AdapterError(f"{args.run_dir} does not say which base model it belongs to (no run.toml"
                       + (f"; the adapter records {recorded!r}, which is not a model to open" if recorded else "") + ")",
                       "pass the base model with --base MODEL")


def _run_gguf_export(args: argparse.Namespace) -> int:
    from workbench.core.gguf_export import prepare_adapter_export, prepare_merged_export

    if args.portable:
        from workbench.core.errors import WorkbenchError

        raise WorkbenchError("--portable is a PEFT form; a GGUF adapter already bakes each module's scale in",
                             "leave out --portable")
    base = _base_of(args)
    if args.gguf_adapter:
        job = prepare_adapter_export(args.run_dir, base, args.out, type_name=args.type or "f32",
                                     base_gguf=args.base_gguf, ollama=args.ollama)
    else:
        job = prepare_merged_export(base, args.run_dir, args.out, type_name=args.type or "q8_0", ollama=args.ollama)
    size = format_size(job.size) if job.size_is_exact else f"about {format_size(job.size)}"
    print(f"writing {job.out / job.file_name} ({size})", file=sys.stderr)
    progress = _ConsoleProgress("exporting")
    try:
        with translated_os_errors(args.out):
            result = job.run(sink=progress)
    finally:
        if progress.tty:
            print(file=sys.stderr)
    what = "GGUF adapter" if args.gguf_adapter else "GGUF model"
    print(f"{what} written to {result.gguf} ({format_size(result.bytes_written)})")
    if result.modelfile:
        print(f"Ollama Modelfile: {result.modelfile}")
    if result.instructions:
        print("next:\n  " + result.instructions.replace("\n", "\n  "))
    return 0


class _ConsoleProgress:
    """Prints merge progress to stderr: one self-overwriting line on a terminal, every 10 % otherwise."""

    def __init__(self, verb: str = "merging") -> None:
        self.tty = sys.stderr.isatty()
        self.shown = -1
        self.verb = verb
        self.task = ""

    def emit(self, event: Any) -> None:
        if event.kind == "message":
            print(f"\n{event.text}" if self.tty and self.shown >= 0 else event.text, file=sys.stderr)
        elif event.kind == "progress" and event.total:
            if event.task != self.task:  # a new phase (the GGUF export's quantization) starts from 0 %
                self.task, self.shown = event.task, -1
            percent = 100 * event.done // event.total
            step = percent if self.tty else percent - percent % 10
            if step > self.shown:
                self.shown = step
                verb = "quantizing" if event.task == "quantize" else self.verb
                amount = (f"{event.done} of {event.total} tensors" if event.unit == "tensors"
                          else f"{format_size(event.done)} of {format_size(event.total)}")
                line = f"{verb} {percent:3d}%  {amount}  {event.detail}"
                print(f"\r{line}" if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)


def run_merge(args: argparse.Namespace) -> int:
    from workbench.core.merge import merge_adapter

    progress = _ConsoleProgress()
    try:
        with translated_os_errors(args.out):
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
