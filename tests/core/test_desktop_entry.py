"""`workbench desktop-entry install|uninstall` into a temporary home: the freedesktop files land under
$XDG_DATA_HOME, validate, start this very workbench, and go away again; a file of the user's is never replaced."""

import configparser
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from workbench import __version__

ROOT = Path(__file__).resolve().parents[2]


def workbench(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home), "XDG_DATA_HOME": str(home / "share"),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="freedesktop paths")
def test_install_validate_launch_and_uninstall(tmp_path):
    share = tmp_path / "share"
    out = workbench(tmp_path, "desktop-entry", "install")
    assert out.returncode == 0, out.stderr
    desktop = share / "applications" / "lora-workbench.desktop"
    icon = share / "icons" / "hicolor" / "scalable" / "apps" / "lora-workbench.svg"
    metainfo = share / "metainfo" / "io.github.lora_workbench.LoRAWorkbench.metainfo.xml"
    assert out.stdout.split() == ["installed:", str(desktop), "installed:", str(icon), "installed:", str(metainfo)]
    assert icon.read_bytes().startswith(b"<svg")

    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str
    entry.read(desktop)
    section = entry["Desktop Entry"]
    assert section["Name"] == "LoRA Workbench" and section["Icon"] == "lora-workbench" and section["Type"] == "Application"
    # The launcher is this install: its command line, asked for the version, answers.
    launch = shlex.split(section["Exec"].replace("%%", "%"))
    ran = subprocess.run([*launch, "--version"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert ran.returncode == 0 and ran.stdout.strip() == f"workbench {__version__}"
    for tool, args in (("desktop-file-validate", [str(desktop)]),
                       ("appstreamcli", ["validate", "--no-net", str(metainfo)])):
        if shutil.which(tool):
            checked = subprocess.run([tool, *args], capture_output=True, text=True)
            assert checked.returncode == 0, checked.stdout + checked.stderr

    again = workbench(tmp_path, "desktop-entry", "install")  # installing twice replaces our own files
    assert again.returncode == 0, again.stderr

    out = workbench(tmp_path, "desktop-entry", "uninstall")
    assert out.returncode == 0, out.stderr
    assert not desktop.exists() and not icon.exists() and not metainfo.exists()
    out = workbench(tmp_path, "desktop-entry", "uninstall")
    assert out.returncode == 0 and "nothing to remove" in out.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="freedesktop paths")
def test_a_users_own_desktop_file_is_left_alone(tmp_path):
    desktop = tmp_path / "share" / "applications" / "lora-workbench.desktop"
    desktop.parent.mkdir(parents=True)
    mine = "[Desktop Entry]\nType=Application\nName=My own\nExec=/opt/mine\n"
    desktop.write_text(mine)
    out = workbench(tmp_path, "desktop-entry", "install")
    assert out.returncode == 2 and "was not written by LoRA Workbench" in out.stderr and "Traceback" not in out.stderr
    assert desktop.read_text() == mine
    assert not (tmp_path / "share" / "metainfo").exists(), "nothing was installed"
    assert workbench(tmp_path, "desktop-entry", "uninstall").returncode == 0
    assert desktop.read_text() == mine


def test_exec_quoting_follows_the_desktop_entry_spec():
    from workbench.commands.desktop import desktop_exec

    assert desktop_exec(["/usr/bin/workbench"]) == "/usr/bin/workbench"
    assert desktop_exec(["/opt/my apps/python", "-m", "workbench"]) == '"/opt/my apps/python" -m workbench'
    assert desktop_exec(['/a"b$c', "100%"]) == '"/a\\"b\\$c" 100%%'
