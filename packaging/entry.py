"""The frozen bundle's entry point: ``lora-workbench [COMMAND …]`` is ``workbench [COMMAND …]``.

The bundle has no Python to run ``-m``: the same executable also stands in for the interpreter jobs the workbench
starts as child processes (torchrun and its workers, ``-m MODULE`` helpers), see ``workbench.core.selfcmd``.
"""

import multiprocessing
import sys


def main() -> int:
    # A frozen child started by multiprocessing's spawn/forkserver must run the worker, not the app.
    multiprocessing.freeze_support()
    from workbench.core.selfcmd import frozen_dispatch

    code = frozen_dispatch(sys.argv[1:])
    if code is None:
        from workbench.cli import main as cli_main

        code = cli_main(sys.argv[1:])
    return code


if __name__ == "__main__":
    sys.exit(main())
