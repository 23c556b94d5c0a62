"""Every case of the bad-input corpus (corpus.py) through the command line.

For each case: the command exits with status 2, prints one ``error:`` message that matches the case (it
names the problem) and a ``hint:`` line that matches too (it says what to do), and no traceback; every file
and folder the user had is byte-for-byte, mode and mtime unchanged; and the working folder stays empty
(no run folder, no output), except for ``late`` cases, which leave exactly one run folder, marked failed.

All cases run in-process (``workbench.cli.main``) for speed; those marked ``subprocess`` also run as
``python -m workbench`` to prove that nothing but the message reaches the terminal. Conditions that cannot
be made for real in a test are simulated at the system call: a full disk (``fsync`` fails with ENOSPC, as
the workbench flushes every file it writes), no permission (EACCES for the paths the case chmods, because
root, as CI often is, ignores permission bits), and an unreachable Hub.

Cases marked ``xfail`` are bugs in modules this corpus does not own; each reason names the fix. When a fix
lands, the case passes, strict xfail reports it, and the mark is removed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bad_inputs.corpus import ALL_CASES, CASES, GENERATED_CASES, GUI_CASES, GUI_KINDS, KINDS, Built, Case, Ctx, counts

MIN_CASES = 50


# ------------------------------------------------------------------------------------------------ helpers


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind, permission bits, and for files mtime and SHA-256."""
    out: dict[str, tuple] = {}

    def visit(folder: Path) -> None:
        try:
            entries = sorted(folder.iterdir())
        except PermissionError:  # the case made it unreadable on purpose; its mode is recorded by the parent
            out[str(folder.relative_to(root)) + "/*"] = ("unreadable",)
            return
        for path in entries:
            rel = str(path.relative_to(root))
            st = path.lstat()
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", mode)
                visit(path)
            elif not stat.S_ISREG(st.st_mode):  # a FIFO or socket: opening it would block the test
                out[rel] = ("special", stat.S_IFMT(st.st_mode), mode, st.st_mtime_ns)
            else:
                try:
                    digest = hashlib.sha256(path.read_bytes()).hexdigest()
                except PermissionError:
                    digest = "unreadable"
                out[rel] = ("file", mode, st.st_size, st.st_mtime_ns, digest)

    visit(root)
    return out


def split_message(err: str) -> tuple[str, str]:
    """The ``error:`` text (possibly several lines) and the ``hint:`` line of what the CLI printed last."""
    start = 0 if err.startswith("error: ") else err.rfind("\nerror: ") + 1
    assert start > 0 or err.startswith("error: "), f"no 'error:' line on stderr:\n{err[-3000:]}"
    message, _, hint = err[start + len("error: "):].partition("\nhint: ")
    return message.rstrip("\n"), hint.strip()


def check_refusal(case: Case, code: int, out: str, err: str) -> None:
    assert "Traceback" not in out + err, f"a traceback reached the user:\n{err[-3000:]}"
    assert code == 2, f"exit status {code}, expected 2; stderr:\n{err[-3000:]}"
    message, hint = split_message(err)
    assert re.search(case.expect, message, re.M), f"the message does not match {case.expect!r}:\n{message}"
    assert hint, f"no 'hint:' line saying what to do after:\n{message}"
    if case.hint:
        assert re.search(case.hint, hint), f"the hint does not match {case.hint!r}:\n{hint}"
    assert len(message) < 2500, f"the message is {len(message)} characters long: it should not dump the input"


def check_nothing_left(case: Case, cwd: Path) -> None:
    left = sorted(p.name for p in cwd.iterdir())
    if not case.late:
        assert left == [], f"the command failed before starting but left {left} in the working folder"
        return
    from workbench.core.runs import RunStatus, run_status

    assert left == ["runs"], left
    runs = list((cwd / "runs").iterdir())
    assert len(runs) == 1, runs
    assert run_status(runs[0]) is RunStatus.FAILED, "a run that stopped on bad input is marked failed"


def skip_unless_applicable(case: Case) -> None:
    if case.skip_if == "cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this case is about a machine without a CUDA GPU")


def apply_patch(name: str | None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, built: Built | None = None) -> None:
    if name == "disk-full":
        # Every file the workbench writes is flushed with fsync before it is renamed into place (fsutil); a full
        # disk reports there at the latest (write-back caches and network file systems report only there).
        def no_space(fd: int) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "fsync", no_space)
    elif name == "offline":
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    elif name == "no-permission":
        deny(monkeypatch, built.related["denied"])
    else:
        assert name is None, name


def deny(monkeypatch: pytest.MonkeyPatch, paths: list[Path]) -> None:
    """Refuse to open, list or create anything at or under ``paths`` with EACCES, as the kernel does for a
    non-root user after the case's chmod. (Root ignores permission bits, and CI often runs as root.) Making
    a folder that already exists is left alone: ``mkdir(exist_ok=True)`` of a parent must behave as usual."""
    import builtins

    roots = [os.fspath(p) for p in paths]

    def refused(path: object) -> bool:
        if not isinstance(path, (str, bytes, os.PathLike)) or isinstance(path, int):
            return False
        text = os.fsdecode(os.fspath(path))
        text = text if os.path.isabs(text) else os.path.join(os.getcwd(), text)
        return any(text == root or text.startswith(root + os.sep) for root in roots)

    def refuse(path: object) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))

    def guard(original, skip_existing_dirs: bool = False):
        def guarded(path, *args, **kwargs):
            if refused(path) and not (skip_existing_dirs and os.path.isdir(path)):
                refuse(path)
            return original(path, *args, **kwargs)

        return guarded

    monkeypatch.setattr(builtins, "open", guard(builtins.open))
    monkeypatch.setattr(os, "open", guard(os.open))
    monkeypatch.setattr(os, "scandir", guard(os.scandir))
    monkeypatch.setattr(os, "listdir", guard(os.listdir))
    monkeypatch.setattr(os, "mkdir", guard(os.mkdir, skip_existing_dirs=True))


def follow_captured_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """Library loggers (transformers) keep the stderr of the test that first used them, which capsys has closed
    since; point them at this test's stderr, as they would point at the terminal in a real run."""
    import logging

    for name in ("transformers", "datasets", "huggingface_hub"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                monkeypatch.setattr(handler, "stream", sys.stderr)
                if "flush" in vars(handler):  # transformers binds the first stderr's flush to its handler
                    monkeypatch.setattr(handler, "flush", sys.stderr.flush)


def params(cases: list[Case]) -> list:
    out = []
    for c in cases:
        marks = [pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else []
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


# ---------------------------------------------------------------------------------------------- the corpus


def test_the_corpus_has_enough_cases_of_every_kind():
    table = counts()
    print("\nbad-input corpus: " + ", ".join(f"{kind} {n}" for kind, n in table.items())
          + f"; {len(CASES)} hand-written, {len(ALL_CASES)} in all")
    assert len(CASES) >= MIN_CASES
    assert all(table[kind] >= 5 for kind in KINDS), table
    assert len({c.id for c in ALL_CASES}) == len(ALL_CASES), "case ids are unique"
    assert all(kind in GUI_KINDS for _, _, kind in GUI_CASES)
    assert len(GUI_CASES) >= 40


def test_gui_cases_build_what_the_window_opens(tmp_path, tiny_model_dir):
    """``GUI_CASES`` as the window's tests will use them: one builder per kind, in a folder of their own."""
    first = {}
    for case_id, builder, kind in GUI_CASES:
        first.setdefault(kind, (case_id, builder))
    assert set(first) == set(GUI_KINDS)
    for case_id, builder in first.values():
        built = builder(tmp_path / case_id, tiny_model_dir)
        assert built.target.is_relative_to(tmp_path / case_id / "user"), (case_id, built.target)


def test_every_run_file_field_has_generated_cases():
    from workbench.core.config import RunConfig

    fields = {f"{s}.{n}" for s, f in RunConfig.model_fields.items() for n in f.annotation.model_fields}
    covered = {key for key in fields if any(c.id.startswith(f"runfile-field-{key}-") for c in GENERATED_CASES)}
    assert covered == fields


@pytest.mark.parametrize("case", params(ALL_CASES))
def test_cli_refuses_bad_input_and_changes_nothing(case: Case, ctx: Ctx, capsys, monkeypatch, tmp_path):
    from workbench.cli import main

    skip_unless_applicable(case)
    built = case.build(ctx)
    before = snapshot(ctx.user)
    capsys.readouterr()  # what building the inputs printed
    apply_patch(case.patch, monkeypatch, tmp_path, built)
    follow_captured_stderr(monkeypatch)
    monkeypatch.chdir(ctx.cwd)

    code = main(built.argv)  # any exception other than the CLI's own handling would be a traceback

    out, err = capsys.readouterr()
    monkeypatch.undo()
    check_refusal(case, code, out, err)
    assert snapshot(ctx.user) == before, "the user's files were changed"
    check_nothing_left(case, ctx.cwd)


def test_the_same_inputs_without_the_fault_are_accepted(ctx: Ctx, capsys, monkeypatch):
    """The control: the harness's good model, data, run file and adapter pass the same checks, so every
    refusal above is caused by its case's fault."""
    from workbench.cli import main
    from workbench.core.config import RunConfig
    from workbench.core.models import check_weight_files, resolve_source
    from workbench.core.training import preflight

    monkeypatch.chdir(ctx.cwd)
    model, adapter = ctx.shared_model(), ctx.adapter()
    preflight(RunConfig.from_toml(ctx.runfile()))
    check_weight_files(resolve_source(str(model)))
    check_weight_files(resolve_source(str(ctx.sharded_model())))
    assert main(["inspect", str(model)]) == 0
    assert main(["inspect-adapter", str(adapter), "--base", str(model)]) == 0
    assert main(["export", str(adapter), "--out", str(ctx.cwd / "exported")]) == 0
    assert main(["merge", "--base", str(model), "--adapter", str(adapter), "--out", str(ctx.cwd / "merged")]) == 0
    capsys.readouterr()


def test_a_huge_csv_cell_is_data_not_an_error(ctx: Ctx):
    from workbench.core.config import DataConfig
    from workbench.core.data import detect

    big = ctx.write("big.csv", 'prompt,completion\n"' + "long document " * 20_000 + '", ok\n')
    info = detect(DataConfig(train_files=[str(big)]))
    assert info.format == "prompt-completion" and info.train_rows == 1


# ------------------------------------------------------------------------------------ through a subprocess


def test_no_traceback_reaches_the_terminal(tmp_path, tiny_model_dir):
    """The cases marked ``subprocess`` as a user runs them: ``python -m workbench ...`` in a fresh process
    (started together, so the slow imports overlap)."""
    chosen = [c for c in CASES if c.subprocess]
    assert len(chosen) >= 5
    from workbench.core.cache import CACHE_ENV

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets"), CACHE_ENV: str(tmp_path / "wb-cache")}
    running = []
    for c in chosen:
        ctx = Ctx(tmp_path / c.id, tiny_model_dir)
        built = c.build(ctx)
        before = snapshot(ctx.user)
        proc = subprocess.Popen([sys.executable, "-m", "workbench", *built.argv], cwd=ctx.cwd, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        running.append((c, ctx, before, proc))
    for c, ctx, before, proc in running:
        out, err = proc.communicate(timeout=240)
        try:
            check_refusal(c, proc.returncode, out, err)
            assert err.startswith("error: ") or c.kind in ("data", "adapter"), f"stderr starts with noise:\n{err}"
            assert snapshot(ctx.user) == before, "the user's files were changed"
            check_nothing_left(c, ctx.cwd)
        except AssertionError as exc:
            raise AssertionError(f"{c.id}: {exc}") from None


# ------------------------------------------------------------ the engine's own API (what the window calls)


@pytest.mark.parametrize("operation", ["export", "merge"])
def test_a_full_disk_is_an_output_error_in_the_engine(operation, ctx: Ctx, monkeypatch):
    from workbench.core.errors import OutputError
    from workbench.core.export import export_adapter
    from workbench.core.merge import merge_adapter

    model, adapter = ctx.shared_model(), ctx.adapter()
    apply_patch("disk-full", monkeypatch, ctx.root)
    out = ctx.cwd / "deeper" / "out"
    with pytest.raises(OutputError, match="No space left on device") as err:
        if operation == "export":
            export_adapter(adapter, out)
        else:
            merge_adapter(model, adapter, out)
    message = err.value.message
    assert message.startswith(f"cannot write {out}: No space left on device (nothing was written)"), message
    assert " free on " in message and "the output needs about " in message
    assert "free some disk space" in err.value.hint
    assert list(ctx.cwd.iterdir()) == [], "nothing left behind, not even the parent folder made for the output"


def test_weight_files_are_checked_from_headers(ctx: Ctx):
    """``models.check_weight_files``: what preflight should call (see the xfail cases) — fast, and exact."""
    from workbench.core.errors import ModelSourceError
    from workbench.core.models import check_weight_files, resolve_source

    truncated = ctx.model("truncated")
    ctx.truncate(truncated / "model.safetensors", 0.9)
    with pytest.raises(ModelSourceError, match=r"model\.safetensors is damaged or incomplete: the header describes"):
        check_weight_files(resolve_source(str(truncated)))

    cut_header = ctx.model("cut-header")
    (cut_header / "model.safetensors").write_bytes((cut_header / "model.safetensors").read_bytes()[:20])
    with pytest.raises(ModelSourceError, match="its header is missing or cut off"):
        check_weight_files(resolve_source(str(cut_header)))

    sharded = ctx.sharded_model()
    (sharded / "model-00001-of-00002.safetensors").unlink()
    with pytest.raises(ModelSourceError, match=r"model-00001-of-00002\.safetensors listed in model\.safetensors"
                                               r"\.index\.json but missing") as err:
        check_weight_files(resolve_source(str(sharded)))
    assert "download" in err.value.hint

    empty = ctx.model("no-weights")
    (empty / "model.safetensors").unlink()
    with pytest.raises(ModelSourceError, match="has no weight files"):
        check_weight_files(resolve_source(str(empty)))

    index_only = ctx.sharded_model("bad-index")
    (index_only / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {}}))
    with pytest.raises(ModelSourceError, match="lists no weights"):
        check_weight_files(resolve_source(str(index_only)))


# ------------------------------------------------------------------- accepted, but the user is told (warnings)


def test_warnings_reach_the_terminal_for_eval_steps_and_shared_validation_rows(ctx: Ctx, capsys, monkeypatch):
    """Valid settings that would not do what the user meant: the run trains, and says so on the console."""
    from workbench.cli import main

    monkeypatch.chdir(ctx.cwd)
    train = ctx.good_data()
    alone = ctx.runfile("alone.toml", training={"max_steps": 1, "batch_size": 1, "device": "cpu", "eval_steps": 1})
    shared = ctx.runfile("shared.toml", data={"validation_files": [str(train)]})
    assert main(["train", str(alone)]) == 0
    out, err = capsys.readouterr()
    assert "training.eval_steps = 1 is set, but there is no validation data" in out + err
    assert main(["train", str(shared)]) == 0
    out, err = capsys.readouterr()
    assert f"{train} is both a training and a validation file" in out + err
    assert "4 of the 4 validation rows are also training rows" in out + err


def test_runs_lists_the_runs_beside_symbolic_link_loops(ctx: Ctx, capsys, monkeypatch):
    """A folder walk over link loops (an entry pointing at itself, a run.toml that is a loop) lists what it can."""
    from workbench.cli import main

    monkeypatch.chdir(ctx.cwd)
    assert main(["train", str(ctx.runfile()), "--quiet"]) == 0
    root = ctx.cwd / "runs"
    (root / "loop").symlink_to(root / "loop")
    (root / "broken-run").mkdir()
    (root / "broken-run" / "run.toml").symlink_to(root / "broken-run" / "run.toml")
    capsys.readouterr()
    assert main(["runs", "--root", str(root)]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "finished" in out, out + err
