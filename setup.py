"""Only what pyproject.toml cannot say: the top-level resources/ folder (the demo task, example run files, icon
sources) is the package ``workbench.resources`` in the wheel, so that `workbench demo` works from a pipx or uv tool
install (core/demo.py finds it there, and in a source checkout at the top level)."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["workbench*"]), "workbench.resources"],
    package_dir={"workbench.resources": "resources"},
)
