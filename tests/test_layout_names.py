"""Every test module's file name is unique across tests/: pytest imports them by basename (rootdir-relative
"prepend" mode, no __init__.py), so two test_x.py files in different folders abort the whole collection with
"import file mismatch" — which a run of one folder at a time does not show."""

from collections import Counter
from pathlib import Path


def test_test_module_names_are_unique():
    names = Counter(p.name for p in Path(__file__).parent.rglob("test_*.py"))
    assert [name for name, n in names.items() if n > 1] == []
