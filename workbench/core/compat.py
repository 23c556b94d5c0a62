"""Every framework API Workbench reads that the framework does not document as public, behind one module.

Each function here says what it reads and why no public API does the same, imports the framework inside the
function (this module is imported on short command paths), and has a test in ``tests/core/test_compat_<area>.py``
that fails when a framework release moves or changes what it reads, so an upgrade breaks there, in CI, and
not in a user's hands. Sections are named after the area of Workbench that uses them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import Dataset

# --- datasets (data) ---------------------------------------------------------------------------------------


def dataset_fingerprint(ds: Dataset) -> str:
    """The fingerprint ``datasets`` names a dataset's state by: the same for the same data and transforms
    (including a dataset read back from its cache files), different after any transform. The data
    preparation keys each cached stage on the fingerprint of the stage before it.

    No public API: ``datasets`` keeps it in ``Dataset._fingerprint`` (its own transforms read it there to
    derive the next one) and documents only the ``new_fingerprint=`` arguments that set it.
    """
    return ds._fingerprint
