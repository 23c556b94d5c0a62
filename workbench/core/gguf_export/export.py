"""The two GGUF exports as entry points for the CLI and the window: a merged model, and a LoRA adapter; each
optionally with an Ollama ``Modelfile``.

Both follow the rules of every output here: everything that can be checked is checked before a byte is
written (architecture, tokenizer, type, adapter form, chat template, free disk space against the size the
plan computes); the output folder is built as ``.tmp-<name>.partial`` and renamed into place only when
complete (``fsutil.atomic_directory``), so a stop request, an error, a full disk or a killed process leaves
nothing under the final name. Progress goes to ``sink`` as ``Progress`` events (``"gguf"``: bytes of the
checkpoint read; ``"quantize"``: tensors quantized by llama.cpp); ``control.request_stop()`` stops between
tensors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from workbench.core.adapters import LoraAdapter, input_folders
from workbench.core.base_model import BaseCheckpoint
from workbench.core.control import Control, RunControl
from workbench.core.errors import ModelSourceError, OutputError, WorkbenchError
from workbench.core.events import Message, Sink, SinkLike, as_sink
from workbench.core.fsutil import atomic_directory, disk_full_reported, format_size, free_bytes, mount_point
from workbench.core.gguf_import import read_gguf_header
from workbench.core.model_card import write_model_card
from workbench.core.paths import check_new_output, require_regular_file

from .adapter import AdapterPlan, check_against_gguf, plan_adapter
from .merged import MergedPlan, gguf_origin, plan_merged
from .ollama import MODELFILE, modelfile_text, ollama_instructions, ollama_template
from .templates import RecognisedTemplate
from .writer import Stopped

__all__ = ["GgufResult", "MergedExport", "AdapterExport", "prepare_merged_export", "prepare_adapter_export",
           "export_gguf", "export_gguf_adapter"]


@dataclass(frozen=True)
class GgufResult:
    output: Path | None  # the new folder; None when stopped
    gguf: Path | None = None
    modelfile: Path | None = None
    bytes_written: int = 0
    stopped: bool = False
    messages: tuple[str, ...] = ()
    instructions: str = ""  # what to run next (ollama create …), for the dialog's result and the CLI


@dataclass
class MergedExport:
    """A checked merged export, ready to ``run``: the dialog reads ``size`` and ``messages`` first."""

    plan: MergedPlan
    out: Path
    template: RecognisedTemplate | None
    messages: list[str] = field(default_factory=list)

    @property
    def file_name(self) -> str:
        return f"model-{self.plan.gtype.label}.gguf"

    @property
    def size(self) -> int:
        return self.plan.size

    @property
    def size_is_exact(self) -> bool:
        return self.plan.gtype.writer == "python"

    def run(self, *, sink: SinkLike = None, control: Control | None = None) -> GgufResult:
        return _run_merged(self, as_sink(sink), control or RunControl())


@dataclass
class AdapterExport:
    plan: AdapterPlan
    out: Path
    base_gguf: Path | None
    template: RecognisedTemplate | None
    messages: list[str] = field(default_factory=list)

    @property
    def file_name(self) -> str:
        return f"adapter-{self.plan.file.tensors[0].ggml_type if self.plan.file.tensors else 'F32'}.gguf"

    @property
    def size(self) -> int:
        return self.plan.size

    size_is_exact = True

    def run(self, *, sink: SinkLike = None, control: Control | None = None) -> GgufResult:
        return _run_adapter(self, as_sink(sink), control or RunControl())


def _new_output(out: str | Path) -> Path:
    return check_new_output(out)


def _outside_inputs(out: Path, checkpoint: BaseCheckpoint, adapter: LoraAdapter | None,
                    gguf_base: Path | None = None) -> None:
    """Never inside the base model's folder, the adapter's, or the folder of the GGUF base."""
    check_new_output(out, inputs=input_folders(adapter=adapter, base=checkpoint, gguf_base=gguf_base))


def _check_room(out: Path, needed: int) -> None:
    """Refuse before writing when the disk cannot hold the output (with a margin for the file system's own
    blocks); a disk that fills up anyway while writing is still caught (``disk_full_reported``)."""
    try:
        free = free_bytes(out)
    except OSError:
        return
    if needed + (needed >> 6) + (1 << 20) > free:
        raise OutputError(f"cannot write {out}: not enough free disk space (nothing was written). {format_size(free)} "
                          f"free on {mount_point(out)}; the output needs about {format_size(needed)}",
                          "free some disk space, or write the output to a disk with more room")


def _ollama_name(out: Path) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", out.name.lower()).strip("-.") or "workbench-model"


def prepare_merged_export(base: str | Path | BaseCheckpoint, adapter: str | Path | LoraAdapter | None, out: str | Path,
                          *, type_name: str = "q8_0", ollama: bool = False, name: str | None = None) -> MergedExport:
    """Check a merged export and plan every tensor; raises a ``WorkbenchError`` for anything that would fail."""
    out = _new_output(out)
    plan = plan_merged(base, adapter, type_name, name=name)
    _outside_inputs(out, plan.checkpoint, plan.adapter)
    template = None
    if ollama:
        template = ollama_template(plan.checkpoint.path, add_bos=plan.vocab.add_bos, chat_template=plan.vocab.chat_template)
    return MergedExport(plan, out, template, list(plan.messages))


def prepare_adapter_export(adapter: str | Path | LoraAdapter, base: str | Path | BaseCheckpoint, out: str | Path, *,
                           type_name: str = "f32", base_gguf: str | Path | None = None, ollama: bool = False,
                           name: str | None = None) -> AdapterExport:
    """Check a GGUF adapter export. ``base_gguf`` is the GGUF model the adapter will be used with (default: the
    GGUF file the base was converted from, if any); it is checked to hold every adapted tensor."""
    out = _new_output(out)
    plan = plan_adapter(adapter, base, type_name, name=name)
    gguf_base = Path(base_gguf) if base_gguf is not None else gguf_origin(plan.checkpoint.path)
    _outside_inputs(out, plan.checkpoint, plan.adapter, gguf_base if base_gguf is not None else None)
    messages = []
    if gguf_base is not None:
        require_regular_file(gguf_base, "GGUF base", ModelSourceError, "give the .gguf file of the base model")
        if not gguf_base.is_file():
            raise WorkbenchError(f"GGUF base {gguf_base} does not exist", "give the .gguf file of the base model")
        read_gguf_header(gguf_base)  # a truncated file is named here, not in GGUFReader's numpy reshape errors
        check_against_gguf(plan, gguf_base)
    template = None
    if ollama:
        if gguf_base is None:
            raise WorkbenchError("an Ollama model made from an adapter needs the base model as a GGUF file (its FROM "
                                 f"line), and {plan.checkpoint.path} was not converted from one",
                                 "pass the base's .gguf file (--base-gguf FILE), or export the merged model "
                                 "(--gguf --ollama)")
        from .vocab import vocab_from_gguf

        vocab = vocab_from_gguf(gguf_base)
        template = ollama_template(plan.checkpoint.path, add_bos=vocab.add_bos, chat_template=vocab.chat_template)
    return AdapterExport(plan, out, gguf_base, template, messages)


def export_gguf(base: str | Path | BaseCheckpoint, adapter: str | Path | LoraAdapter | None, out: str | Path, *,
                type_name: str = "q8_0", ollama: bool = False, name: str | None = None, sink: SinkLike = None,
                control: Control | None = None) -> GgufResult:
    """``base`` with ``adapter`` merged (or ``adapter=None``: the base alone) as one GGUF file in the new folder
    ``out``, plus a ``Modelfile`` with ``ollama``."""
    return prepare_merged_export(base, adapter, out, type_name=type_name, ollama=ollama, name=name).run(
        sink=sink, control=control)


def export_gguf_adapter(adapter: str | Path | LoraAdapter, base: str | Path | BaseCheckpoint, out: str | Path, *,
                        type_name: str = "f32", base_gguf: str | Path | None = None, ollama: bool = False,
                        name: str | None = None, sink: SinkLike = None, control: Control | None = None) -> GgufResult:
    """``adapter`` in llama.cpp's GGUF adapter format in the new folder ``out``, plus a ``Modelfile`` (``FROM`` the
    GGUF base, ``ADAPTER`` the new file) with ``ollama``."""
    return prepare_adapter_export(adapter, base, out, type_name=type_name, base_gguf=base_gguf, ollama=ollama,
                                  name=name).run(sink=sink, control=control)


def _stopped(sink: Sink, what: str) -> GgufResult:
    sink.emit(Message(f"{what} stopped; nothing was written", level="warning"))
    return GgufResult(None, stopped=True)


def _run_merged(job: MergedExport, sink: Sink, control: Control) -> GgufResult:
    plan, out = job.plan, job.out
    for text in job.messages:
        sink.emit(Message(text))
    needed = plan.size + plan.scratch_bytes
    _check_room(out, needed)
    modelfile = None
    try:
        with disk_full_reported(out, needed), atomic_directory(out) as tmp:
            target = tmp / job.file_name
            if plan.gtype.writer == "python":
                plan.file.write(target, sink=sink, control=control, task="gguf")
            else:
                from .quantize import quantize_with_llama_cpp

                scratch = tmp / f".unquantized-{job.file_name}"
                plan.file.write(scratch, sink=sink, control=control, task="gguf")
                quantize_with_llama_cpp(scratch, target, plan.gtype.file_type, sink=sink, control=control,
                                        label=plan.gtype.label)
                scratch.unlink()
            if job.template is not None:
                text = modelfile_text(model=f"./{job.file_name}", adapter=None, template=job.template,
                                      folder=plan.checkpoint.path, context_length=plan.checkpoint.config.get(
                                          "max_position_embeddings"),
                                      comment=_comment(plan.checkpoint.path, plan.adapter, job.template))
                (tmp / MODELFILE).write_text(text, encoding="utf-8")
            written = target.stat().st_size
            write_model_card(tmp, kind="gguf", adapter=plan.adapter.path if plan.adapter else None,
                             base=plan.checkpoint.path, gguf_files=sorted(f.name for f in tmp.iterdir()), sink=sink)
    except Stopped:
        return _stopped(sink, "GGUF export")
    if job.template is not None:
        modelfile = out / MODELFILE
    return GgufResult(out, out / job.file_name, modelfile, written, messages=tuple(job.messages),
                      instructions=ollama_instructions(out, _ollama_name(out)) if modelfile else "")


def _run_adapter(job: AdapterExport, sink: Sink, control: Control) -> GgufResult:
    plan, out = job.plan, job.out
    _check_room(out, plan.size)
    modelfile = None
    try:
        with disk_full_reported(out, plan.size), atomic_directory(out) as tmp:
            target = tmp / job.file_name
            plan.file.write(target, sink=sink, control=control, task="gguf")
            if job.template is not None:
                text = modelfile_text(model=str(job.base_gguf.resolve()), adapter=f"./{job.file_name}",
                                      template=job.template, folder=plan.checkpoint.path,
                                      context_length=plan.checkpoint.config.get("max_position_embeddings"),
                                      comment=_comment(plan.checkpoint.path, plan.adapter, job.template))
                (tmp / MODELFILE).write_text(text, encoding="utf-8")
            written = target.stat().st_size
            write_model_card(tmp, kind="gguf-adapter", adapter=plan.adapter.path, base=plan.checkpoint.path,
                             gguf_files=sorted(f.name for f in tmp.iterdir()), sink=sink)
    except Stopped:
        return _stopped(sink, "GGUF adapter export")
    if job.template is not None:
        modelfile = out / MODELFILE
    instructions = ollama_instructions(out, _ollama_name(out)) if modelfile else (
        f"llama-cli -m {job.base_gguf} --lora {out / job.file_name}" if job.base_gguf else "")
    return GgufResult(out, out / job.file_name, modelfile, written, messages=tuple(job.messages),
                      instructions=instructions)


def _comment(base: Path, adapter: LoraAdapter | None, template: RecognisedTemplate) -> str:
    what = f"base {base}" + (f" + adapter {adapter.path}" if adapter is not None else "")
    return (f"Written by LoRA Workbench: {what}.\nChat template: {template.family.title}, translated from the "
            "model's own template and checked to render the same prompts.")
