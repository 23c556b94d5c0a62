"""Where an unexpected error's traceback goes, so that the user sees one line and a path instead.

Every face of the engine (the CLI's guarded entry point, the window's exception hook) reports a bug the
same way: ``write_crash_log`` saves the full traceback, with the command line and versions, to a new file
under ``<cache>/logs/`` and returns its path; the user is shown the failing step, the exception's first
line and that path. Old logs are pruned so the folder stays small.

Writing the log must never raise in turn — it runs while something has already gone wrong (a full disk, a
read-only home): it falls back to the system's temporary folder, and to no file at all.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

__all__ = ["LOGS_DIR_NAME", "KEEP_LOGS", "log_dir", "write_crash_log", "describe_unexpected", "report_unexpected"]

LOGS_DIR_NAME = "logs"
KEEP_LOGS = 50  # the newest crash logs kept; older ones are deleted when a new one is written


def log_dir() -> Path:
    """``<workbench cache>/logs``; the cache is ``$LORA_WORKBENCH_CACHE`` or the platform's user cache."""
    try:
        from .cache import cache_root

        return cache_root() / LOGS_DIR_NAME
    except Exception:  # the cache module itself failed to import: still leave a log somewhere
        return Path(tempfile.gettempdir()) / "lora-workbench-logs"


def describe_unexpected(exc: BaseException) -> str:
    """``TypeName: first line of its text`` — what the one-line report names."""
    text = str(exc).strip().split("\n")[0]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def report_unexpected(what: str, exc: BaseException) -> tuple[str, str, Path | None]:
    """Write the crash log of a bug and say it in words: (``"<what> failed unexpectedly: <Type>: <first line>"``,
    where the details are — ``"the details are in <log> (please include it in a bug report)"`` or that no log
    could be written —, the log's path or None). The CLI prints the two as lines, the window as one sentence.
    Never raises: reporting must not fail in turn."""
    try:
        log = write_crash_log(what, exc)
    except Exception:  # noqa: BLE001
        log = None
    where = (f"the details are in {log} (please include it in a bug report)" if log is not None
             else "no log could be written (the disk may be full or read-only)")
    return f"{what} failed unexpectedly: {describe_unexpected(exc)}", where, log


def write_crash_log(what: str, exc: BaseException) -> Path | None:
    """Save ``exc``'s traceback (with ``what`` failed, the command line and versions) to a new log file.

    Returns the file's path, or None when no folder could be written at all.
    """
    body = "".join([
        f"{what} failed unexpectedly at {time.strftime('%Y-%m-%d %H:%M:%S')}\n",
        f"command: {' '.join(sys.argv)}\n",
        f"working folder: {_cwd()}\n",
        f"python {platform.python_version()} on {platform.platform()}\n",
        _versions(),
        "\n",
        *traceback.format_exception(type(exc), exc, exc.__traceback__),
    ])
    name = f"workbench-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in (log_dir(), Path(tempfile.gettempdir()) / "lora-workbench-logs"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            with open(path, "x", encoding="utf-8", errors="backslashreplace") as fh:
                fh.write(body)
        except OSError:
            continue
        _prune(folder)
        return path
    return None


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError as exc:  # the folder was deleted under us
        return f"(unknown: {exc.strerror})"


def _versions() -> str:
    """Versions of the stack, from modules already imported only (importing torch here could fail too)."""
    parts = []
    for name in ("workbench", "torch", "transformers", "peft", "datasets", "PySide6"):
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None) if module is not None else None
        if version:
            parts.append(f"{name} {version}")
    return ("versions: " + ", ".join(parts) + "\n") if parts else ""


def _prune(folder: Path) -> None:
    try:
        logs = sorted(folder.glob("workbench-*.log"), key=lambda p: p.stat().st_mtime)
        for old in logs[:-KEEP_LOGS]:
            old.unlink()
    except OSError:
        pass
