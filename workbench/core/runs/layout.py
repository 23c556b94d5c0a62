"""Where a run lives: the run folder's file names, the one rule for where a new run's folder goes, and creating it.

Where runs go. A run file's ``output.runs_root`` and ``output.run_dir`` may be relative (the default root is
``runs``). ``output_path`` is the one rule for what they are relative to, used by the engine (``create_run``),
the window's launch dialog and ``workbench launch-script`` alike: ``~`` is expanded, and a relative path is taken
from the *current folder* of the process that reads the run file — the folder the command is started in, the
window's working folder. It is the base every other relative path in a run file already has (``model.source``,
``data.train_files``: the engine opens them as given, and ``resources/examples/demo.toml`` is run from the
repository root), and the base of ``workbench runs`` and the window's Runs tab, so a run always lands where they
list it; a configuration from the window or from ``--set`` has no run file whose folder could serve instead. A
launch script fixes the run folder it computed as an absolute ``--run-dir`` (and the run file as an absolute
path), so where the cluster's job starts plays no part: the script trains into the folder ``workbench train
RUN.toml`` started in the same place would have created.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import OutputError
from ..fsutil import make_dirs, remove_empty_dirs

if TYPE_CHECKING:  # the schema (pydantic) is imported where a run.toml is read: `runs --status` and `control` need none
    from ..config import RunConfig

RUN_FILE = "run.toml"
METRICS_FILE = "metrics.jsonl"
STATUS_FILE = "status.json"
CONTROL_FILE = "control.json"
CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"

PathLike = str | os.PathLike


@dataclass(frozen=True, init=False)
class RunFolder:
    """The paths of one run folder. Constructing it touches no file; it is path-like (``os.fspath``)."""

    path: Path

    def __init__(self, path: PathLike):
        object.__setattr__(self, "path", Path(path))

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def status_file(self) -> Path:
        return self.path / STATUS_FILE

    @property
    def control_file(self) -> Path:
        return self.path / CONTROL_FILE

    @property
    def checkpoints_dir(self) -> Path:
        """Pass this as the HF Trainer's ``output_dir``: it writes ``checkpoint-<step>`` folders into it."""
        return self.path / CHECKPOINTS_DIR

    @property
    def adapter_dir(self) -> Path:
        return self.path / ADAPTER_DIR


def model_short_name(source: str) -> str:
    """A file-name-safe short name for a model source: the last path or Hub-id component, without
    ``.gguf``; ``"run"`` when nothing usable is left. Used to name run folders and in listings."""
    tail = re.split(r"[/\\]", source.rstrip("/\\"))[-1]
    tail = tail.removesuffix(".gguf")
    tail = re.sub(r"[^A-Za-z0-9._-]+", "-", tail).strip("-.")
    return tail or "run"


def default_run_name(config: RunConfig) -> str:
    """A new run's folder name: ``output.name``, or the model's short name and the time."""
    return config.output.name or f"{model_short_name(config.model.source)}-{datetime.now():%Y%m%d-%H%M%S}"


def _folder_name(name: str) -> str:
    # A leading dot would hide the run: listings skip dot-folders (temporary and deleted ones).
    return name.lstrip(".") or "run"


def output_path(path: PathLike, base: PathLike | None = None) -> Path:
    """Where an output path of a run file (``output.runs_root``, ``output.run_dir``) points, as an absolute path:
    ``~`` expanded, a relative path taken from ``base`` — the current folder unless given (see "Where runs go"
    in this module's docstring). The one rule for the engine, the window and ``workbench launch-script``."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (Path(base if base is not None else Path.cwd()) / p).absolute()


def planned_run_dir(config: RunConfig, base: PathLike | None = None, *, name: str | None = None) -> Path:
    """The folder a new run of ``config`` will use, computed without creating anything: ``output.run_dir``, else
    ``runs_root/<name>`` (``name`` defaults to ``default_run_name``), both through ``output_path``. ``create_run``
    appends ``-2``, ``-3``… to a name that is taken; a launch script passes this folder as ``--run-dir``, which
    must then be missing or empty."""
    out = config.output
    if out.run_dir:
        return output_path(out.run_dir, base)
    return output_path(out.runs_root, base) / _folder_name(name or default_run_name(config))


def create_run(config: RunConfig) -> RunFolder:
    """Create the folder for a new run (``claim_run_dir``) and write ``run.toml`` into it (atomically).

    When ``run.toml`` cannot be written (a full disk, no permission) the folders this call created are removed
    again before ``OutputError`` is raised, so a failed start leaves no empty run behind.
    """
    path, created = claim_run_dir(config)
    try:
        config.save(path / RUN_FILE)
    except OSError as exc:
        remove_empty_dirs(created)
        raise _cannot_create_run_folder(exc, config) from None
    return RunFolder(path)


def claim_run_dir(config: RunConfig) -> tuple[Path, list[Path]]:
    """The empty folder a new run of ``config`` uses, and the folders this call created (outermost first).

    ``config.output.run_dir`` when set (it must be missing or empty), otherwise a new folder under
    ``config.output.runs_root`` named ``config.output.name`` or ``<model>-<YYYYmmdd-HHMMSS>``, with ``-2``,
    ``-3``, … appended when that name is taken (also by a concurrent process: the name is claimed with
    ``mkdir``, which fails if it exists). Relative paths are taken from the current folder (``output_path``).
    """
    out = config.output
    created: list[Path] = []
    try:
        if out.run_dir:
            path = output_path(out.run_dir)
            created += make_dirs(path)
            if any(path.iterdir()):
                raise _run_dir_not_empty(path)
        else:
            root = output_path(out.runs_root)
            created += make_dirs(root)
            path = claim_new_run_dir(root, config)
            created.append(path)
    except OSError as exc:
        remove_empty_dirs(created)
        raise _cannot_create_run_folder(exc, config) from None
    return path, created


def check_run_dir_claimable(config: RunConfig) -> None:
    """What ``claim_run_dir`` would refuse, found without creating anything, with its errors: an ``output.run_dir``
    that is not empty, or a folder to create inside one this user cannot write to. A run checks this before it
    loads anything; what only the attempt shows (a full disk, a path through a file) ``claim_run_dir`` still finds."""
    out = config.output
    target = output_path(out.run_dir or out.runs_root)
    try:
        if out.run_dir and target.is_dir() and any(target.iterdir()):
            raise _run_dir_not_empty(target)
        # The first folder claim_run_dir would make (a missing ancestor of the target, or the run's own folder
        # in runs_root) goes into the nearest existing folder: that one must be writable.
        missing = [p for p in [target, *target.parents] if not p.exists()]
        first = missing[-1] if missing else (None if out.run_dir else target / _folder_name(default_run_name(config)))
        if first is not None and first.parent.is_dir() and not os.access(first.parent, os.W_OK | os.X_OK):
            code = errno.EROFS if _read_only_mount(first.parent) else errno.EACCES  # what mkdir would say
            raise OSError(code, os.strerror(code), str(first))
    except OSError as exc:
        raise _cannot_create_run_folder(exc, config) from None


def _read_only_mount(folder: Path) -> bool:
    statvfs = getattr(os, "statvfs", None)  # not on Windows, where os.access finds every folder writable anyway
    return statvfs is not None and bool(statvfs(folder).f_flag & os.ST_RDONLY)


def _run_dir_not_empty(path: Path) -> OutputError:
    return OutputError(f"the run folder {path} is not empty",
                       "choose another output.run_dir, or leave it unset to get a new folder under output.runs_root")


def _cannot_create_run_folder(exc: OSError, config: RunConfig) -> OutputError:
    out = config.output
    return OutputError(
        f"cannot create the run folder: {exc.strerror or exc} ({exc.filename or out.run_dir or out.runs_root})",
        "choose a folder you can write to (output.runs_root or output.run_dir)",
    )


def claim_new_run_dir(root: Path, config: RunConfig) -> Path:
    """Create and return the empty folder of a new run under ``root``: ``output.name``, or the model's short
    name and the time, with ``-2``, ``-3``… when taken (``mkdir`` claims it, so two starts cannot share it)."""
    return _claim_unique_dir(root, _folder_name(default_run_name(config)))


def _claim_unique_dir(root: Path, base: str) -> Path:
    for n in range(1, 10_000):
        path = root / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise OutputError(f"too many runs named {base!r} in {root}", "set output.name to another name")


def load_config(run_dir: PathLike) -> RunConfig:
    """The run's configuration, read and validated from its ``run.toml``."""
    from ..config import RunConfig

    return RunConfig.from_toml(RunFolder(run_dir).run_file)
