"""The command line that runs the workbench itself, from a source/wheel install or from the frozen bundle.

From a Python install the workbench is ``python -m workbench``. A frozen build (PyInstaller) has no Python to give
``-m`` to: its executable *is* the workbench and dispatches the CLI's arguments itself, so a separate-process run
must start ``<bundle>/lora-workbench train …``. Two other interpreters' jobs are mapped onto the frozen entry by
``frozen_dispatch``: ``torchrun`` (PyTorch's launcher, which the bundle cannot start as a module of another Python)
and ``-m MODULE`` for the few helpers that run as a child process (the llama.cpp quantizer).
"""

from __future__ import annotations

import sys

__all__ = ["is_frozen", "workbench_command", "module_command", "local_torchrun_command", "frozen_dispatch",
           "TORCHRUN_SUBCOMMAND"]

# Hidden first argument of the frozen executable: the rest is torchrun's command line.
TORCHRUN_SUBCOMMAND = "torchrun"


def is_frozen() -> bool:
    """True inside a PyInstaller (or similar) bundle: ``sys.executable`` is the app, not a Python."""
    return bool(getattr(sys, "frozen", False))


def workbench_command(*args: str) -> list[str]:
    """``workbench ARGS…`` as an argv for ``subprocess``: the same interpreter (or bundle) that runs this code."""
    if is_frozen():
        return [sys.executable, *args]
    return [sys.executable, "-m", "workbench", *args]


def module_command(module: str, *args: str) -> list[str]:
    """``python -m MODULE ARGS…``; the frozen entry runs the module itself (``frozen_dispatch``)."""
    return [sys.executable, "-m", module, *args]


def local_torchrun_command(processes: int, *args: str) -> list[str]:
    """``torchrun --standalone --nproc_per_node=N … workbench ARGS…`` on this machine (``--standalone``: a rendezvous
    on a free local port, so two such runs can share the machine). Frozen, torchrun is reached through the bundle's
    hidden ``torchrun`` subcommand and starts the bundle itself for each worker (``--no-python``)."""
    launcher = ["--standalone", f"--nproc_per_node={int(processes)}"]
    if is_frozen():
        return [sys.executable, TORCHRUN_SUBCOMMAND, *launcher, "--no-python", sys.executable, *args]
    return [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "workbench", *args]


def frozen_dispatch(argv: list[str]) -> int | None:
    """For the frozen entry point: run ``argv`` if it is one of the interpreter jobs a bundle must stand in for
    (``torchrun …``, ``-m MODULE …``, after interpreter flags such as ``-u`` that launchers put first);
    None when it is an ordinary workbench command line, for ``workbench.cli.main``."""
    while argv and argv[0] in ("-u", "-B", "-E", "-s"):  # interpreter flags that change nothing here
        argv = argv[1:]
    if argv and argv[0] == TORCHRUN_SUBCOMMAND:
        from torch.distributed import run as torchrun

        sys.argv = ["torchrun", *argv[1:]]
        torchrun.main(argv[1:])
        return 0
    if len(argv) >= 2 and argv[0] == "-m":
        import runpy

        # ``-m workbench`` too: workbench/__main__.py runs the CLI (core never imports the CLI itself).
        sys.argv = [argv[1], *argv[2:]]
        try:
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return 0
    return None
