"""Kill harness: SIGKILL and SIGTERM training, SIGKILL export and merge at random moments, then resume or rerun,
and check that nothing damaged ever sits under a final name, that training never loses more than one
checkpoint interval, and that no run ever trains past its target.

    .venv/bin/python bench/kill_harness.py                        # the full run (16 trials, ~6-9 min on 2 cores)
    .venv/bin/python bench/kill_harness.py --trials 6 --seed 3    # a quick one

Each trial starts a real ``workbench`` process (``train RUN.toml``, ``export RUN_DIR --out``, ``merge
--base --adapter --out``) and kills it with SIGKILL — no handler, no cleanup — at a random point found by
watching the files it writes: right after a randomly chosen step is logged, while a randomly chosen
checkpoint folder is being written, while the final adapter, the export or the merge is being written
(the moment its ``.tmp-….partial`` folder appears, plus a random delay up to the time that phase took in
an uninterrupted reference run), or at a random time during start-up. A killed training is resumed with
``workbench resume RUN_DIR`` (which may itself be killed again, up to ``--max-kills`` times), or rerun
from scratch when it had no complete checkpoint yet; a killed export or merge is rerun. A kill during the
final adapter save leaves the checkpoint of the last step: the resume must finish the run from it without
training a step (before that rule it trained a step past ``max_steps``).

SIGTERM trials send SIGTERM (what Slurm, ``docker stop`` and systemd send) after a random step: the process
must finish the step, save a checkpoint at it and the adapter, record the run as stopped and exit 3; the
resume must continue from exactly that step.

After every kill, independently of the code under test (its own safetensors header parser, ``torch.load``
and ``json``):

* every folder under a final name loads in full: the run's ``adapter/``, the export, the merged model
  (byte-identical to the reference output, in fact), and every ``checkpoint-N`` (trainer state, adapter
  tensors, optimizer with a state per trained tensor, scheduler, RNG): the engine writes a checkpoint into
  ``checkpoints/.tmp-checkpoint-N.partial/`` and renames it into place when whole, so a half-written
  ``checkpoint-N`` is a violation (before that change the HF Trainer wrote them in place, and such folders
  only had to be judged incomplete); ``status.json``, ``run.toml`` and every whole line of
  ``metrics.jsonl`` parse, and no step in it is beyond ``max_steps``;
* ``.tmp-…`` folders are never listed as runs or checkpoints, and are gone after the rerun or resume;
* the resume continues from the newest checkpoint that loads in full (checked against the
  ``resumed_from_step`` the resumed engine records, or the step of the ``finished`` event of a run finished
  from its last checkpoint), and the steps lost — the last step in ``metrics.jsonl`` at the kill minus the
  step resumed from — are at most ``save_steps``;
* the finished run has every step 1…N exactly once in ``metrics.jsonl``, its losses equal those of an
  uninterrupted reference run (relative 1e-4), and its adapter equals the reference adapter.

The run prints a summary and exits non-zero on any violation. ``tests/core/test_kill_harness.py`` runs a
reduced version (4 trials, resumes in-process) as part of the test suite.
"""

from __future__ import annotations

import os
import sys

# bench/inspect.py would shadow the stdlib's inspect module (which dataclasses imports) for every script here.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "tests") not in sys.path:
    sys.path.append(str(REPO / "tests"))  # tiny.py: tiny models and tokenizer built offline

SIZES = {  # llama configs for the trained (and merged) model
    "test": dict(hidden_size=64, intermediate_size=96, shard="100KB"),
    "bench": dict(hidden_size=256, intermediate_size=512, shard="1MB"),
}
# The final adapter's save comes twice in each cycle: a kill there is the one that could finish a run past its target.
TRAIN_TRIGGERS = ("adapter", "step", "checkpoint", "adapter", "startup")
EXIT_STOPPED = 3  # workbench.core.exitcodes: a run stopped before its target, resumable


class Violation(Exception):
    """A broken guarantee (corrupt output, a lost checkpoint interval, a wrong resume point)."""


# ------------------------------------------------------------------------------------------ set-up


@dataclass
class Setup:
    work: Path
    model: Path
    run_file: Path
    max_steps: int
    save_steps: int
    reference_run: Path
    reference_losses: list[float]
    adapter_shapes: dict[str, tuple]  # tensor name -> (dtype, shape) of the trained adapter
    exports: dict[bool, Path]  # portable? -> reference export
    merges: dict[str | None, Path]  # dtype -> reference merge
    step_s: float  # time one optimizer step took in the reference run
    checkpoint_s: float  # longest checkpoint save in the reference run
    adapter_s: float  # final adapter save
    export_s: float
    merge_s: float


def build(work: Path, size: str = "bench", max_steps: int = 40, save_steps: int = 5, log=print) -> Setup:
    """The tiny model, data, run file, and the uninterrupted reference outputs every trial is compared to."""
    import tiny

    from workbench.core import events as ev
    from workbench.core.config import RunConfig
    from workbench.core.export import export_adapter
    from workbench.core.merge import merge_adapter
    from workbench.core.training import run

    work.mkdir(parents=True, exist_ok=True)
    spec = dict(SIZES[size])
    shard = spec.pop("shard")
    model = tiny.save_model("llama", work / "model", initializer_range=0.3, max_shard_size=shard, **spec)
    rows = [(f"Question number {i}?", f"Answer {i}.") for i in range(16)]
    data = work / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in rows))
    config = RunConfig.from_dict({
        "model": {"source": str(model)},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.05, "preset": "all-linear"},
        "data": {"train_files": [str(data)], "max_length": 32, "packing": False},
        "training": {"max_steps": max_steps, "batch_size": 2, "save_steps": save_steps, "logging_steps": 1,
                     "learning_rate": 3e-3, "scheduler": "cosine", "warmup_ratio": 0.0, "save_total_limit": 3},
        "output": {"runs_root": str(work / "runs")},
    })
    run_file = work / "run.toml"
    config.save(run_file)
    log(f"reference run ({size} model, {max_steps} steps, checkpoint every {save_steps}) …")
    reference = run(config, ev.NullSink(), run_dir=work / "reference").run_dir
    events = read_metrics(reference)
    steps = [e for e in events if e["kind"] == "step"]
    step_s = (steps[-1]["time"] - steps[0]["time"]) / max(len(steps) - 1, 1)
    step_time = {e["step"]: e["time"] for e in steps}
    saves = [e["time"] - step_time[e["step"]] for e in events if e["kind"] == "checkpoint"]
    finished = next(e for e in events if e["kind"] == "finished")
    last_before = max(e["time"] for e in events if e["kind"] in ("step", "checkpoint"))
    adapter_shapes = {k: (v[0], v[1]) for k, v in safetensors_header(reference / "adapter" / "adapter_model.safetensors").items()}

    exports, merges = {}, {}
    started = time.perf_counter()
    for portable in (False, True):
        exports[portable] = export_adapter(reference, work / f"reference-export{'-portable' if portable else ''}",
                                           portable=portable)
    export_s = (time.perf_counter() - started) / 2
    windows = []
    for dtype in (None, "bf16"):  # time from the first progress event (just before the .partial folder) to the end
        first: list[float] = []
        sink = lambda e, first=first: first.append(time.perf_counter()) if e.kind == "progress" and not first else None  # noqa: E731
        out = work / f"reference-merge-{dtype or 'same'}"
        merges[dtype] = merge_adapter(model, reference, out, dtype=dtype, sink=sink).output
        windows.append(time.perf_counter() - first[0])
    merge_s = sum(windows) / len(windows)
    return Setup(work, model, run_file, max_steps, save_steps, reference, [e["loss"] for e in steps], adapter_shapes,
                 exports, merges, step_s, max(saves, default=0.05), finished["time"] - last_before, export_s, merge_s)


# ------------------------------------------------------------------------------------------ checks
# Written against the file formats, not with the code under test.

_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def safetensors_header(path: Path) -> dict[str, tuple[str, tuple, tuple]]:
    """{name: (dtype, shape, (start, end))} after checking that the header parses, the byte ranges tile
    the data exactly, each range fits its dtype and shape, and the file is exactly that long."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise Violation(f"{path}: {size} bytes, no safetensors header")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            raise Violation(f"{path}: header of {n} bytes in a file of {size}")
        try:
            header = json.loads(fh.read(n))
        except ValueError as exc:
            raise Violation(f"{path}: header is not JSON ({exc})") from None
    header.pop("__metadata__", None)
    tensors, end = {}, 0
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        start, stop = info["data_offsets"]
        want = math.prod(info["shape"]) * _DTYPE_BYTES[info["dtype"]]
        if start != end or stop - start != want:
            raise Violation(f"{path}: tensor {name} occupies bytes {start}-{stop}, expected {end}-{end + want}")
        end = stop
        tensors[name] = (info["dtype"], tuple(info["shape"]), (start, stop))
    if 8 + n + end != size:
        raise Violation(f"{path}: {size} bytes, header describes {8 + n + end}")
    return tensors


def load_safetensors(path: Path) -> dict:
    """Every tensor, after the header check."""
    from safetensors.torch import load_file

    safetensors_header(path)
    return load_file(str(path))


def check_adapter(folder: Path, shapes: dict) -> dict:
    """A PEFT adapter folder: config parses, every expected tensor is there with its shape, all load."""
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise Violation(f"{folder}: adapter_config.json unreadable ({exc})") from None
    if config.get("peft_type") != "LORA":
        raise Violation(f"{folder}: adapter_config.json is not a LoRA config")
    header = safetensors_header(folder / "adapter_model.safetensors")
    got = {k: (v[0], v[1]) for k, v in header.items()}
    if got != shapes:
        raise Violation(f"{folder}: adapter tensors differ from the trained adapter's ({len(got)} vs {len(shapes)})")
    return load_safetensors(folder / "adapter_model.safetensors")


def check_checkpoint(folder: Path, step: int, shapes: dict) -> None:
    """Everything the Trainer reads to resume from ``folder``, read in full."""
    import torch

    try:
        state = json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError) as exc:
        raise Violation(f"{folder}: trainer_state.json unreadable ({exc})") from None
    if state.get("global_step") != step:
        raise Violation(f"{folder}: trainer_state.json says step {state.get('global_step')}")
    check_adapter(folder, shapes)
    try:
        optimizer = torch.load(folder / "optimizer.pt", weights_only=False)
        torch.load(folder / "scheduler.pt", weights_only=False)
        torch.load(folder / "rng_state.pth", weights_only=False)
    except Exception as exc:  # anything torch.load raises on a damaged file
        raise Violation(f"{folder}: a state file does not load ({type(exc).__name__}: {exc})") from None
    if len(optimizer.get("state", {})) != len(shapes):
        raise Violation(f"{folder}: optimizer has state for {len(optimizer.get('state', {}))} of {len(shapes)} tensors")


def loads(check: Callable[[], object]) -> bool:
    try:
        check()
        return True
    except Violation:
        return False


def read_metrics(run_dir: Path) -> list[dict]:
    """The events of metrics.jsonl; every newline-terminated line must be a JSON object (a torn last line
    without its newline is allowed: the writer was killed in the middle of it)."""
    try:
        data = (run_dir / "metrics.jsonl").read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")[:-1]  # the piece after the last newline is a torn line or empty
    events = []
    for i, line in enumerate(lines, 1):
        try:
            event = json.loads(line)
        except ValueError:
            raise Violation(f"{run_dir}/metrics.jsonl line {i} is not JSON: {line[:80]!r}") from None
        if not isinstance(event, dict):
            raise Violation(f"{run_dir}/metrics.jsonl line {i} is not an object")
        events.append(event)
    return events


def last_step(run_dir: Path) -> int:
    return max((e["step"] for e in read_metrics(run_dir) if e["kind"] == "step"), default=0)


def litter(folder: Path) -> list[str]:
    """Temporary entries (``.tmp-…``) directly in ``folder``."""
    try:
        return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-"))
    except FileNotFoundError:
        return []


def same_tree(a: Path, b: Path) -> bool:
    files = lambda d: sorted(p.relative_to(d) for p in d.rglob("*") if p.is_file())  # noqa: E731
    return files(a) == files(b) and all((a / f).read_bytes() == (b / f).read_bytes() for f in files(a))


# ------------------------------------------------------------------------------------------ processes


def spawn(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as out:  # a file, not a pipe: a full pipe would block the child
        return subprocess.Popen([sys.executable, "-m", "workbench", *args], stdout=out, stderr=subprocess.STDOUT,
                                cwd=REPO, env=env)


def kill_when(proc: subprocess.Popen, fire: Callable[[], bool], delay: float, timeout: float = 600.0) -> bool:
    """Poll ``fire`` every ~2 ms; once it holds, wait ``delay`` seconds and SIGKILL the process.
    Returns whether the process was killed (False: it ended on its own first)."""
    deadline = time.monotonic() + timeout
    while not fire():
        if proc.poll() is not None:
            return False
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise Violation(f"{proc.args}: the kill trigger never fired")
        time.sleep(0.002)  # the child is another process: its files are all there is to watch
    if delay > 0:
        time.sleep(delay)
    proc.kill()
    proc.wait()
    return proc.returncode == -signal.SIGKILL


def appeared(path: Path) -> Callable[[], bool]:
    """True once ``path`` exists as a new file or folder (not the one there when this was called)."""
    def inode() -> int | None:
        try:
            return path.stat().st_ino
        except FileNotFoundError:
            return None

    before = inode()
    return lambda: inode() not in (None, before)


def new_step_logged(run_dir: Path, target: int, since: float) -> Callable[[], bool]:
    """True once metrics.jsonl holds a step ≥ ``target`` logged after ``since`` (events carry their time)."""
    path, state = run_dir / "metrics.jsonl", {"size": -1}

    def fire() -> bool:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return False
        if size == state["size"]:
            return False
        state["size"] = size
        for line in path.read_bytes().split(b"\n")[:-1]:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("kind") == "step" and e["time"] >= since and e["step"] >= target:
                return True
        return False

    return fire


def new_checkpoint(run_dir: Path, target: int) -> Callable[[], bool]:
    """True once the writing of a checkpoint N ≥ target begins: its ``.tmp-checkpoint-N.partial`` folder (or,
    from a Trainer that writes in place, its ``checkpoint-N`` folder) appears that was not there when this
    was called."""
    folder = run_dir / "checkpoints"

    def seen() -> set:
        try:
            return {(_checkpoint_step(p.name), p.stat().st_ino) for p in folder.iterdir()
                    if _checkpoint_step(p.name) is not None}
        except FileNotFoundError:
            return set()

    before = seen()
    return lambda: any(step >= target for step, _ in seen() - before)


def _checkpoint_step(name: str) -> int | None:
    """N for ``checkpoint-N`` and ``.tmp-checkpoint-N.partial``; None for anything else."""
    core = name.removeprefix(".tmp-").removesuffix(".partial") if name.endswith(".partial") else name
    head, _, step = core.partition("-")
    return int(step) if head == "checkpoint" and step.isdigit() else None


# ------------------------------------------------------------------------------------------ trials


@dataclass
class Report:
    trials: Counter = field(default_factory=Counter)  # kind -> trials
    kills: Counter = field(default_factory=Counter)  # "kind: phase at the kill" -> kills
    resumes: int = 0
    resumed_killed: int = 0  # resumed (or rerun) trainings killed again
    reruns: int = 0  # trainings started again from scratch (killed before their first complete checkpoint)
    output_reruns: int = 0  # exports and merges run again after a kill
    exited_before_kill: int = 0
    steps_lost: list[int] = field(default_factory=list)
    half_written_checkpoints: int = 0  # checkpoint-N folders seen incomplete under their final name (a violation)
    unfinished_checkpoints: int = 0  # .tmp-checkpoint-N.partial folders a kill left (never listed, removed on resume)
    conservative: int = 0  # checkpoints that loaded in full but were judged incomplete
    outputs_checked: int = 0  # folders under a final name verified after a kill
    corrupted: int = 0
    adapter_max_diff: float = 0.0
    past_target: int = 0  # runs whose metrics.jsonl holds a step beyond max_steps (a violation)
    finished_from_checkpoint: int = 0  # resumes that found the last step's checkpoint and trained nothing
    sigterms: int = 0
    sigterm_exits: Counter = field(default_factory=Counter)  # exit code -> SIGTERMed processes
    sigterm_saved: int = 0  # SIGTERMed runs that saved a checkpoint at the step they stopped at, and the adapter
    failures: list[str] = field(default_factory=list)
    save_steps: int = 0
    seconds: float = 0.0

    @property
    def max_steps_lost(self) -> int:
        return max(self.steps_lost, default=0)

    def summary(self) -> str:
        lines = [
            f"trials: {sum(self.trials.values())} ({', '.join(f'{k} {v}' for k, v in sorted(self.trials.items()))})",
            f"SIGKILLs: {sum(self.kills.values())}; processes that ended before their kill: {self.exited_before_kill}",
        ]
        lines += [f"  {k}: {v}" for k, v in sorted(self.kills.items())]
        lines += [
            f"training resumes: {self.resumes} (resumed or rerun trainings killed again: {self.resumed_killed}); "
            f"trainings rerun from scratch: {self.reruns}; "
            f"exports/merges rerun: {self.output_reruns}",
            f"steps lost per kill: max {self.max_steps_lost} (checkpoint interval {self.save_steps}); "
            f"all: {sorted(self.steps_lost)}",
            f"kills that left an unfinished .tmp-checkpoint-N.partial: {self.unfinished_checkpoints}; "
            f"half-written checkpoint-N folders under their final name: {self.half_written_checkpoints}; "
            f"complete checkpoints judged incomplete: {self.conservative}",
            f"outputs under final names verified after kills: {self.outputs_checked}; corrupted: {self.corrupted}",
            f"SIGTERMs: {self.sigterms}; exit codes {dict(sorted(self.sigterm_exits.items()))}; stopped with a "
            f"checkpoint at the stop step and a whole adapter: {self.sigterm_saved}",
            f"resumes finished from the last step's checkpoint without training: {self.finished_from_checkpoint}; "
            f"runs past their target step: {self.past_target}",
            f"finished runs vs the uninterrupted reference: adapter max |diff| {self.adapter_max_diff:.2e}",
            f"violations: {len(self.failures)}",
        ]
        lines += [f"  {f}" for f in self.failures]
        lines.append(f"wall time: {self.seconds:.0f} s")
        return "\n".join(lines)


class Harness:
    def __init__(self, setup: Setup, seed: int, *, max_kills: int = 3, in_process: bool = False, log=print):
        self.s, self.rng, self.max_kills, self.in_process, self.log = setup, random.Random(seed), max_kills, in_process, log
        self.report = Report(save_steps=setup.save_steps)

    # -- bookkeeping -----------------------------------------------------------------------------------
    def violation(self, text: str, corrupt: bool = False) -> None:
        self.report.failures.append(text)
        if corrupt:
            self.report.corrupted += 1
        self.log(f"  VIOLATION: {text}")

    def run(self, kinds: list[tuple[str, str | None]]) -> Report:
        started = time.perf_counter()
        for n, (kind, trigger) in enumerate(kinds, 1):
            folder = self.s.work / f"trial-{n:02d}-{kind}"
            folder.mkdir()
            self.report.trials[kind] += 1
            try:
                getattr(self, f"trial_{kind}")(folder, trigger)
            except Violation as exc:
                self.violation(f"trial {n} ({kind}): {exc}", corrupt=True)
        self.report.seconds = time.perf_counter() - started
        return self.report

    # -- training --------------------------------------------------------------------------------------
    def trial_train(self, folder: Path, trigger: str | None) -> None:
        run_dir, attempt = folder / "run-1", 1
        proc = spawn(["train", str(self.s.run_file), "--run-dir", str(run_dir), "--quiet"], folder / "log.txt")
        pending: list[int] = []  # steps at kills not yet followed by a resumed engine
        kills = 0
        while True:
            trig = trigger if kills == 0 and trigger else self.rng.choice(TRAIN_TRIGGERS)
            killed = self.kill_training(proc, run_dir, trig)
            if not killed:
                self.report.exited_before_kill += 1
                if proc.returncode != 0:
                    raise Violation(f"{run_dir}: the process failed on its own (exit {proc.returncode}); see {folder}/log.txt")
                break
            kills += 1
            self.report.resumed_killed += kills > 1
            at_kill = last_step(run_dir)
            self.report.kills[f"train: {self.phase(run_dir)}"] += 1
            expected = self.check_run_after_kill(run_dir)
            pending.append(at_kill)
            status = self.status(run_dir)
            if status == "finished":
                pending.clear()  # killed after the run reported its end: nothing to redo
                break
            if expected is None:  # nothing to resume from: the run must say so, and is rerun
                self.expect_no_resume(run_dir)
                self.record_lost(pending, 0)
                attempt += 1
                run_dir = folder / f"run-{attempt}"
                self.report.reruns += 1
                args = ["train", str(self.s.run_file), "--run-dir", str(run_dir), "--quiet"]
            else:
                self.report.resumes += 1
                args = ["resume", str(run_dir), "--quiet"]
            since = time.time()
            if self.in_process or kills >= self.max_kills or self.rng.random() < 0.5:
                self.finish(args, folder)
                if args[0] == "resume":
                    self.check_resumed_from(run_dir, expected, pending, since)
                break
            proc = spawn(args, folder / "log.txt")
            if args[0] == "resume":
                self.await_resumed(proc, run_dir, expected, pending, since)
        self.check_finished_run(run_dir)

    def kill_training(self, proc: subprocess.Popen, run_dir: Path, trigger: str) -> bool:
        s, rng = self.s, self.rng
        if trigger == "step":
            target = rng.randint(1, s.max_steps)  # a resumed engine fires at its first step if it starts past this
            fire, delay = new_step_logged(run_dir, target, time.time()), rng.uniform(0, s.step_s)
        elif trigger == "checkpoint":
            target = rng.choice(range(s.save_steps, s.max_steps + 1, s.save_steps))
            fire, delay = new_checkpoint(run_dir, target), rng.uniform(0, s.checkpoint_s)
        elif trigger == "adapter":
            fire, delay = appeared(run_dir / ".tmp-adapter.partial"), rng.uniform(0, s.adapter_s)
        else:  # startup: anywhere in the first seconds (imports, model loading, tokenising, first steps)
            started = time.monotonic() + rng.uniform(0.5, 12.0)
            fire, delay = (lambda: time.monotonic() >= started), 0.0
        return kill_when(proc, fire, delay)

    def phase(self, run_dir: Path) -> str:
        """Where the kill landed, from what the process left behind."""
        if (run_dir / ".tmp-adapter.partial").exists():
            return "writing the final adapter"
        if self.status(run_dir) == "finished":
            return "after the run finished"
        if list((run_dir / "checkpoints").glob(".tmp-checkpoint-*.partial")):
            return "writing a checkpoint"
        checkpoints = sorted((run_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        if checkpoints and not (checkpoints[-1] / "trainer_state.json").exists():
            return "writing a checkpoint"
        if last_step(run_dir) == 0:
            return "start-up (before the first step)"
        return "training (between or inside steps)"

    def status(self, run_dir: Path) -> str:
        from workbench.core.runs import run_status

        return run_status(run_dir).value if (run_dir / "run.toml").exists() else "none"

    def check_run_after_kill(self, run_dir: Path) -> int | None:
        """Check every final name in a killed run's folder; return the step a resume must continue from
        (the newest checkpoint that loads in full), or None when there is none."""
        from workbench.core.runs import list_checkpoints, list_runs

        from workbench.core.config import RunConfig

        s, report = self.s, self.report
        if not (run_dir / "run.toml").exists():
            return None
        try:
            RunConfig.from_toml(run_dir / "run.toml")
            if (run_dir / "status.json").exists():
                json.loads((run_dir / "status.json").read_text())
        except Exception as exc:
            raise Violation(f"{run_dir}: run.toml or status.json does not load ({exc})") from None
        self.check_target(run_dir)
        if self.status(run_dir) == "running":
            raise Violation(f"{run_dir}: its process is dead but the run shows as running")
        if (run_dir / "adapter").exists():
            report.outputs_checked += 1
            check_adapter(run_dir / "adapter", s.adapter_shapes)
        judged = {c.path.name: c for c in list_checkpoints(run_dir)}
        if any(name.startswith(".") for name in judged):
            raise Violation(f"{run_dir}: a temporary folder is listed as a checkpoint")
        if any(r.name.startswith(".") for r in list_runs(run_dir.parent)):
            raise Violation(f"{run_dir.parent}: a temporary folder is listed as a run")
        report.unfinished_checkpoints += bool(list((run_dir / "checkpoints").glob(".tmp-checkpoint-*.partial")))
        full = []
        for path in sorted((run_dir / "checkpoints").glob("checkpoint-*")):
            step = int(path.name.split("-")[1])
            ok = loads(lambda path=path, step=step: check_checkpoint(path, step, s.adapter_shapes))
            report.outputs_checked += 1
            verdict = judged.get(path.name)
            if verdict is not None and verdict.complete and not ok:
                self.violation(f"{path} is judged complete but does not load", corrupt=True)
            if not ok:
                report.half_written_checkpoints += 1
                self.violation(f"{path} is half-written under its final name (checkpoints are renamed into place)",
                               corrupt=True)
            elif verdict is not None and not verdict.complete:
                report.conservative += 1
            if ok:
                full.append(step)
        return max(full, default=None)

    def expect_no_resume(self, run_dir: Path) -> None:
        from workbench.core.errors import WorkbenchError
        from workbench.core.runs import prepare_resume

        if not (run_dir / "run.toml").exists():
            return
        try:
            point = prepare_resume(run_dir)
        except WorkbenchError:
            return
        raise Violation(f"{run_dir}: no checkpoint loads in full, yet resume chose {point.checkpoint.path.name}")

    def finish(self, args: list[str], folder: Path) -> None:
        """Run a resume or rerun to the end, in-process (tests) or as a process."""
        if self.in_process:
            from workbench.cli import main

            code = main(args)
        else:
            proc = spawn(args, folder / "log.txt")
            code = proc.wait()
        if code != 0:
            raise Violation(f"`workbench {' '.join(args)}` failed (exit {code}); see {folder}/log.txt")

    def await_resumed(self, proc, run_dir: Path, expected: int, pending: list[int], since: float) -> None:
        """Wait until the resumed engine has recorded where it continued from, then check it (the process
        runs on, to be killed or to finish in the next round)."""
        deadline = time.monotonic() + 300
        while not self.resumed_from(run_dir, since) and proc.poll() is None:
            if time.monotonic() > deadline:
                raise Violation(f"{run_dir}: the resumed run never started")
            time.sleep(0.01)
        if self.resumed_from(run_dir, since) is not None:
            self.check_resumed_from(run_dir, expected, pending, since)

    @staticmethod
    def resumed_from(run_dir: Path, since: float) -> int | None:
        """The step the resumed engine continued from: its run_started event, or — for a run whose checkpoint
        holds the last step, finished without training — the step of the finished event it recorded."""
        events = [e for e in read_metrics(run_dir) if e["time"] >= since]
        starts = [e for e in events if e["kind"] == "run_started"]
        if starts:
            return starts[-1]["resumed_from_step"]
        finished = [e for e in events if e["kind"] == "finished"]
        return finished[-1]["step"] if finished else None

    def check_resumed_from(self, run_dir: Path, expected: int, pending: list[int], since: float) -> None:
        got = self.resumed_from(run_dir, since)
        events = [e for e in read_metrics(run_dir) if e["time"] >= since]
        if got == self.s.max_steps and not any(e["kind"] == "run_started" for e in events):
            self.report.finished_from_checkpoint += 1
        if got != expected:
            self.violation(f"{run_dir}: resumed from step {got}, but the newest checkpoint that loads is {expected}")
        self.record_lost(pending, got or 0)

    def record_lost(self, pending: list[int], resumed_from: int) -> None:
        for at_kill in pending:
            lost = at_kill - resumed_from
            self.report.steps_lost.append(lost)
            if lost > self.s.save_steps:
                self.violation(f"lost {lost} steps (killed at step {at_kill}, resumed from {resumed_from})")
        pending.clear()

    def check_target(self, run_dir: Path) -> None:
        """No run ever trains past its target: no step beyond max_steps in metrics.jsonl."""
        beyond = [e["step"] for e in read_metrics(run_dir) if e["kind"] == "step" and e["step"] > self.s.max_steps]
        if beyond:
            self.report.past_target += 1
            raise Violation(f"{run_dir}: trained past its target of {self.s.max_steps} steps (steps {beyond})")

    def check_finished_run(self, run_dir: Path) -> None:
        import torch

        self.check_target(run_dir)
        if self.status(run_dir) != "finished":
            raise Violation(f"{run_dir}: the run ended as {self.status(run_dir)}")
        events = read_metrics(run_dir)
        steps = [e for e in events if e["kind"] == "step"]
        if [e["step"] for e in steps] != list(range(1, self.s.max_steps + 1)):
            raise Violation(f"{run_dir}: metrics.jsonl steps are {[e['step'] for e in steps]}")
        for e, ref in zip(steps, self.s.reference_losses):
            if not math.isclose(e["loss"], ref, rel_tol=1e-4, abs_tol=1e-6):
                raise Violation(f"{run_dir}: step {e['step']} loss {e['loss']} differs from the reference's {ref}")
        got = check_adapter(run_dir / "adapter", self.s.adapter_shapes)
        ref = load_safetensors(self.s.reference_run / "adapter" / "adapter_model.safetensors")
        diff = max(float((got[k].float() - ref[k].float()).abs().max()) for k in ref)
        self.report.adapter_max_diff = max(self.report.adapter_max_diff, diff)
        if not all(torch.allclose(got[k], ref[k], rtol=1e-3, atol=1e-5) for k in ref):
            raise Violation(f"{run_dir}: the adapter differs from the reference's (max |diff| {diff:.2e})")
        left = litter(run_dir) + litter(run_dir / "checkpoints")
        if left:
            raise Violation(f"{run_dir}: temporary entries left after the run finished: {left}")

    # -- SIGTERM ---------------------------------------------------------------------------------------
    def trial_sigterm(self, folder: Path, trigger: str | None) -> None:
        """SIGTERM (a scheduler's stop, `docker stop`) after a random step: the run must stop like Ctrl-C —
        finish the step, save a checkpoint at it and the adapter, record "stopped", exit 3 — and resume from
        exactly that step to the reference result."""
        s, rng, report = self.s, self.rng, self.report
        run_dir = folder / "run-1"
        proc = spawn(["train", str(s.run_file), "--run-dir", str(run_dir), "--quiet"], folder / "log.txt")
        target = rng.randint(1, s.max_steps - 1)
        fire = new_step_logged(run_dir, target, time.time())
        deadline = time.monotonic() + 600
        while not fire():
            if proc.poll() is not None:
                raise Violation(f"{run_dir}: the training ended (exit {proc.returncode}) before step {target}")
            if time.monotonic() > deadline:
                proc.kill()
                raise Violation(f"{run_dir}: step {target} never came")
            time.sleep(0.002)
        time.sleep(rng.uniform(0, s.step_s))
        proc.send_signal(signal.SIGTERM)
        report.sigterms += 1
        try:
            code = proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise Violation(f"{run_dir}: still running 300 s after SIGTERM") from None
        report.sigterm_exits[code] += 1
        stopped_at = last_step(run_dir)
        expected = self.check_run_after_kill(run_dir)
        status = self.status(run_dir)
        if status == "finished" and code == 0:  # the signal came after the last step: nothing to stop
            self.check_finished_run(run_dir)
            return
        if (code, status) != (EXIT_STOPPED, "stopped"):
            raise Violation(f"{run_dir}: SIGTERM gave exit {code} and status {status}, not {EXIT_STOPPED} and stopped")
        if expected != stopped_at or not (run_dir / "adapter").is_dir():
            raise Violation(f"{run_dir}: stopped at step {stopped_at}, but the newest whole checkpoint is {expected} "
                            f"and the adapter {'is' if (run_dir / 'adapter').is_dir() else 'is not'} there")
        report.sigterm_saved += 1
        report.resumes += 1
        since = time.time()
        self.finish(["resume", str(run_dir), "--quiet"], folder)
        self.check_resumed_from(run_dir, expected, [stopped_at], since)
        self.check_finished_run(run_dir)

    # -- export and merge ------------------------------------------------------------------------------
    def trial_export(self, folder: Path, trigger: str | None) -> None:
        portable = self.rng.random() < 0.5
        out = folder / "export"
        args = ["export", str(self.s.reference_run), "--out", str(out)] + (["--portable"] if portable else [])
        self.kill_and_rerun("export", folder, out, args, self.s.exports[portable], self.s.export_s, trigger)

    def trial_merge(self, folder: Path, trigger: str | None) -> None:
        dtype = self.rng.choice([None, "bf16"])
        out = folder / "merged"
        args = ["merge", "--base", str(self.s.model), "--adapter", str(self.s.reference_run), "--out", str(out)]
        args += ["--dtype", dtype] if dtype else []
        self.kill_and_rerun("merge", folder, out, args, self.s.merges[dtype], self.s.merge_s, trigger)

    def kill_and_rerun(self, kind: str, folder: Path, out: Path, args: list[str], reference: Path, took: float,
                       trigger: str | None) -> None:
        proc = spawn(args, folder / "log.txt")
        trigger = trigger or self.rng.choice(["writing", "writing", "writing", "startup"])
        if trigger == "writing":
            killed = kill_when(proc, appeared(folder / f".tmp-{out.name}.partial"), self.rng.uniform(0, took))
        else:
            at = time.monotonic() + self.rng.uniform(0.2, 8.0)
            killed = kill_when(proc, lambda: time.monotonic() >= at, 0.0)
        if not killed:
            self.report.exited_before_kill += 1
        else:
            partial = (folder / f".tmp-{out.name}.partial").exists()
            phase = "after the output was complete" if out.exists() else "writing" if partial else "before writing"
            self.report.kills[f"{kind}: {phase}"] += 1
        if out.exists():  # whatever exists under the final name must be the whole, correct output
            self.report.outputs_checked += 1
            if not same_tree(out, reference):
                self.violation(f"{out} exists but differs from the uninterrupted {kind}", corrupt=True)
                return
            for f in out.rglob("*.safetensors"):
                safetensors_header(f)
        else:
            self.report.output_reruns += 1
            self.finish(args, folder)
            if not same_tree(out, reference):
                self.violation(f"{out}: the rerun {kind} differs from the uninterrupted one", corrupt=True)
        left = litter(folder)
        if left:
            self.violation(f"{folder}: temporary entries left after the {kind} completed: {left}")


# Per 8 trials: 3 SIGKILLed trainings, 2 SIGTERMed ones, 2 exports and 1 merge (merge kills are the cheapest to
# verify and had the fewest surprises; export and training the most).
PATTERN = ("train", "export", "sigterm", "train", "merge", "train", "sigterm", "export")


def plan(trials: int, rng: random.Random) -> list[tuple[str, str | None]]:
    """Trials in the order of ``PATTERN``; the SIGKILLed trainings' first kills cycle through the triggers."""
    kinds, trains = [], 0
    for n in range(trials):
        kind = PATTERN[n % len(PATTERN)]
        if kind == "train":
            kinds.append((kind, TRAIN_TRIGGERS[trains % len(TRAIN_TRIGGERS)]))
            trains += 1
        else:
            kinds.append((kind, None))
    return kinds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=sorted(SIZES), default="bench")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per training run")
    p.add_argument("--save-steps", type=int, default=5)
    p.add_argument("--max-kills", type=int, default=3, help="kills per training trial at most")
    p.add_argument("--work", help="keep the files here (default: a temporary folder, removed afterwards)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="kill-harness-"))
    try:
        started = time.perf_counter()
        setup = build(work, args.size, args.steps, args.save_steps)
        print(f"reference: {setup.step_s * 1000:.0f} ms/step, checkpoint save {setup.checkpoint_s * 1000:.0f} ms, "
              f"final adapter {setup.adapter_s * 1000:.0f} ms, export {setup.export_s * 1000:.0f} ms, "
              f"merge {setup.merge_s * 1000:.0f} ms")
        harness = Harness(setup, args.seed, max_kills=args.max_kills)
        report = harness.run(plan(args.trials, random.Random(args.seed)))
        print(report.summary())
        print(f"total including set-up: {time.perf_counter() - started:.0f} s")
        return 1 if report.failures else 0
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
