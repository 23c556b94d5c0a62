"""``workbench desktop-entry install|uninstall``: the launcher and icon for the current user, and their removal.

Linux (freedesktop): ``$XDG_DATA_HOME`` (``~/.local/share``, via platformdirs) gets ``applications/lora-workbench.desktop``,
the icon in ``icons/hicolor/scalable/apps`` and the AppStream metainfo in ``metainfo``. Windows: a Start-menu
shortcut (``.lnk``, written by PowerShell's WScript.Shell, which every Windows has). The launcher starts this
install: the ``workbench`` script beside this Python (pipx, uv tool, a venv), the frozen bundle itself, or
``python -m workbench`` as the last resort.

Files that are already there and are not ours are never replaced; uninstall removes only what install wrote.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

APP_ID = "lora-workbench"
METAINFO = "io.github.lora_workbench.LoRAWorkbench.metainfo.xml"
MARKER = "X-LoRA-Workbench-Installed-By=workbench desktop-entry"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "desktop-entry", help="add (or remove) the LoRA Workbench launcher and icon for the current user",
        description="Install the launcher for this LoRA Workbench: on Linux a .desktop entry, its icon and AppStream "
                    "metadata under $XDG_DATA_HOME (~/.local/share); on Windows a Start-menu shortcut. "
                    "'uninstall' removes exactly those files again.")
    p.add_argument("action", choices=["install", "uninstall"])
    p.set_defaults(func=run_desktop_entry)


def run_desktop_entry(args: argparse.Namespace) -> int:
    if sys.platform.startswith("win"):
        paths = _windows(args.action)
    elif sys.platform == "darwin":
        from workbench.core.errors import WorkbenchError

        raise WorkbenchError("desktop-entry does not make macOS app bundles",
                             "start the window with `workbench` from a terminal, or use the frozen build's "
                             "LoRA Workbench.app (packaging/README.md)")
    else:
        paths = install_freedesktop() if args.action == "install" else uninstall_freedesktop()
    verb = "installed" if args.action == "install" else "removed"
    for path in paths:
        print(f"{verb}: {path}")
    if not paths:
        print("nothing to remove: no launcher of LoRA Workbench is installed for this user")
    return 0


def launcher_command() -> list[str]:
    """The command line that starts the window of this very install."""
    from workbench.core.selfcmd import is_frozen, workbench_command

    if not is_frozen():
        script = Path(sys.executable).with_name("workbench.exe" if os.name == "nt" else "workbench")
        if script.is_file():
            return [str(script)]
    return workbench_command()


# --------------------------------------------------------------------------------------------- freedesktop


def data_home() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir(roaming=False))


def freedesktop_targets() -> dict[str, Path]:
    home = data_home()
    return {"desktop": home / "applications" / f"{APP_ID}.desktop",
            "icon": home / "icons" / "hicolor" / "scalable" / "apps" / f"{APP_ID}.svg",
            "metainfo": home / "metainfo" / METAINFO}


def _sources() -> Path:
    from workbench.core.demo import resources_dir

    return resources_dir() / "desktop"


def desktop_exec(argv: list[str]) -> str:
    """An ``Exec=`` value: arguments quoted as the Desktop Entry spec asks (and ``%`` doubled)."""
    def quote(arg: str) -> str:
        if arg and not any(c in arg for c in ' \t\n"\'\\><~|&;$*?#()`'):
            return arg.replace("%", "%%")
        escaped = "".join("\\" + c if c in '"`$\\' else c for c in arg)
        return f'"{escaped}"'.replace("%", "%%")

    return " ".join(quote(a) for a in argv)


def desktop_file_text() -> str:
    template = (_sources() / f"{APP_ID}.desktop").read_text(encoding="utf-8")
    return template.replace("@EXEC@", desktop_exec(launcher_command())).rstrip("\n") + f"\n{MARKER}\n"


def _ours(kind: str, path: Path, wanted: bytes) -> bool:
    data = path.read_bytes()
    return data == wanted or (kind == "desktop" and MARKER.encode() in data)


def install_freedesktop() -> list[Path]:
    from workbench.core.errors import OutputError
    from workbench.core.fsutil import atomic_write_bytes

    sources = _sources()
    contents = {"desktop": desktop_file_text().encode(),
                "icon": (sources / f"{APP_ID}.svg").read_bytes(),
                "metainfo": (sources / METAINFO).read_bytes()}
    targets = freedesktop_targets()
    for kind, path in targets.items():
        if path.exists() and not _ours(kind, path, contents[kind]):
            raise OutputError(f"{path} exists and was not written by LoRA Workbench; it was left as it is",
                              "remove or rename it yourself if it is an old copy, then run this again")
    for kind, path in targets.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, contents[kind])
    _refresh_caches()
    return list(targets.values())


def uninstall_freedesktop() -> list[Path]:
    sources = _sources()
    wanted = {"desktop": b"", "icon": (sources / f"{APP_ID}.svg").read_bytes(),
              "metainfo": (sources / METAINFO).read_bytes()}
    removed = []
    for kind, path in freedesktop_targets().items():
        if path.is_file() and _ours(kind, path, wanted[kind]):
            path.unlink()
            removed.append(path)
    _refresh_caches()
    return removed


def _refresh_caches() -> None:
    """Desktops pick the new entry up by themselves; these tools only make it quicker, where they are installed."""
    home = data_home()
    for cmd in (["update-desktop-database", "-q", str(home / "applications")],
                ["gtk-update-icon-cache", "-q", "-t", str(home / "icons" / "hicolor")]):
        if shutil.which(cmd[0]) and Path(cmd[-1]).is_dir():
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


# ------------------------------------------------------------------------------------------------ Windows


def _windows(action: str) -> list[Path]:
    from workbench.core.errors import OutputError

    programs = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming")) / "Microsoft" / "Windows" / \
        "Start Menu" / "Programs"
    link = programs / "LoRA Workbench.lnk"
    if action == "uninstall":
        if link.is_file():
            link.unlink()
            return [link]
        return []
    cmd = launcher_command()
    target, arguments = cmd[0], subprocess.list2cmdline(cmd[1:])
    if Path(target).name.lower() == "python.exe":  # no console window behind the GUI
        target = str(Path(target).with_name("pythonw.exe"))

    def ps(value: str) -> str:
        return "'" + value.replace("'", "''") + "'"

    script = (f"$s = (New-Object -ComObject WScript.Shell).CreateShortcut({ps(str(link))}); "
              f"$s.TargetPath = {ps(target)}; $s.Arguments = {ps(arguments)}; "
              f"$s.Description = 'LoRA Workbench'; $s.WorkingDirectory = {ps(str(Path.home()))}; $s.Save()")
    link.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["powershell", "-NoProfile", "-NonInteractive", "-Command", script],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0 or not link.is_file():
        raise OutputError(f"the Start-menu shortcut {link} could not be written: {done.stderr.strip()[-500:]}",
                          f"make a shortcut to {subprocess.list2cmdline(cmd)} by hand (right-click › New › Shortcut)")
    return [link]
