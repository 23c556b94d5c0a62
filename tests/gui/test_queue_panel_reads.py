"""The queue panel reads the queue's files in a background job (its 2 s timer does while the tab is shown), and a
read that began before an edit made in the panel never puts the older queue back on screen."""

import threading

from workbench.core import run_queue
from workbench.core.config import RunConfig
from workbench.gui.widgets import queue_panel
from workbench.gui.widgets.queue_panel import QueuePanel


def queued_config(tmp_path, name: str) -> RunConfig:
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "Q?", "completion": " A."}\n')
    return RunConfig.from_dict({"model": {"source": str(tmp_path / "model")}, "data": {"train_files": [str(data)]},
                                "output": {"runs_root": str(tmp_path / "runs"), "name": name}})


def test_the_timer_reads_the_queue_off_the_gui_thread(qtbot, tmp_path, monkeypatch):
    run_queue.add_to_queue(queued_config(tmp_path, "first"))
    threads = []
    real = run_queue.queue_entries

    def recording(root):
        threads.append(threading.current_thread())
        return real(root)

    monkeypatch.setattr(queue_panel.run_queue, "queue_entries", recording)
    panel = QueuePanel()
    qtbot.addWidget(panel)
    panel.set_root(tmp_path / "runs")
    assert threads == [] and panel.entries == [], "a hidden panel reads nothing"
    with qtbot.waitSignal(panel.changed, timeout=10_000):
        panel.show()
    assert [e.name for e in panel.entries] == ["first"]
    assert threads and threading.main_thread() not in threads  # the read on showing
    run_queue.add_to_queue(queued_config(tmp_path, "second"))  # by another process, say `workbench queue add`
    threads.clear()  # (adding reads the queue too, here on the test's thread)
    with qtbot.waitSignal(panel.changed, timeout=10_000):
        panel._timer.timeout.emit()  # the 2 s timer's tick
    assert [e.name for e in panel.entries] == ["first", "second"]
    assert threads and threading.main_thread() not in threads, "show's and the timer's reads ran in background jobs"


def test_a_read_older_than_an_edit_does_not_replace_it(qtbot, tmp_path, monkeypatch):
    run_queue.add_to_queue(queued_config(tmp_path, "first"))
    panel = QueuePanel()
    qtbot.addWidget(panel)
    panel.config_source = lambda: queued_config(tmp_path, "added")
    release = threading.Event()
    real = run_queue.queue_entries

    def slow_in_the_background(root):
        entries = real(root)  # what the disk held when the read began
        if threading.current_thread() is not threading.main_thread():
            release.wait(10)
        return entries

    monkeypatch.setattr(queue_panel.run_queue, "queue_entries", slow_in_the_background)
    ended = []
    panel.root = tmp_path / "runs"
    panel.refresh(then=lambda: ended.append(1))  # reads "first" and waits
    panel.add_current()  # an edit here (Queue these settings): written and shown at once
    assert [e.name for e in panel.entries] == ["first", "added"]
    release.set()
    qtbot.waitUntil(lambda: not panel._reading, timeout=10_000)
    assert ended == [1]
    assert [e.name for e in panel.entries] == ["first", "added"], "the older read was dropped"
