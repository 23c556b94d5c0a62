"""core.locks: the one inter-process lock (a run's resume, a model conversion), with real processes holding it."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

from workbench.core import locks

from waiting import DEADLINE_S

HOLDER = textwrap.dedent("""
    import sys
    from workbench.core import locks

    hold = locks.acquire(sys.argv[1])
    print("held" if hold.held else "unheld", flush=True)
    sys.stdin.read()  # hold it until the test closes stdin, or kills this process
""")


def start_holder(path):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def end(proc, *, kill: bool = False) -> None:
    if kill:
        proc.kill()  # SIGKILL: no clean-up code runs in the holder
    proc.stdin.close()
    proc.wait(timeout=DEADLINE_S)
    proc.stdout.close()


@pytest.mark.subprocess
def test_a_second_acquire_is_refused_at_once_naming_the_holder(tmp_path):
    path = tmp_path / "x.lock"
    holder = start_holder(path)
    try:
        with pytest.raises(locks.LockBusy) as busy:
            locks.acquire(path, timeout=0)
        assert busy.value.holder == f"{holder.pid}@{socket.gethostname()}"
        assert busy.value.holder_pid == holder.pid and busy.value.holder_host == socket.gethostname()
    finally:
        end(holder)


@pytest.mark.subprocess
def test_the_lock_dies_with_a_killed_holder_and_its_file_is_no_obstacle(tmp_path):
    path = tmp_path / "x.lock"
    end(start_holder(path), kill=True)
    assert path.exists(), "the lock file stays; only the kernel's lock counts"
    with locks.acquire(path, timeout=0) as hold:
        assert hold.held
        assert path.read_text() == f"{os.getpid()}@{socket.gethostname()}\n", "the new holder's note replaced the old"
    with locks.acquire(path, timeout=0) as again:  # released at the end of the block
        assert again.held


def test_a_lock_is_per_acquire_not_per_thread_or_process(tmp_path):
    """Two acquires in one process (one thread or two) exclude each other as two processes do: each opens its
    own lock, never filelock's reentrant or shared instance."""
    path = tmp_path / "x.lock"
    first = locks.acquire(path)
    with pytest.raises(locks.LockBusy):
        locks.acquire(path)
    refused = []

    def other_thread():
        try:
            locks.acquire(path)
        except locks.LockBusy as exc:
            refused.append(exc)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join(timeout=DEADLINE_S)
    assert len(refused) == 1 and refused[0].holder_pid == os.getpid()
    done = threading.Thread(target=first.release)  # released from another thread than the one that took it
    done.start()
    done.join(timeout=DEADLINE_S)
    assert locks.acquire(path).held


@pytest.mark.subprocess
def test_a_waiter_reports_the_holder_then_gets_the_lock_when_it_is_released(tmp_path):
    path = tmp_path / "x.lock"
    holder = start_holder(path)
    reports = []

    def on_wait(who, waited_s):
        reports.append(who)
        if len(reports) == 1:
            holder.stdin.close()  # the holder ends now: the waiter must get the lock after it

    try:
        with locks.acquire(path, timeout=None, on_wait=on_wait) as hold:
            assert hold.held
            assert reports == [f"{holder.pid}@{socket.gethostname()}"], "told once whom it waits for"
    finally:
        holder.wait(timeout=DEADLINE_S)
        holder.stdout.close()


@pytest.mark.subprocess
def test_a_wait_that_runs_out_raises_naming_the_holder(tmp_path):
    path = tmp_path / "x.lock"
    holder = start_holder(path)
    reports = []
    try:
        with pytest.raises(locks.LockBusy) as busy:
            locks.acquire(path, timeout=0.3, on_wait=lambda who, waited: reports.append(who), report_every=0.1)
        assert busy.value.holder_pid == holder.pid
        assert reports and set(reports) == {busy.value.holder}
    finally:
        end(holder)


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.ENOSYS])
def test_without_locks_on_the_file_system_it_goes_on_unguarded(tmp_path, monkeypatch, code):
    """NFS without a lock manager answers flock with ENOLCK, some FUSE file systems with ENOSYS: the callers have a
    second guard and go on. Never with filelock's soft lock instead, which a killed holder would leave behind."""
    import fcntl

    def no_locks(fd, operation):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    hold = locks.acquire(tmp_path / "x.lock")
    assert not hold.held
    assert not locks.acquire(tmp_path / "x.lock").held, "nothing was left that a second attempt would wait for"
    hold.release()


FORKING_HOLDER = textwrap.dedent("""
    import os, signal, sys
    from workbench.core import locks

    hold = locks.acquire(sys.argv[1])
    child = os.fork()
    if child == 0:  # a data-loader worker, say: lives on after its parent died
        # By now the fork handlers have run in this child: only then may the test look at the lock (under load
        # the child can be scheduled long after its parent died). The child is the only writer to stdout, and
        # its line is one write(2): with two writers, or print() under PYTHONUNBUFFERED (one write for the text,
        # one for the newline), the parent's pid and the child's line could interleave into two unreadable lines.
        os.write(1, f"child {os.getpid()} ready\\n".encode())
        sys.stdin.read()
        os._exit(0)
    os.kill(os.getpid(), signal.SIGKILL)  # the holder dies; its forked child lives on
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
@pytest.mark.subprocess
def test_a_forked_child_does_not_keep_its_dead_parents_lock(tmp_path):
    path = tmp_path / "x.lock"
    proc = subprocess.Popen([sys.executable, "-c", FORKING_HOLDER, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # the child's one line, written after its fork handlers ran
        word, pid, ready = (line.split() + ["", "", ""])[:3]
        assert (word, ready) == ("child", "ready") and pid.isdigit(), f"not the child's line: {line!r}"
        child = int(pid)
        proc.wait(timeout=DEADLINE_S)
        os.kill(child, 0)  # still alive: it holds the inherited descriptor, if filelock did not close it
        assert locks.acquire(path, timeout=0).held
    finally:
        proc.stdin.close()  # the child reads stdin until here, then ends
        proc.stdout.close()
