"""Plots are built when first shown or first used (gui/widgets/lazy_plot.py), and then behave as if built at once."""

import pytest
from PySide6.QtWidgets import QTabWidget, QWidget

from workbench.gui.widgets.lazy_plot import LazyPlot


class Recorder(QWidget):
    """Stands for a plot: remembers the data it is given."""

    def __init__(self):
        super().__init__()
        self.points: list[float] = []

    def add(self, value: float) -> None:
        self.points.append(value)


def counting_factory():
    built: list[Recorder] = []

    def build() -> Recorder:
        built.append(Recorder())
        return built[-1]

    return build, built


def test_a_plot_on_a_hidden_tab_is_built_when_the_tab_is_shown(qtbot):
    build, built = counting_factory()
    tabs = QTabWidget()
    qtbot.addWidget(tabs)
    tabs.addTab(QWidget(), "first")
    lazy = LazyPlot(build)
    tabs.addTab(lazy, "plots")
    tabs.resize(600, 400)
    tabs.show()
    qtbot.waitExposed(tabs)
    assert built == [] and not lazy.built
    tabs.setCurrentWidget(lazy)
    assert len(built) == 1 and lazy.built
    plot = lazy.widget()
    assert plot.isVisible()  # a child made while its parent is shown is shown too (Qt would leave it hidden)
    qtbot.waitUntil(lambda: plot.size() == lazy.size())  # it fills the placeholder
    tabs.setCurrentIndex(0)
    tabs.setCurrentWidget(lazy)
    assert len(built) == 1  # built once


def test_data_given_to_a_hidden_plot_builds_it_and_reaches_it(qtbot):
    build, built = counting_factory()
    lazy = LazyPlot(build)
    qtbot.addWidget(lazy)
    lazy.add(1.5)
    lazy.add(2.5)
    assert len(built) == 1
    assert built[0].points == [1.5, 2.5]
    assert lazy.points is built[0].points
    assert not built[0].isVisible()  # hidden with its placeholder until that is shown


def test_a_missing_name_is_an_attribute_error_and_a_private_one_builds_nothing(qtbot):
    lazy = LazyPlot(Recorder)
    qtbot.addWidget(lazy)
    with pytest.raises(AttributeError):
        lazy._private  # noqa: B018
    assert not lazy.built  # private names are never forwarded, so a half-made placeholder never builds its plot
    with pytest.raises(AttributeError, match="no_such_method"):
        lazy.no_such_method  # noqa: B018
    assert lazy.built


def stepwise_factory(pieces: int):
    """Stands for a plot built a piece per step (as MetricsPlots.in_steps): records which pieces were built."""
    log: list[int] = []

    def build():
        plot = Recorder()
        for piece in range(pieces):
            log.append(piece)
            yield
        return plot

    return build, log


def test_prebuild_builds_one_piece_per_event_loop_turn(qtbot):
    build, log = stepwise_factory(4)
    lazy = LazyPlot(build)
    qtbot.addWidget(lazy)
    ready = []
    lazy.ready.connect(lambda: ready.append(1))
    lazy.prebuild()
    assert log == [] and not lazy.built  # nothing in the calling turn: the window goes on painting first
    from PySide6.QtWidgets import QApplication

    seen = []
    for _ in range(20):  # one turn of the event loop at a time
        QApplication.processEvents()
        seen.append(len(log))
        if lazy.built:
            break
    assert seen[:4] == [1, 2, 3, 4], f"pieces built per turn: {seen}"
    assert lazy.built and ready == [1]
    assert not lazy.widget().isVisible()  # built while hidden, shown with its placeholder
    lazy.prebuild()
    assert log == [0, 1, 2, 3] and ready == [1]  # a second prebuild builds nothing


def test_a_plot_needed_during_its_prebuild_is_finished_at_once(qtbot):
    build, log = stepwise_factory(5)
    lazy = LazyPlot(build)
    qtbot.addWidget(lazy)
    ready = []
    lazy.ready.connect(lambda: ready.append(1))
    lazy.prebuild()
    from PySide6.QtWidgets import QApplication

    QApplication.processEvents()
    assert 0 < len(log) < 5
    lazy.add(3.0)  # data for the plot: the rest of its pieces are built now, once
    assert log == [0, 1, 2, 3, 4] and lazy.built and ready == [1]
    assert lazy.points == [3.0]
    for _ in range(5):
        QApplication.processEvents()
    assert log == [0, 1, 2, 3, 4], "nothing is built twice"


def test_a_prebuild_waits_for_a_quick_turn_after_a_busy_one(qtbot):
    """Work done ahead of time (``when_idle``) does not land in the turn after a busy one: there it would add
    its piece to what just held the GUI thread. It still finishes while the loop stays busy."""
    import time

    from PySide6.QtCore import QObject, QTimer
    from PySide6.QtWidgets import QApplication

    from workbench.gui.widgets.lazy_plot import IdleSteps

    owner = QObject()
    log: list[str] = []

    def steps():
        for piece in range(3):
            log.append(f"piece {piece}")
            yield

    busy_turns = []

    def busy():  # one busy turn: twice the threshold on the GUI thread
        busy_turns.append(1)
        log.append("busy")
        time.sleep(2 * IdleSteps.BUSY_S)

    idle = IdleSteps(owner, steps(), when_idle=True)
    QTimer.singleShot(0, busy)
    for _ in range(50):
        QApplication.processEvents()
        if not idle.running:
            break
    assert not idle.running and log.count("busy") == 1
    assert idle.waits >= 1, log
    # A loop that is busy in every turn still gets the pieces built, after MAX_WAITS turns each.
    log.clear()
    always = QTimer(interval=0)
    always.timeout.connect(busy)
    idle = IdleSteps(owner, steps(), when_idle=True)
    always.start()
    for _ in range(4 * IdleSteps.MAX_WAITS + 10):
        QApplication.processEvents()
        if not idle.running:
            break
    always.stop()
    assert not idle.running and [e for e in log if e != "busy"] == ["piece 0", "piece 1", "piece 2"]
    # Without when_idle (the window's own build), a piece never waits.
    log.clear()
    plain = IdleSteps(owner, steps())
    QTimer.singleShot(0, busy)
    for _ in range(10):
        QApplication.processEvents()
    assert not plain.running and plain.waits == 0


def test_the_training_plots_are_built_in_small_pieces(qtbot):
    """MetricsPlots.in_steps yields between a plot's view, axes, item and place (not one plot per piece)."""
    from workbench.gui.widgets.plots import MetricsPlots

    steps = MetricsPlots.in_steps()
    pieces = 0
    try:
        while True:
            next(steps)
            pieces += 1
    except StopIteration as end:
        plots = end.value
    qtbot.addWidget(plots)
    assert len(plots.plot_items) == 5
    assert pieces >= 4 * len(plots.plot_items), pieces
    assert set(plots.curves) >= set(MetricsPlots.NAMES)
