"""A run's checkpoints: which ``checkpoints/checkpoint-<step>`` folders are whole, and which one a run continues from.

The engine writes each checkpoint into ``checkpoints/.tmp-checkpoint-<step>.partial/``, flushes it to disk
and only then renames it to ``checkpoints/checkpoint-<step>/``; the Trainer's rotation (``save_total_limit``)
renames an old checkpoint to ``.tmp-checkpoint-<step>.deleting`` before deleting it. A folder under a
``checkpoint-<step>`` name is therefore whole — except in run folders written by versions that let the HF
Trainer write in place, so ``list_checkpoints`` still checks each one for completeness (see there) and
resuming only ever starts from a complete one. Temporary ``.tmp-…`` folders are never listed, and
``prepare_resume`` removes them. When the engine reports a checkpoint (the ``CheckpointSaved`` event), the
recorder flushes its files and folders to disk once more before it appends the event, so a checkpoint
named in ``metrics.jsonl`` survives a power cut whoever saved it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..fsutil import TMP_PREFIX, fsync_dir
from .layout import PathLike, RunFolder

_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")
_ADAPTER_WEIGHTS = "adapter_model.safetensors"
_ADAPTER_CONFIG = "adapter_config.json"
_TRAINER_STATE = "trainer_state.json"
_REQUIRED_STATES = ("optimizer.pt", "scheduler.pt")


@dataclass(frozen=True)
class Checkpoint:
    """A ``checkpoints/checkpoint-<step>`` folder. ``problem`` says why it cannot be resumed from ("" if it can)."""

    step: int
    path: Path
    problem: str

    @property
    def complete(self) -> bool:
        return not self.problem


def list_checkpoints(run_dir: PathLike, *, thorough: bool = False) -> list[Checkpoint]:
    """Every ``checkpoint-<step>`` folder of a run, oldest first, each checked for completeness.

    The engine publishes a checkpoint only when it is whole (see the module docstring), but the HF Trainer
    on its own writes it in place, file by file — adapter, optimizer, scheduler, RNG states — and
    ``trainer_state.json`` last, and run folders from earlier versions (or a run copied while it was
    written) can hold such folders; nothing marks one as finished but that last file. Complete therefore
    means: ``trainer_state.json`` parses and names the folder's step; ``adapter_config.json``
    parses; ``adapter_model.safetensors`` is a whole safetensors file (header and size agree);
    ``optimizer.pt``, ``scheduler.pt`` and an RNG state (``rng_state.pth``, or one per process under
    torchrun) are there — the Trainer resumes *without* a missing optimizer or scheduler state, silently
    restarting them, so their absence (a checkpoint half deleted by the Trainer's rotation) must count —
    and every torch state file (``*.pt``, ``*.pth``) is a whole zip archive, the format ``torch.save``
    writes (its central directory comes last). With ``thorough`` each archive's members are also read and
    checked against their CRC-32s, which catches blocks lost in a power cut that the size alone does not
    (``choose_checkpoint`` does this for the checkpoint a run continues from). Only names of exactly that
    form are listed, so temporary folders (``.tmp-checkpoint-…``) never are.
    """
    return [Checkpoint(step, path, _checkpoint_problem(path, step, thorough=thorough))
            for step, path in checkpoint_folders(RunFolder(run_dir).checkpoints_dir)]


def checkpoint_folders(checkpoints_dir: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every ``checkpoint-<step>`` folder in ``checkpoints_dir``, oldest first, unchecked:
    the one rule for what counts as a checkpoint, for ``list_checkpoints`` and the engine's rotation."""
    try:
        entries = list(os.scandir(checkpoints_dir))
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), Path(e.path)) for e in entries if (m := _CHECKPOINT_NAME.fullmatch(e.name)) and e.is_dir()]
    return sorted(found, key=lambda f: f[0])


def latest_checkpoint(run_dir: PathLike) -> Checkpoint | None:
    """The newest complete checkpoint, or None."""
    return newest_complete(list_checkpoints(run_dir))


def newest_complete(checkpoints: list[Checkpoint]) -> Checkpoint | None:
    """The newest complete one of ``checkpoints`` (as ``list_checkpoints`` gives them, oldest first), or None."""
    return next((c for c in reversed(checkpoints) if c.complete), None)


def _checkpoint_problem(path: Path, step: int, *, thorough: bool = False) -> str:
    try:
        state = json.loads((path / _TRAINER_STATE).read_bytes())
    except FileNotFoundError:
        return f"no {_TRAINER_STATE} (the checkpoint was not finished)"
    except ValueError:
        return f"{_TRAINER_STATE} is not valid JSON (cut off while written)"
    except OSError as exc:
        return f"{_TRAINER_STATE} cannot be read ({exc.strerror or exc})"
    if not isinstance(state, dict) or state.get("global_step") != step:
        return f"{_TRAINER_STATE} does not record step {step}"
    try:
        json.loads((path / _ADAPTER_CONFIG).read_bytes())
    except FileNotFoundError:
        return f"no {_ADAPTER_CONFIG}"
    except ValueError:
        return f"{_ADAPTER_CONFIG} is not valid JSON"
    except OSError as exc:
        return f"{_ADAPTER_CONFIG} cannot be read ({exc.strerror or exc})"
    problem = _adapter_weights_problem(path / _ADAPTER_WEIGHTS)
    if problem:
        return problem
    names = {p.name for p in path.iterdir()}
    missing = [n for n in _REQUIRED_STATES if n not in names]
    if not any(n.startswith("rng_state") and n.endswith(".pth") for n in names):
        missing.append("rng_state.pth")
    if missing:
        return f"no {', '.join(missing)} (the checkpoint was not finished, or was partly deleted)"
    return torch_files_problem(path, names, thorough)


def _adapter_weights_problem(path: Path) -> str:
    """Why a checkpoint's ``adapter_model.safetensors`` is not a whole safetensors file ("" when it is).

    The run folder's own rule, kept in this one function: safetensors' own reader opens the file, which checks
    that the header parses and that the tensors it lists fit the file's size; no tensor data is read. (The
    model-loading and adapter code have checks of their own; this is the place to point at a shared one.)"""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy"):  # validates header against file size
            pass
    except FileNotFoundError:
        return f"no {path.name}"
    except (SafetensorError, OSError) as exc:
        return f"{path.name} is damaged ({exc})"
    return ""


def torch_files_problem(path: Path, names: set[str] | list[str], thorough: bool) -> str:
    """The first problem among the torch state archives (``*.pt``, ``*.pth``) of ``names`` in ``path``."""
    for name in sorted(names):
        if name.endswith((".pt", ".pth")):
            problem = _torch_file_problem(path / name, thorough)
            if problem:
                return f"{name} {problem}"
    return ""


def _torch_file_problem(path: Path, thorough: bool) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            if thorough:
                bad = zf.testzip()
                if bad is not None:
                    return f"is damaged (member {bad} fails its CRC check)"
    except (zipfile.BadZipFile, EOFError):
        return "is incomplete"
    except zipfile.LargeZipFile:
        return ""
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return ""


def newest_sound_checkpoint(run_dir: PathLike) -> Checkpoint | None:
    """The checkpoint ``choose_checkpoint`` will pick (the newest complete one whose archives pass their CRC
    reads), found without removing anything: for the refusals a resume makes before it changes the run."""
    for candidate in reversed(list_checkpoints(run_dir)):
        if candidate.complete and not torch_files_problem(candidate.path, os.listdir(candidate.path), thorough=True):
            return candidate
    return None


def unsafe_state_file(path: Path) -> tuple[str, str] | None:
    """The first torch state file of a checkpoint (optimizer, scheduler, RNG states) that the safe loader refuses,
    as ``(file name, why)``, or None when all load.

    The same loader the Trainer uses at resume — ``torch.load(weights_only=True)`` with transformers' allowlist
    of numpy types — so a file refused here would otherwise fail the resume half-way. Read memory-mapped: the
    optimizer state can be large."""
    import pickle

    import torch

    from ..compat import trainer_load_allowlist

    try:
        names = sorted(n for n in os.listdir(path) if n.endswith((".pt", ".pth")))
    except OSError:
        return None
    for name in names:
        try:
            with trainer_load_allowlist():
                torch.load(path / name, map_location="cpu", weights_only=True, mmap=True)
        except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, AttributeError, TypeError) as exc:
            return name, _first_line(exc)
        except OSError as exc:
            return name, f"cannot be read: {exc.strerror or exc}"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


@dataclass(frozen=True)
class CheckpointChoice:
    """The checkpoint a run continues from (None: from the start), and what was removed to get there."""

    checkpoint: Checkpoint | None
    discarded: tuple[Path, ...]  # incomplete checkpoint folders and temporary ones, removed
    problems: tuple[tuple[str, str], ...]  # (checkpoint folder name, why it was incomplete)


def choose_checkpoint(run_dir: PathLike) -> CheckpointChoice:
    """Pick the checkpoint to continue a run from and clear the way to it: the newest that passes
    ``list_checkpoints``' checks *including* the ``thorough`` one (every state archive read against its
    CRC-32s), so a checkpoint damaged by a power cut is passed over. Removes the incomplete checkpoint
    folders, so the Trainer cannot mix files into them, and the temporary ones (``.tmp-checkpoint-N.partial``
    of a save that never finished, ``.tmp-checkpoint-N.deleting`` of an interrupted rotation).

    ``prepare_resume`` and the engine's out-of-memory retry both continue from this choice. Only the process
    that writes the run may call it."""
    folder = RunFolder(run_dir)
    checkpoints = list_checkpoints(folder)
    checkpoint = None
    for candidate in reversed(checkpoints):  # the newest complete one, read in full before it is trusted
        if candidate.complete:
            # list_checkpoints made every other check already: only the CRC-32 reads are left
            problem = torch_files_problem(candidate.path, os.listdir(candidate.path), thorough=True)
            if not problem:
                checkpoint = candidate
                break
            checkpoints[checkpoints.index(candidate)] = Checkpoint(candidate.step, candidate.path, problem)
    # Only older checkpoints than the chosen one can be kept: a newer one is incomplete or damaged.
    incomplete = [c for c in checkpoints if not c.complete]
    discarded = discard_unfinished_checkpoints(folder, checkpoints)
    problems = tuple((c.path.name, c.problem) for c in incomplete)
    return CheckpointChoice(checkpoint, tuple(sorted(discarded)), problems)


def discard_unfinished_checkpoints(run_dir: PathLike, checkpoints: list[Checkpoint] | None = None) -> list[Path]:
    """Remove the incomplete checkpoint folders (among ``checkpoints``, as ``list_checkpoints`` judged them)
    and the temporary ones (``.tmp-checkpoint-N.partial`` / ``.deleting``): never resumed from, and they take
    space. Returns what was removed."""
    folder = RunFolder(run_dir)
    if checkpoints is None:
        checkpoints = list_checkpoints(folder)
    discarded = [c.path for c in checkpoints if not c.complete] + _temporary_checkpoints(folder)
    for path in discarded:
        remove_path(path)
    if discarded:
        fsync_dir(folder.checkpoints_dir)
    return discarded


def _temporary_checkpoints(folder: RunFolder) -> list[Path]:
    try:
        return [p for p in folder.checkpoints_dir.iterdir() if p.name.startswith(TMP_PREFIX)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def remove_path(path: Path) -> None:
    """Remove a file, or a folder and everything in it (a symbolic link: only the link)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
