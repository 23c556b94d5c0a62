"""Running the launch scripts that `workbench launch-script` writes, as a node's shell would, and reading back
the launcher's command line (shared by tests/core/test_launch.py and the launch dialog's test)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path


def torchrun_args(words: list[str]) -> argparse.Namespace:
    """Parse a launcher command line as torch.distributed.run does."""
    from torch.distributed.run import get_args_parser

    start = words.index("torch.distributed.run") + 1
    return get_args_parser().parse_args(words[start:])


def recorder(folder: Path) -> Path:
    """A stand-in for the nodes' Python that prints the command line it is started with, as JSON."""
    path = folder / "record"
    path.write_text("#!/usr/bin/env bash\npython3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' \"$@\"\n")
    path.chmod(0o755)
    return path


def plain_script_command(script: str, **env: str) -> list[str]:
    """Run a plain launch script (written with ``--python recorder``) as a node would; the launcher's words."""
    out = subprocess.run(["bash", "-c", script], env={**os.environ, "NODE_RANK": "0", "MASTER_ADDR": "node0", **env},
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


def script_run_dir(script: str) -> Path:
    """The --run-dir of the torchrun line of a plain launch script."""
    args = torchrun_args(plain_script_command(script)).training_script_args
    return Path(args[args.index("--run-dir") + 1])
