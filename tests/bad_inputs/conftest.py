"""Fixtures for the bad-input corpus: a fresh ``Ctx`` per case, and caches kept out of the user's home."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_caches(tmp_path_factory, monkeypatch):
    """Cases that get as far as reading data write ``datasets`` cache files; the built-in model cache is
    never the user's either. Both live beside the test's folders, never inside them."""
    import datasets

    from workbench.core import cache

    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv(cache.CACHE_ENV, str(base / "workbench-cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", base / "hf-datasets")


@pytest.fixture
def ctx(tmp_path, tiny_model_dir):
    from bad_inputs.corpus import Ctx

    return Ctx(tmp_path, tiny_model_dir)
