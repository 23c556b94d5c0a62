"""The demo: ``resources/examples/demo.toml``, the run the window opens by default and ``workbench demo`` trains
(the built-in SmolLM2 learning to turn a sentence about a payment into one line of JSON; ``resources/demo``)."""

from __future__ import annotations

from pathlib import Path

from .errors import ModelSourceError

__all__ = ["resources_dir", "demo_run_file", "demo_config"]


def resources_dir() -> Path:
    """The project's ``resources/`` folder: at the top of a source checkout (or an editable install), or inside
    the package as ``workbench/resources`` in a wheel install and in the frozen bundle (setup.py maps it there).
    The run files' relative data paths (``resources/demo/…``) are anchored at its parent in both layouts."""
    package = Path(__file__).resolve().parents[1]
    for here in (package.parent / "resources", package / "resources"):
        if (here / "examples").is_dir():
            return here
    raise ModelSourceError(f"the demo resources are not installed (neither {package.parent / 'resources'} nor "
                           f"{package / 'resources'} exists)",
                           "reinstall LoRA Workbench (pipx install lora-workbench…whl), or run it from a source "
                           "checkout")


def demo_run_file() -> Path:
    """``resources/examples/demo.toml``: the run the window opens by default and ``workbench demo`` trains."""
    path = resources_dir() / "examples" / "demo.toml"
    if not path.is_file():
        raise ModelSourceError(f"the demo run file {path} is missing", "restore it from the repository")
    return path


def demo_config(overrides: list[str] | None = None):
    """The demo run as a ``RunConfig`` whose data paths are absolute, so it runs from any working directory
    (the run file writes them relative to the repository root). ``overrides`` are ``section.field=value``."""
    from .config import RunConfig

    config = RunConfig.from_toml(demo_run_file())
    root = resources_dir().parent

    def anchored(paths: list[str]) -> list[str]:
        return [p if Path(p).is_absolute() else str(root / p) for p in paths]

    config = config.copy_with(data={"train_files": anchored(config.data.train_files),
                                    "validation_files": anchored(config.data.validation_files)})
    return config.with_overrides(overrides) if overrides else config
