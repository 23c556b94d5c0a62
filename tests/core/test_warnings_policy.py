"""pyproject's filterwarnings: a DeprecationWarning or FutureWarning that a framework attributes to Workbench's
code (its stacklevel points at our call of a deprecated API) fails the test; the frameworks' warnings about their
own internals stay allowed. Checked with the filters pytest has installed for this very test."""

from __future__ import annotations

import warnings

import pytest


@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning])
def test_a_deprecation_raised_at_a_workbench_call_fails_the_test(category):
    with pytest.raises(category, match="renamed"):
        warnings.warn_explicit("`old_name` is renamed to `new_name`", category, "workbench/core/models.py", 1,
                               module="workbench.core.models")


@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning])
def test_a_deprecation_inside_a_framework_is_allowed(category):
    with warnings.catch_warnings(record=True) as seen:
        warnings.warn_explicit("an internal deprecation", category, "transformers/modeling_utils.py", 1,
                               module="transformers.modeling_utils")
    assert seen == []  # ignored, as pyproject says: not ours to fix
