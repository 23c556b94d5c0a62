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
    "fsync_file",
    "fsync_dir",
    "fsync_tree",
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


def atomic_write_bytes(path: Path, data: bytes) -> None:
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
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# ------------------------------------------------------------------------------------------ folders


@contextmanager
def atomic_directory(final: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder of ``final``; rename it to ``final`` only if the block completes.

    The temporary folder is named ``.tmp-<name>.partial`` so that anyone can see it is unfinished and a
    later call cleans it up. Before the rename every file and folder in it is synced to disk, and the
    parent folder after it, so a folder under the final name is complete even after a power cut.
    ``overwrite`` replaces an existing ``final``: atomically by exchanging the two where the file system
    supports it (see the module docstring), otherwise by moving the old one aside first; the old one is
    removed afterwards. Without ``overwrite`` an existing ``final`` is an error (``FileExistsError``),
    also when it appears while the block runs.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists")
    tmp = final.parent / f"{TMP_PREFIX}{final.name}.partial"
    old = final.parent / f"{TMP_PREFIX}{final.name}.old"
    if tmp.exists():
        shutil.rmtree(tmp)  # left by an interrupted earlier attempt
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old.exists():  # left by an earlier attempt interrupted between its two renames
        shutil.rmtree(old, ignore_errors=True)
