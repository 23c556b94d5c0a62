"""Starting the window: `workbench RUN.toml` opens it with that run file, and missing X11 libraries are named,
with the packages to install, before Qt is loaded."""

import os
import shutil
import subprocess
import sys

import pytest

from workbench import cli
from workbench.gui import platform_check


def test_workbench_run_toml_opens_the_window_with_that_file(tmp_path, monkeypatch):
    run_file = tmp_path / "my-run.toml"
    run_file.write_text("")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    out = subprocess.run([sys.executable, "-m", "workbench", str(run_file)], capture_output=True, text=True, env=env,
                         timeout=60)
    assert "invalid choice" not in out.stderr
    assert "no display server found" in out.stderr, "it went the window's way (and found no display here)"

    import workbench.gui.app as app

    opened = []
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    monkeypatch.setattr(app, "main", lambda run_file=None: opened.append(run_file) or 0)  # the window itself: elsewhere
    assert cli.main([str(run_file)]) == 0
    assert opened == [str(run_file)]


def test_the_missing_library_check_names_debian_and_fedora_packages():
    message, hint = platform_check.describe(["libxcb-cursor.so.0", "libxcb-icccm.so.4", "libxkbcommon-x11.so.0"])
    assert "libxcb-cursor.so.0, libxcb-icccm.so.4, libxkbcommon-x11.so.0" in message
    assert "sudo apt-get install libxcb-cursor0 libxcb-icccm4 libxkbcommon-x11-0" in hint
    assert "sudo dnf install xcb-util-cursor xcb-util-wm libxkbcommon-x11" in hint


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("ldd") is None, reason="ldd is Linux's")
def test_a_plugin_whose_libraries_are_not_where_it_looks_is_reported(tmp_path):
    plugin = platform_check.xcb_plugin()
    assert plugin is not None
    # Whatever this machine lacks of the X11 libraries, the table knows its packages.
    assert [name for name in platform_check.missing_libraries(plugin) if name not in platform_check.PACKAGES] == []
    # A copy of the plugin in a folder without Qt's own libraries beside it ($ORIGIN/../../lib): those are missing.
    copy = tmp_path / "platforms" / "libqxcb.so"
    copy.parent.mkdir()
    shutil.copy(plugin, copy)
    message, hint = platform_check.problem(copy)
    assert "libQt6XcbQpa.so.6" in message and "libQt6Gui.so.6" in message
    assert "reinstall the app" in hint and "workbench train RUN.toml" in hint


def test_the_check_applies_only_where_qt_would_use_x11():
    assert platform_check.uses_xcb({"QT_QPA_PLATFORM": "xcb"})
    assert not platform_check.uses_xcb({"QT_QPA_PLATFORM": "offscreen", "DISPLAY": ":0"})
    assert platform_check.uses_xcb({"DISPLAY": ":0"}) == sys.platform.startswith("linux")
    assert not platform_check.uses_xcb({"DISPLAY": ":0", "WAYLAND_DISPLAY": "wayland-0"})
    assert platform_check.problem(env={"QT_QPA_PLATFORM": "offscreen"}) is None
