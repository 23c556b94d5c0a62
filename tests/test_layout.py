"""The test tree itself: pytest's default (prepend) import mode imports every test module by its bare name,
so two test files with the same name in different folders stop the whole suite at collection."""

from collections import Counter
from pathlib import Path


def test_test_module_names_are_unique():
    names = Counter(p.name for p in Path(__file__).parent.rglob("test_*.py"))
    assert [n for n, k in names.items() if k > 1] == []
