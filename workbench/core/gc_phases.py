"""Phases of a job during which full garbage collections are put off: ``deferring_full_collections()``.

A full collection walks every object the collector tracks that is not frozen, holding the GIL for all of it. Some
phases create hundreds of thousands of objects that live until the phase ends and hold no garbage a collection
could find: converting a GGUF file (``core/gguf_import.py``) parses its metadata three times — the configuration,
the tokenizer, the weights — each parse a few hundred thousand strings, tuples and arrays for the 49k-token
vocabulary and its merges, all freed by reference counting when the parse returns. The window runs the collection
schedule itself on the GUI thread (``gui/process_switches.GarbageCollector``), after freezing what start-up
created, so a conversion's survivors were most of what each full pass walked, with the GIL held: the conversion and
the window stopped meanwhile (up to 100 s of one conversion in a GUI test at a load of 12; 6 passes, 4 s, at a load
of 5 with 2 M unfrozen objects in bench/gguf_convert_gc.py). The window's schedule asks
``full_collections_deferred()`` and keeps to young collections while a phase runs; its next full pass comes after
the phase, when the phase's objects are gone. The interpreter's own schedule (no window)
rarely runs a full pass there anyway: with nothing frozen it waits until the long-lived objects grew by a quarter.

Young collections go on, so cyclic garbage the phase makes in passing is still freed. Phases may overlap (two
threads converting); the deferral lasts until the last one ends. No Qt here: core declares the phase, the GUI
honours it.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

__all__ = ["deferring_full_collections", "full_collections_deferred"]

_lock = threading.Lock()
_active = 0


@contextmanager
def deferring_full_collections() -> Iterator[None]:
    global _active
    with _lock:
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1


def full_collections_deferred() -> bool:
    """True while a phase that puts off full collections runs, on any thread."""
    return _active > 0
