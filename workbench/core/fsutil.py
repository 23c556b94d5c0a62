"""Crash-safe file writing: write to a temporary name in the same folder, flush to disk, rename.

A reader (another process watching the run folder, or the next start after a crash) therefore sees
either the old file or the new one, never half of one. "Flush to disk" means ``fsync`` of every file
*and* of every folder whose entries changed, before the rename that publishes them and (for the
rename itself) of the parent folder after it: without the folder syncs a power cut can lose the names
even when the data reached the disk. A killed process (SIGKILL) needs none of the syncs, since the
kernel keeps what was written; they are for power loss and kernel crashes.

Replacing an existing folder uses Linux's ``renameat2(RENAME_EXCHANGE)`` where the file system has it
(ext4, xfs, btrfs, tmpfs, overlayfs, NFS v4.2 servers that pass it through…): the old and the new folder
swap names in one step, so the final name never stops naming a complete folder. Elsewhere the old
folder is first moved aside, which leaves a moment without any folder under the final name (never one
with a half-written folder). Creating a folder that must not exist yet uses ``RENAME_NOREPLACE`` where
available, so two writers racing for one name cannot silently replace one another.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = [
    "TMP_PREFIX",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_directory",
    "publish_directory",
    "remove_directory",
    "make_dirs",
    "remove_empty_dirs",
    "fsync_file",
    "fsync_dir",
    "fsync_tree",
    "is_disk_full",
    "free_bytes",
    "mount_point",
    "format_size",
    "disk_full_error",
    "disk_full_reported",
]

TMP_PREFIX = ".tmp-"


# ------------------------------------------------------------------------------------------ syncing


def fsync_file(path: Path) -> None:
    """Flush one file's data and metadata to disk."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (names created, renamed or removed in it) to disk. Best effort: some
    platforms and file systems cannot open or sync a folder, and there is nothing more to do there."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file below ``root``, then every folder below it and ``root`` itself (deepest first,
    so a folder is synced after the entries it holds)."""
    root = Path(root)
    folders = []
    for dirpath, _dirnames, filenames in os.walk(root):
        folders.append(dirpath)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                fsync_file(Path(path))
    for dirpath in reversed(folders):
        fsync_dir(Path(dirpath))


# ------------------------------------------------------------------------------------------ renaming

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


def _load_renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2  # glibc ≥ 2.28, musl ≥ 1.2.5
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()


def _rename2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``; False when this platform or file system does not support it."""
    if _renameat2 is None:
        return False
    import ctypes

    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def _publish_new(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``, which must not exist (FileExistsError if it does)."""
    if _rename2(tmp, final, _RENAME_NOREPLACE):
        return
    if final.exists():  # no atomic no-replace rename here: check, then rename (a small race, as before)
        raise FileExistsError(errno.EEXIST, f"{final} already exists", str(final))
    os.rename(tmp, final)


# ------------------------------------------------------------------------------------------ files


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes, *, replace: bool = True) -> None:
    """Write ``data`` to ``path`` through a flushed temporary file and a rename. With ``replace=False`` an
    existing ``path`` is never replaced (FileExistsError, even if it appeared while writing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        # mkstemp creates 0600 files; a run folder on shared storage must stay readable to whoever watches it,
        # so give the file the permissions a plain open() would (0666 minus the umask).
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            _publish_new(Path(tmp), path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, *, replace: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), replace=replace)


# ------------------------------------------------------------------------------------------ folders


def publish_directory(tmp: Path, final: Path, *, overwrite: bool = False) -> None:
    """Flush the finished folder ``tmp`` (files and folders) to disk and rename it to ``final``, then flush
    ``final``'s parent so the new name survives a power cut too.

    Without ``overwrite`` an existing ``final`` is an error (``FileExistsError``, never a silent
    replacement; ``tmp`` is left as it is). With it an existing ``final`` is replaced: atomically by
    exchanging the two where the file system supports it (see the module docstring), otherwise by moving
    the old one aside first (``.tmp-<name>.old``); the old content is removed afterwards."""
    tmp, final = Path(tmp), Path(final)
    fsync_tree(tmp)
    old = final.parent / f"{TMP_PREFIX}{final.name}.old"
    if not (overwrite and final.exists()):
        _publish_new(tmp, final)
        fsync_dir(final.parent)
    elif _rename2(tmp, final, _RENAME_EXCHANGE):
        fsync_dir(final.parent)
        shutil.rmtree(tmp, ignore_errors=True)  # now the old content
    else:
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(old, final)  # put the old folder back rather than leave none
            raise
        fsync_dir(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    if old.exists():  # left by an earlier attempt interrupted between its two renames
        shutil.rmtree(old, ignore_errors=True)


def remove_directory(path: Path) -> None:
    """Remove a folder so that it never exists half-deleted under its name: it is first renamed to the
    hidden ``.tmp-<name>.deleting`` beside it (which listings skip and the next clean-up removes), then
    deleted. A missing folder is fine."""
    path = Path(path)
    doomed = path.parent / f"{TMP_PREFIX}{path.name}.deleting"
    if doomed.exists():
        shutil.rmtree(doomed, ignore_errors=True)  # left by an interrupted earlier removal
    try:
        os.rename(path, doomed)
    except FileNotFoundError:
        return
    fsync_dir(path.parent)
    shutil.rmtree(doomed)


def make_dirs(folder: Path) -> list[Path]:
    """``folder.mkdir(parents=True, exist_ok=True)``, returning the folders it created, outermost first, so
    that a writer that fails afterwards can remove them again (``remove_empty_dirs``)."""
    folder = Path(folder)
    missing = []
    for parent in [folder, *folder.parents]:
        if parent.exists():
            break
        missing.append(parent)
    created = []
    for parent in reversed(missing):
        try:
            parent.mkdir()
        except FileExistsError:
            continue  # made meanwhile by someone else: not ours to remove
        created.append(parent)
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)  # raises the right error (a file in the way, …)
    return created


def remove_empty_dirs(folders: list[Path]) -> None:
    """Remove ``folders`` (as ``make_dirs`` returns them, outermost first) innermost first, stopping at the
    first that is not empty: someone else wrote there meanwhile, and it is theirs."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:  # not empty (someone else wrote there meanwhile), or gone
            break


@contextmanager
def atomic_directory(final: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder of ``final``; rename it to ``final`` only if the block completes.

    The temporary folder is named ``.tmp-<name>.partial`` so that anyone can see it is unfinished and a
    later call cleans it up. Before the rename every file and folder in it is synced to disk, and the
    parent folder after it, so a folder under the final name is complete even after a power cut
    (``publish_directory``). ``overwrite`` replaces an existing ``final`` (atomically where the file
    system can); without it an existing ``final`` is an error (``FileExistsError``), also when it appears
    while the block runs. When the block or the publishing fails, the temporary folder is removed, and so
    are the parent folders this call created: a failed write leaves nothing behind.
    """
    final = Path(final)
    created = make_dirs(final.parent)
    try:
        if final.exists() and not overwrite:
            raise FileExistsError(f"{final} already exists")
        tmp = final.parent / f"{TMP_PREFIX}{final.name}.partial"
        if tmp.exists():
            shutil.rmtree(tmp)  # left by an interrupted earlier attempt
        tmp.mkdir()
    except BaseException:
        remove_empty_dirs(created)
        raise
    try:
        yield tmp
        publish_directory(tmp, final, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty_dirs(created)
        raise


# ------------------------------------------------------------------------------------------ full disks

# Where a disk fills up: ENOSPC, or EDQUOT when a user quota runs out first.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# Writers that wrap the OS error in their own (safetensors) keep only its text.
DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded")


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc``, or an exception it was raised from, reports a full disk or an exhausted quota."""
    return any((isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS) or any(t in str(e) for t in DISK_FULL_TEXTS)
               for e in exception_chain(exc))


def _existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Free bytes (for this user) on the file system that holds ``path``, or would hold it."""
    return shutil.disk_usage(_existing(path)).free


def mount_point(path: Path) -> Path:
    """The mount point of the file system that holds ``path`` (or would hold it)."""
    path = _existing(path).resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def format_size(n: float) -> str:
    """1536 → '1.5 KiB'."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


def disk_full_error(out: Path, exc: BaseException, needed: int | None = None):
    """The ``OutputError`` for an output folder ``out`` (written with ``atomic_directory``) that could not be
    written because the disk is full, or None when ``exc`` is another failure. ``atomic_directory`` has
    removed what was written, so the message can say that nothing was."""
    if not is_disk_full(exc):
        return None
    from .errors import OutputError

    reason = next((e.strerror for e in exception_chain(exc) if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS and e.strerror),
                  "No space left on device")
    try:
        room = f"{format_size(free_bytes(out))} free on {mount_point(out)}"
    except OSError:
        room = ""
    if needed is not None:
        room += f"{'; ' if room else ''}the output needs about {format_size(needed)}"
    return OutputError(f"cannot write {out}: {reason} (nothing was written){f'. {room}' if room else ''}",
                       "free some disk space, or write the output to a disk with more room")


@contextmanager
def disk_full_reported(out: Path, needed: int | None = None) -> Iterator[None]:
    """Around an ``atomic_directory(out)`` write: a full disk becomes ``disk_full_error``'s ``OutputError``;
    every other exception passes unchanged."""
    try:
        yield
    except Exception as exc:
        full = disk_full_error(out, exc, needed)
        if full is None:
            raise
        raise full from None


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__
