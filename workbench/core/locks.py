"""Exclusive locks between processes on a lock file, built on ``filelock`` — the one lock of the engine.

A lock is held from ``acquire`` to ``release`` (or the end of a ``with`` block, or the end of the process) and
is what keeps two processes from doing one job: resuming one run (``runs.resume``), converting one GGUF file
into the model cache (``builtin``). What the callers rely on, and how ``filelock`` (4.x) gives it:

* *Dropped by the kernel when the holder dies, however it dies.* ``filelock.FileLock`` is ``flock(2)`` on POSIX
  and a Windows byte-range lock on Windows, both tied to the open file and released when the process ends. Its one
  alternative, the "soft" lock (a file that exists while the lock is held), is never used here: it survives a
  killed holder and would make every later attempt fail. ``filelock`` would fall back to it where ``flock``
  returns ``ENOSYS``; giving it ``on_acquired`` turns that fallback off (it raises instead), and then, as
  without any ``flock`` support (``ENOLCK``: NFS without a lock manager) or in a read-only folder, ``acquire``
  goes on *without* a lock and says so (``held`` is False): the callers have a second guard (a resume's
  liveness check; a conversion's atomic rename into place).
* *Nothing left behind that makes a later attempt fail.* The lock file stays after release
  (``preserve_lock_file``: also on Windows, where ``filelock`` would otherwise delete it): an existing file is
  no sign of a holder, only the kernel's lock is. Removing a lock file that another process may just have
  opened would let two processes hold "the" lock on two files.
* *Refusals name the holder.* The holder writes ``pid@host`` into the lock file once it holds the lock
  (``on_acquired``); a process that is refused reads it. ``filelock`` 4 opens the file without truncating it
  (before 4.0 every attempt opened it with ``O_TRUNC``, erasing the holder's note: hence ``>=4``). On Windows the
  locked byte cannot be read by others, so a refusal there names no holder.
* *Per process, not per thread.* Every ``acquire`` here opens its own ``FileLock`` (never a shared or
  singleton instance), and ``flock`` locks belong to an open file, so a second acquire — from another thread
  or the same one — is refused like another process's. (``filelock`` itself is reentrant per instance and, by
  default, per thread; neither applies.) ``thread_local=False``: the lock may be released from another thread
  than the one that took it (the garbage collector's, through ``__del__``). A forked child (a data-loader
  worker) does not inherit the lock: ``filelock`` closes the child's copy of the descriptor, so the lock still
  ends with the process that took it.
* *NFS.* Linux implements ``flock`` on NFS as a whole-file POSIX lock through the server (NFSv4 leases, or the
  NLM lock manager for v3), so holders on different hosts exclude each other, and a dead host's lock is given
  up when its lease expires (about 90 s on v4) or its lock manager restarts. SMB/CIFS locks are the server's
  too. Lustre and CephFS support them when mounted with locking (``flock`` mount options) and report
  ``ENOSYS``/``ENOLCK`` otherwise — the "without a lock" case above.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["FileLockHold", "LockBusy", "acquire"]

# The holder writes its note just after it has locked: a refused process waits this long for it.
_NOTE_WAIT_S = 0.5


class LockBusy(Exception):
    """Another process holds the lock: refused at once (``timeout=0``) or still held when the wait ran out."""

    def __init__(self, path: Path, holder: str, waited_s: float):
        self.path, self.holder, self.waited_s = path, holder, waited_s
        super().__init__(f"{path} is locked by {holder or 'another process'}")

    @property
    def holder_pid(self) -> int | None:
        pid = self.holder.partition("@")[0]
        return int(pid) if pid.isdigit() else None

    @property
    def holder_host(self) -> str:
        return self.holder.partition("@")[2]


class FileLockHold:
    """A lock taken by ``acquire``. ``held`` is False where the file system offers no locks (see the module
    docstring): the caller then goes on unguarded. Releasing twice, or a lock not held, is harmless."""

    def __init__(self, path: Path, lock: Any | None):
        self.path = path
        self._lock = lock
        self._pid = os.getpid()

    @property
    def held(self) -> bool:
        return self._lock is not None

    def release(self) -> None:
        lock, self._lock = self._lock, None
        # A forked child (a data-loader worker) inherits this object but not the lock: filelock closes the
        # child's copy of the descriptor, and only the process that took the lock may release it.
        if lock is not None and os.getpid() == self._pid:
            lock.release(force=True)

    def __enter__(self) -> "FileLockHold":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def acquire(
    path: str | os.PathLike,
    *,
    timeout: float | None = 0.0,
    on_wait: Callable[[str, float], None] | None = None,
    report_every: float | None = None,
    poll_interval: float = 0.05,
) -> FileLockHold:
    """Take the exclusive lock on ``path`` (created if missing; its folder must exist).

    ``timeout``: 0 makes one attempt and raises ``LockBusy`` at once when another process holds the lock; a
    number of seconds waits that long; None waits as long as it takes. While waiting, ``on_wait(holder,
    waited_s)`` is called when the lock is first found taken and then every ``report_every`` seconds (once
    only when None) — for progress messages naming the holder (``"pid@host"``, or "" when unknown).
    """
    from filelock import FileLock, Timeout

    path = Path(path)
    note = f"{os.getpid()}@{socket.gethostname()}\n".encode()

    def write_note(fd: int) -> None:
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, note)
        except OSError:
            pass  # the lock is what counts; the note only improves the message

    lock = FileLock(path, thread_local=False, preserve_lock_file=True, on_acquired=write_note)
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    try:
        try:
            lock.acquire(blocking=False)
            return FileLockHold(path, lock)
        except Timeout:
            holder = _holder(path, patient=True)
        while deadline is None or time.monotonic() < deadline:
            if on_wait is not None:
                on_wait(holder, time.monotonic() - started)
                on_wait = on_wait if report_every is not None else None
            wait = -1.0 if report_every is None else report_every  # filelock: negative waits as long as it takes
            if deadline is not None:
                left = max(deadline - time.monotonic(), 0.0)
                wait = left if wait < 0 else min(wait, left)
            try:
                lock.acquire(timeout=wait, poll_interval=poll_interval)
                return FileLockHold(path, lock)
            except Timeout:
                holder = _holder(path) or holder
        raise LockBusy(path, holder, time.monotonic() - started)
    except Timeout:  # a subclass of OSError: never "no locks here"
        raise
    except OSError:  # no locks on this file system (ENOSYS, ENOLCK, EOPNOTSUPP), or no write access here
        return FileLockHold(path, None)


def _holder(path: Path, *, patient: bool = False) -> str:
    """The ``pid@host`` note of the lock's holder, "" when there is none (yet)."""
    deadline = time.monotonic() + (_NOTE_WAIT_S if patient else 0.0)
    while True:
        try:
            with open(path, "rb") as fh:
                text = fh.read(200).decode("utf-8", "replace").strip()
        except OSError:
            text = ""
        if text or time.monotonic() >= deadline:
            return text
        time.sleep(0.01)
