import pytest

from workbench.core import cache


@pytest.fixture(autouse=True)
def _private_model_cache(tmp_path, monkeypatch):
    """No engine test may write to the user's model cache, even through a default argument."""
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "default-cache"))

