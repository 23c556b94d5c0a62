"""The path policy: what Workbench may write to, and what it agrees to read.

Outputs (every command and dialog that writes a file or folder the user named):

* never replace anything: an existing file, folder or symbolic link under the output's name is refused,
  before any work is done (``check_new_output``);
* never write inside the inputs: an output inside the base model's folder, the adapter being exported or a
  run folder would change what the user gave us (and would be read back as part of it next time);
* every operating-system error while writing becomes one ``OutputError`` that names the path and says what
  to do (``translated_os_errors``) — no traceback, and the writers have removed what they began.

Inputs (every reader of a file the user named or a file a model folder points to):

* regular files only: a FIFO, socket or device would block forever or read garbage (``require_regular_file``);
* no escaping the folder: a path taken from inside a model folder (a shard index's ``weight_map``) must stay
  inside it (``require_inside``).
"""

from __future__ import annotations

import errno
import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

from .errors import OutputError, WorkbenchError

__all__ = ["check_new_output", "translated_os_errors", "require_regular_file", "not_regular_problem", "require_inside",
           "is_inside", "file_kind"]

def check_new_output(out: str | Path, *, what: str = "output folder",
                     inputs: Mapping[str, str | Path | None] | None = None) -> Path:
    """``out`` as a path that may be created: nothing exists under its name, and it is not inside any input.

    ``what`` names the output in messages ("output folder", "--out file"); ``inputs`` maps a description
    ("the base model", "the adapter") to a path the command reads. Raises ``OutputError`` naming the problem;
    returns the output path (the user's spelling, ``~`` expanded).
    """
    path = Path(out).expanduser()
    noun = "folder" if "folder" in what else "file"
    if os.path.lexists(path):
        found = file_kind(path)
        found = "" if found == f"a {noun}" else f" ({found})"
        raise OutputError(f"{what} {out} already exists{found}; nothing was written",
                          f"choose a new {noun}: Workbench never replaces an existing file or folder")
    try:
        target = path.parent.resolve() / path.name
    except (OSError, RuntimeError) as exc:  # a symbolic-link loop in the parent path
        raise OutputError(f"{what} {out}: its folder cannot be resolved ({_reason(exc)})",
                          f"choose another {noun}") from None
    for description, given in (inputs or {}).items():
        if given is None:
            continue
        try:
            source = Path(given).expanduser().resolve()
        except (OSError, RuntimeError):
            continue
        if source.is_dir() and is_inside(target, source):
            raise OutputError(f"{what} {out} is inside {description} ({source}); nothing was written",
                              f"choose a {noun} outside {description}: Workbench never writes into its inputs")
    return path


def file_kind(path: Path) -> str:
    """'a folder', 'a file', 'a FIFO (named pipe)'…: what is at ``path`` (a final symbolic link not followed)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return "missing"
    return "a symbolic link" if stat.S_ISLNK(mode) else _kind_of_mode(mode)


def _kind_of_mode(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def is_inside(path: Path, folder: Path) -> bool:
    """True if ``path`` is ``folder`` or lies under it (both already resolved)."""
    return path == folder or folder in path.parents


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


@contextmanager
def translated_os_errors(out: str | Path, *, flag: str = "--out", noun: str = "folder") -> Iterator[None]:
    """An operating-system error while ``out`` is written (disk full, no permission, a file where a folder
    should be) is the user's to fix: one ``OutputError`` that says so. The writers remove what they wrote.
    ``noun`` says what ``out`` is ("folder", "file") in the hint."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.filename and str(exc.filename) != str(out):
            reason += f" ({exc.filename})"
        if exc.errno in (errno.ENOTDIR, errno.EEXIST) and exc.filename and Path(exc.filename).is_file():
            reason = f"{exc.filename} is a file, not a folder"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            hint = f"free some disk space, or choose {flag} on a disk with more room"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            hint = f"choose an {flag} {noun} you can write to"
        elif exc.errno in (errno.ENOTDIR, errno.EEXIST):
            hint = f"part of the {flag} path is a file, not a folder: choose another {flag}"
        else:
            hint = f"choose another {flag} {noun}"
        written = " (nothing was written)" if not os.path.lexists(out) else ""
        raise OutputError(f"cannot write {out}: {reason}{written}", hint) from None


def require_regular_file(path: str | Path, what: str, error: type[WorkbenchError] = WorkbenchError, hint: str = "") -> Path:
    """``path`` (symbolic links followed) is a regular file; a FIFO, socket or device is refused at once
    instead of blocking forever in ``open``. Missing files are the caller's to report (its wording)."""
    path = Path(path)
    problem = not_regular_problem(path)
    if problem is not None:
        default = "give the path of an ordinary file" if "regular" in problem else "check the path and its permissions"
        raise error(f"{what} {path} {problem}", hint or default)
    return path


def not_regular_problem(path: str | Path) -> str | None:
    """Why ``path`` must not be opened as a file — ``"is a FIFO (named pipe), not a regular file"``, ``"cannot be
    read: Too many levels of symbolic links"`` — or None for a regular file, a folder, or nothing at all (a missing
    path, or one under a file, is the caller's to report). Only ``stat`` is called: nothing is opened."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        return f"cannot be read: {_reason(exc)}"
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        return f"is {_kind_of_mode(mode)}, not a regular file"
    return None


def require_inside(folder: Path, relative: str, what: str, error: type[WorkbenchError] = WorkbenchError) -> Path:
    """``folder / relative``, refused when it leaves ``folder`` (``..``, an absolute path, a symbolic link out).

    One exception, because it is how the Hugging Face cache stores every download: in a snapshot folder
    (``<repo>/snapshots/<revision>/``) the files are links into the same repository's ``blobs/``."""
    candidate = folder / relative
    try:
        resolved, root = candidate.resolve(), folder.resolve()
    except (OSError, RuntimeError) as exc:
        raise error(f"{what} {relative!r} in {folder} cannot be resolved ({_reason(exc)})",
                    "fix the file that names it") from None
    roots = [root]
    if root.parent.name == "snapshots" and (root.parent.parent / "blobs").is_dir():
        roots.append(root.parent.parent / "blobs")
    if Path(relative).is_absolute() or not any(is_inside(resolved, r) for r in roots):
        raise error(f"{what} {relative!r} points outside {folder}; it is not read",
                    "a model folder's files must lie inside it: fix the file that names it, or download the model again")
    return candidate
