"""The workbench's own command line, from a Python install and from a frozen bundle.

A frozen bundle is stood in for by a real executable that runs ``packaging/entry.py`` with ``sys.frozen`` set and
``sys.executable`` pointing at itself — what PyInstaller's bootloader gives the entry script — so the commands built
by ``selfcmd`` are really started and must really work, including torchrun re-starting the bundle for its worker.
"""

import ast
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from workbench import __version__
from workbench.core import selfcmd

ROOT = Path(__file__).resolve().parents[2]

SHIM = """\
import runpy, sys
sys.frozen = True
sys.executable = sys.argv[1]
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path({entry!r}, run_name="__main__")
"""


@pytest.fixture
def fake_bundle(tmp_path) -> Path:
    shim = tmp_path / "shim.py"
    shim.write_text(SHIM.format(entry=str(ROOT / "packaging" / "entry.py")))
    exe = tmp_path / "lora-workbench"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{shim}" "$0" "$@"\n')
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


def frozen_commands(exe: Path, code: str) -> list:
    """What ``selfcmd`` builds inside the bundle (evaluated in a frozen-looking interpreter)."""
    out = subprocess.run([sys.executable, "-c", f"import sys; sys.frozen = True; sys.executable = {str(exe)!r}\n"
                          f"from workbench.core import selfcmd\nprint(repr({code}))"],
                         capture_output=True, text=True, check=True, env=_env())
    return ast.literal_eval(out.stdout.strip())


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1"}


@pytest.mark.subprocess
def test_from_source_the_commands_are_python_dash_m():
    assert not selfcmd.is_frozen()
    assert selfcmd.workbench_command("train", "a.toml") == [sys.executable, "-m", "workbench", "train", "a.toml"]
    assert selfcmd.local_torchrun_command(2, "train", "a.toml") == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "workbench",
        "train", "a.toml"]
    out = subprocess.run(selfcmd.workbench_command("--version"), capture_output=True, text=True, env=_env())
    assert out.returncode == 0 and out.stdout.strip() == f"workbench {__version__}"


@pytest.mark.subprocess
def test_frozen_commands_start_the_bundle_itself(fake_bundle):
    assert frozen_commands(fake_bundle, 'selfcmd.workbench_command("train", "a.toml")') == [
        str(fake_bundle), "train", "a.toml"]
    assert frozen_commands(fake_bundle, 'selfcmd.local_torchrun_command(2, "train")') == [
        str(fake_bundle), "torchrun", "--standalone", "--nproc_per_node=2", "--no-python", str(fake_bundle), "train"]
    out = subprocess.run([str(fake_bundle), "--version"], capture_output=True, text=True, env=_env())
    assert out.returncode == 0 and out.stdout.strip() == f"workbench {__version__}"


@pytest.mark.subprocess
def test_frozen_torchrun_restarts_the_bundle_for_each_worker(fake_bundle, tmp_path):
    """torchrun through the bundle's hidden subcommand, its worker the bundle again: a worker's failure must come
    back as torchrun's exit status, so the check is a command that fails in a known way."""
    cmd = frozen_commands(fake_bundle, 'selfcmd.local_torchrun_command(1, "runs", "--root", '
                                       f'{str(tmp_path)!r}, "--json")')
    ok = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=240)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert ok.stdout.strip() == "[]", "the worker ran `workbench runs` and printed its (empty) list"
    bad = subprocess.run(cmd[:-4] + ["no-such-command"], capture_output=True, text=True, env=_env(), timeout=240)
    assert bad.returncode != 0 and "invalid choice: 'no-such-command'" in bad.stderr


@pytest.mark.subprocess
def test_frozen_dash_m_runs_a_module(fake_bundle, tmp_path):
    target = tmp_path / "written.txt"
    module = tmp_path / "probe_mod.py"
    module.write_text(f"import sys\nopen({str(target)!r}, 'w').write(' '.join(sys.argv[1:]))\nsys.exit(3)\n")
    # module_command is the same from source and frozen; torchrun-style launchers put "-u" in front.
    assert selfcmd.module_command("probe_mod", "x") == [sys.executable, "-m", "probe_mod", "x"]
    out = subprocess.run([str(fake_bundle), "-u", "-m", "probe_mod", "x", "y"], capture_output=True, text=True,
                         env={**_env(), "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    assert out.returncode == 3, out.stderr
    assert target.read_text() == "x y"
