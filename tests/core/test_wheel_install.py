"""The light install path: the wheel, built from this tree and installed into a fresh virtual environment (not
editable), runs `workbench --version`, `workbench inspect` on a tiny model, `workbench demo` from the resources
inside the wheel, and `workbench desktop-entry install|uninstall` into a temporary home.

The fresh environment gets the heavy dependencies (torch, transformers, …) through a .pth line naming this test
environment's site-packages, instead of installing them again: `--system-site-packages` would expose the base
interpreter's packages, not this environment's. A .pth line adds a folder without running the .pth files in it,
so this tree's own editable install there cannot shadow the wheel; the test checks where `workbench` came from.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from workbench import __version__
from workbench.core import cache

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=180, **kw)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    # Built from a copy without the working tree's build/ and *.egg-info: setuptools reuses what a previous build
    # left there, which hid a missing package-data line (the wheel held files the project no longer declared).
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"))
    # No build isolation: the build backend (setuptools) is this environment's, as on an offline machine.
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "dist", source],
        cwd=tmp)
    (wheel,) = (tmp / "dist").glob("lora_workbench-*.whl")
    env_dir = tmp / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # --force-reinstall: a lora_workbench.egg-info that the build left in a source tree on PYTHONPATH (or the
    # editable install) must not count as "already satisfied".
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--force-reinstall",
         "-q", wheel], env=clean_env(tmp))
    # After the install: with the dependencies visible, pip would see this tree's editable install as "satisfied".
    (purelib / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    script = env_dir / ("Scripts/workbench.exe" if os.name == "nt" else "bin/workbench")
    where = run([python, "-c", "import workbench; print(workbench.__file__)"], cwd=tmp, env=clean_env(tmp)).stdout.strip()
    assert Path(where).is_relative_to(purelib), f"workbench imported from {where}, not from the wheel"
    return script, purelib, tmp


def clean_env(tmp: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "HOME": str(tmp / "home"), "XDG_DATA_HOME": str(tmp / "home" / "share"), **extra}


def test_version_and_inspect_from_the_wheel(installed, tiny_model_dir):
    script, _, tmp = installed
    env = clean_env(tmp)
    assert run([script, "--version"], env=env, cwd=tmp).stdout.strip() == f"workbench {__version__}"
    out = run([script, "inspect", tiny_model_dir("llama"), "--preset", "attention-qv", "--rank", "4"], env=env,
              cwd=tmp).stdout
    assert "q_proj" in out and "v_proj" in out


def test_the_builtin_templates_are_inside_the_wheel(installed):
    _, purelib, _ = installed
    shipped = ROOT / "workbench" / "core" / "builtin_templates"
    inside = purelib / "workbench" / "core" / "builtin_templates"
    names = sorted(p.name for p in shipped.glob("*.json"))
    assert len(names) >= 20  # the common architectures' templates (core/builtin_template_sources.py)
    assert sorted(p.name for p in inside.glob("*.json")) == names
    assert all((inside / n).read_bytes() == (shipped / n).read_bytes() for n in names)


def test_demo_finds_its_resources_inside_the_wheel(installed, smollm2, tmp_path_factory):
    script, purelib, tmp = installed
    # The built-in model, converted once for the session (conftest's smollm2), is not converted again here.
    env = clean_env(tmp, **{cache.CACHE_ENV: str(tmp_path_factory.getbasetemp() / "workbench-cache")})
    out = run([script, "demo"], env=env, cwd=tmp).stdout
    run_file = purelib / "workbench" / "resources" / "examples" / "demo.toml"
    assert f"run file:    {run_file}" in out
    assert str(purelib / "workbench" / "resources" / "demo" / "train.jsonl") in out
    assert "already converted" in out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="freedesktop paths")
def test_desktop_entry_launches_the_installed_script(installed):
    script, _, tmp = installed
    env = clean_env(tmp)
    run([script, "desktop-entry", "install"], env=env, cwd=tmp)
    desktop = tmp / "home" / "share" / "applications" / "lora-workbench.desktop"
    assert f"Exec={script}\n" in desktop.read_text()
    assert (tmp / "home" / "share" / "icons" / "hicolor" / "scalable" / "apps" / "lora-workbench.svg").is_file()
    run([script, "desktop-entry", "uninstall"], env=env, cwd=tmp)
    assert not desktop.exists()
