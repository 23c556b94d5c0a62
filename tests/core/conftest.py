from pathlib import Path

import pytest

from workbench.core import builtin


@pytest.fixture(autouse=True)
def _private_model_cache(tmp_path, monkeypatch):
    """No engine test may write to the user's model cache, even through a default argument."""
    monkeypatch.setenv(builtin.CACHE_ENV, str(tmp_path / "default-cache"))


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Path:
    """The built-in SmolLM2 model, converted once per test session into a session-private cache."""
    return builtin.ensure_builtin(cache_dir=tmp_path_factory.getbasetemp() / "workbench-cache")
