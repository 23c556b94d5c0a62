"""The process-wide switches (gui/process_switches.py): set once at start-up, idempotent, and doing what they say."""

import gc
import os
import sys
import threading
import weakref

import pytest

from workbench.gui import process_switches
from workbench.gui.app import create_app


class _Node:
    """A reference cycle only the cyclic garbage collector can free."""

    def __init__(self):
        self.me = self


def _cycle() -> weakref.ref:
    node = _Node()
    ref = weakref.ref(node)
    del node
    return ref


def test_create_app_applies_every_switch_and_applying_again_changes_nothing(qapp):
    create_app()
    assert sys.getswitchinterval() == process_switches.SWITCH_INTERVAL_S
    assert not gc.isenabled()  # automatic collection is off: it would run on whichever thread allocates
    collect = gc.collect
    process_switches.apply_process_switches()
    assert gc.collect is collect  # not wrapped twice
    assert sys.getswitchinterval() == process_switches.SWITCH_INTERVAL_S


def test_a_collection_asked_for_on_a_job_thread_happens_on_the_gui_thread(qapp):
    process_switches.apply_process_switches()
    ref = _cycle()
    process_switches._collection_requested.clear()
    job = threading.Thread(target=gc.collect)  # as accelerate does at the start of a run
    job.start()
    job.join()
    assert ref() is not None  # nothing was freed on the job thread
    assert process_switches._collection_requested.is_set()

    collector = process_switches.GarbageCollector(None)
    try:
        collector.collect()  # what its timer runs on the GUI thread
    finally:
        collector._timer.stop()
        collector.deleteLater()
    assert ref() is None
    assert not process_switches._collection_requested.is_set()


def test_gui_thread_collections_still_collect(qapp):
    process_switches.apply_process_switches()
    ref = _cycle()
    assert gc.collect() >= 1
    assert ref() is None


def test_nothing_is_collected_while_the_ml_stack_imports_and_it_is_frozen_afterwards(qapp):
    process_switches.apply_process_switches()
    collector = process_switches.GarbageCollector(None)
    collector._timer.stop()
    try:
        with process_switches.importing_the_ml_stack():
            ref = _cycle()
            process_switches._collection_requested.set()
            collector.collect()
            assert ref() is not None  # the collector skipped its turn during the import
        assert gc.get_freeze_count() > 0  # what the import created is out of later collections
    finally:
        gc.unfreeze()  # leave the test process as the other tests expect it
        collector.deleteLater()


def test_freezing_collects_the_garbage_first_and_only_on_the_gui_thread(qapp):
    # What waits for its collection when a run starts (the previous run's model, say) must not be frozen with the
    # new run's objects: a frozen cycle is never freed.
    process_switches.apply_process_switches()
    collector = process_switches.GarbageCollector(None)
    collector._timer.stop()
    before = gc.get_freeze_count()
    try:
        ref = _cycle()
        job = threading.Thread(target=process_switches.freeze_long_lived_objects)  # as TrainWorker.emit does
        job.start()
        job.join()
        assert ref() is not None and gc.get_freeze_count() == before  # nothing collected or frozen on the job thread
        collector.collect()  # the GUI thread's next turn
        assert ref() is None  # collected, not frozen
        assert gc.get_freeze_count() > before
        assert not process_switches._freeze_requested.is_set()
    finally:
        gc.unfreeze()  # leave the test process as the other tests expect it
        collector.deleteLater()


@pytest.fixture
def stopped_collector(qapp):
    """A GarbageCollector whose timer is stopped (the test calls it), and the generation of every collection run."""
    process_switches.apply_process_switches()
    collector = process_switches.GarbageCollector(None)
    collector._timer.stop()
    generations: list[int] = []

    def seen(phase, info):
        if phase == "stop":
            generations.append(info["generation"])

    gc.callbacks.append(seen)
    try:
        yield collector, generations
    finally:
        gc.callbacks.remove(seen)
        collector.deleteLater()


def test_a_phase_that_defers_full_collections_keeps_to_young_ones_until_it_ends(stopped_collector):
    from workbench.core.gc_phases import deferring_full_collections

    collector, generations = stopped_collector
    with deferring_full_collections():
        collector._last_full -= 2 * collector.FULL_EVERY_S  # a full pass is overdue
        process_switches._collection_requested.set()  # and a middle one asked for
        collector.collect()
        assert generations == [1]  # the young/middle collection ran, not the full one
        with deferring_full_collections():  # a second phase (another thread's conversion) overlapping
            pass
        collector.collect()
        assert 2 not in generations, "the first phase still runs"
    ref = _cycle()
    collector.collect()
    assert generations[-1] == 2 and ref() is None  # the phase over: the overdue full pass runs


def test_a_full_pass_due_on_a_late_tick_waits_for_one_on_time(stopped_collector):
    """After a busy turn (a repaint, a plot's redraw) the collector's tick comes late; a full pass due then waits for
    a tick on time, so that the two do not add up in one gap, but never longer than MAX_FULL_WAIT_S."""
    collector, generations = stopped_collector
    collector._last_full -= 2 * collector.FULL_EVERY_S  # a full pass is overdue
    collector.collect(on_time=False)
    assert 2 not in generations, "not on a late tick"
    collector.collect(on_time=True)
    assert generations[-1] == 2, "on the next tick on time"
    generations.clear()
    collector._last_full -= 2 * collector.FULL_EVERY_S
    collector.collect(on_time=False)
    assert 2 not in generations
    collector._full_waiting_since -= collector.MAX_FULL_WAIT_S  # late ticks only, for as long as it may wait
    collector.collect(on_time=False)
    assert generations[-1] == 2, "it does not wait for ever"
    # The timer's tick says whether it came on time.
    collector._last_tick -= collector.INTERVAL_MS / 1000 + 0.05  # 50 ms late
    collector._last_full -= 2 * collector.FULL_EVERY_S
    generations.clear()
    collector._tick()
    assert 2 not in generations


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread priorities are set on Linux only")
def test_a_job_thread_keeps_its_priority_and_only_torchs_compute_threads_run_lower():
    # The job thread holds the GIL between its ops: lowered, it was preempted by other busy programs while holding
    # it, and the GUI thread waited (issue #16). torch's intra-op workers never hold the GIL: they are lowered.
    torch = pytest.importorskip("torch")
    threads_before = torch.get_num_threads()
    seen: dict = {}

    def job():
        torch.set_num_threads(2)  # the tests run with OMP_NUM_THREADS=1: without this torch starts no worker
        before = process_switches._native_threads()
        process_switches.lower_compute_threads_priority()
        own = threading.get_native_id()
        seen["own"] = os.getpriority(os.PRIO_PROCESS, own)
        seen["started"] = {tid: os.getpriority(os.PRIO_PROCESS, tid)
                           for tid in process_switches._native_threads() - before}

    try:
        thread = threading.Thread(target=job)
        thread.start()
        thread.join(60)
    finally:
        torch.set_num_threads(threads_before)
    assert seen["own"] == os.getpriority(os.PRIO_PROCESS, threading.get_native_id())  # as the GUI thread's
    assert seen["started"], "torch started no compute thread for the job"
    assert set(seen["started"].values()) == {min(seen["own"] + process_switches.COMPUTE_THREAD_NICENESS, 19)}
