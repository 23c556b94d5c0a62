"""Before the window is created: can Qt's X11 platform plugin load? If not, name the packages to install.

On a bare Linux desktop Qt aborts with "could not load the Qt platform plugin xcb" and suggests reinstalling
the application, one missing library at a time (libxcb-cursor0, then libxcb-icccm4, then about ten more).
``ldd`` on the plugin lists every one of them at once; ``problem()`` turns the list into one message with the
Debian/Ubuntu and Fedora package names (the README lists the same). Nothing here imports Qt: the check runs
before Qt would abort the process.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

# soname -> (Debian/Ubuntu package, Fedora package): the libraries Qt 6's xcb plugin and its Qt libraries link
# (ldd lists them transitively), beyond what any desktop has.
PACKAGES: dict[str, tuple[str, str]] = {
    "libxcb-cursor.so.0": ("libxcb-cursor0", "xcb-util-cursor"),
    "libxcb-icccm.so.4": ("libxcb-icccm4", "xcb-util-wm"),
    "libxcb-keysyms.so.1": ("libxcb-keysyms1", "xcb-util-keysyms"),
    "libxcb-image.so.0": ("libxcb-image0", "xcb-util-image"),
    "libxcb-render-util.so.0": ("libxcb-render-util0", "xcb-util-renderutil"),
    "libxcb-util.so.1": ("libxcb-util1", "xcb-util"),
    "libxcb-xkb.so.1": ("libxcb-xkb1", "libxcb"),
    "libxcb-randr.so.0": ("libxcb-randr0", "libxcb"),
    "libxcb-shape.so.0": ("libxcb-shape0", "libxcb"),
    "libxcb-sync.so.1": ("libxcb-sync1", "libxcb"),
    "libxcb-xfixes.so.0": ("libxcb-xfixes0", "libxcb"),
    "libxcb-shm.so.0": ("libxcb-shm0", "libxcb"),
    "libxcb-render.so.0": ("libxcb-render0", "libxcb"),
    "libxcb-xinput.so.0": ("libxcb-xinput0", "libxcb"),
    "libxcb-xinerama.so.0": ("libxcb-xinerama0", "libxcb"),
    "libxcb.so.1": ("libxcb1", "libxcb"),
    "libxkbcommon-x11.so.0": ("libxkbcommon-x11-0", "libxkbcommon-x11"),
    "libxkbcommon.so.0": ("libxkbcommon0", "libxkbcommon"),
    "libX11-xcb.so.1": ("libx11-xcb1", "libX11-xcb"),
    "libX11.so.6": ("libx11-6", "libX11"),
    "libSM.so.6": ("libsm6", "libSM"),
    "libICE.so.6": ("libice6", "libICE"),
    "libEGL.so.1": ("libegl1", "libglvnd-egl"),
    "libGL.so.1": ("libgl1", "libglvnd-glx"),
    "libOpenGL.so.0": ("libopengl0", "libglvnd-opengl"),
    "libfontconfig.so.1": ("libfontconfig1", "fontconfig"),
    "libfreetype.so.6": ("libfreetype6", "freetype"),
    "libdbus-1.so.3": ("libdbus-1-3", "dbus-libs"),
    "libglib-2.0.so.0": ("libglib2.0-0", "glib2"),
    "libgthread-2.0.so.0": ("libglib2.0-0", "glib2"),
}

_NOT_FOUND = re.compile(r"^\s*(\S+)\s*=>\s*not found", re.MULTILINE)


def xcb_plugin() -> Path | None:
    """PySide6's ``libqxcb.so``, found without importing Qt; None where there is none (not Linux, no PySide6)."""
    spec = importlib.util.find_spec("PySide6")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "Qt" / "plugins" / "platforms" / "libqxcb.so"
    return path if path.is_file() else None


def missing_libraries(plugin: Path) -> list[str]:
    """The shared libraries ``plugin`` needs that the dynamic loader cannot find (``ldd``), in order, once each;
    empty when ``ldd`` is not there or says nothing useful (the check then leaves the judgement to Qt)."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return []
    try:
        out = subprocess.run([ldd, str(plugin)], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return list(dict.fromkeys(_NOT_FOUND.findall(out)))


def uses_xcb(env: dict[str, str] | None = None) -> bool:
    """Whether Qt would pick its X11 plugin: asked for by name, or on Linux with an X display and no Wayland one
    (Qt 6 prefers Wayland where both are there)."""
    env = os.environ if env is None else env
    platform = env.get("QT_QPA_PLATFORM", "")
    if platform:
        return platform.split(":")[0].split(";")[0] == "xcb"
    return sys.platform.startswith("linux") and bool(env.get("DISPLAY")) and not env.get("WAYLAND_DISPLAY")


def describe(missing: list[str]) -> tuple[str, str]:
    """(message, hint) naming the missing libraries and the packages that provide them."""
    known = [name for name in missing if name in PACKAGES]
    other = [name for name in missing if name not in PACKAGES]
    message = ("the window cannot start: Qt's X11 platform plugin (libqxcb.so) needs libraries that are not "
               f"installed: {', '.join(missing)}")
    hints = []
    if known:
        debian = " ".join(dict.fromkeys(PACKAGES[n][0] for n in known))
        fedora = " ".join(dict.fromkeys(PACKAGES[n][1] for n in known))
        hints.append(f"install them — Debian/Ubuntu: sudo apt-get install {debian}; Fedora: sudo dnf install {fedora}")
    if other:
        hints.append(f"{', '.join(other)} should come with PySide6 or the system: reinstall the app (make run) or "
                     "find the package that provides it (Debian/Ubuntu: apt-file search NAME; Fedora: dnf provides "
                     "'*/NAME')")
    hints.append("or work without a window: `workbench demo --train`, `workbench train RUN.toml`")
    return message, "; ".join(hints)


def problem(plugin: Path | None = None, env: dict[str, str] | None = None) -> tuple[str, str] | None:
    """(message, hint) when the window would fail to start for missing X11 libraries; None when it can start
    (or the check does not apply: another platform plugin, no PySide6 plugin, no ``ldd``)."""
    if plugin is None:
        if not uses_xcb(env):
            return None
        plugin = xcb_plugin()
        if plugin is None:
            return None
    missing = missing_libraries(plugin)
    return describe(missing) if missing else None
