"""The Train tab's plots are built and painted in idle event-loop turns while the tab is hidden (the window starts
this after its warm-up), so that pressing Start neither builds five pyqtgraph plots nor lays out their axes."""

from PySide6.QtWidgets import QApplication, QTabWidget, QWidget

from workbench.core.control import RunControl
from workbench.gui.widgets.training_panel import TrainingPanel


def axis_drawings(plots) -> list:
    return [axis.picture for plot in plots.plot_items for axis in (plot.getAxis("left"), plot.getAxis("bottom"))]


def test_the_plots_are_built_and_painted_while_the_tab_is_hidden(qtbot):
    tabs = QTabWidget()
    qtbot.addWidget(tabs)
    tabs.addTab(QWidget(), "Model")
    panel = TrainingPanel()
    tabs.addTab(panel, "Train")
    tabs.resize(1200, 800)
    tabs.show()
    qtbot.waitExposed(tabs)

    panel.prebuild_plots()
    assert not panel.plots.built  # not in the calling turn
    turns = 0
    while not panel.plots.built:
        QApplication.processEvents()
        turns += 1
        assert turns < 50
    assert turns >= 5, "one plot per turn, not all five at once"
    qtbot.waitUntil(lambda: not panel._prerendering.running, timeout=10_000)
    plots = panel.plots.widget()
    assert len(plots.plot_items) == 5
    assert not panel.isVisible()
    drawn = axis_drawings(plots)
    assert all(picture is not None for picture in drawn), "every axis was painted off screen"

    tabs.setCurrentWidget(panel)
    panel.repaint()
    assert panel.plots.widget() is plots
    assert axis_drawings(plots) == drawn, "the first show reused the axes' drawings (laid out at the same size)"
    panel.begin_run(RunControl())  # Start: the same plots, nothing built
    assert panel.plots.widget() is plots


def test_a_tab_shown_before_the_prebuild_ends_gets_its_plots_at_once(qtbot):
    tabs = QTabWidget()
    qtbot.addWidget(tabs)
    tabs.addTab(QWidget(), "Model")
    panel = TrainingPanel()
    tabs.addTab(panel, "Train")
    tabs.resize(1000, 700)
    tabs.show()
    qtbot.waitExposed(tabs)
    panel.prebuild_plots()
    QApplication.processEvents()
    tabs.setCurrentWidget(panel)  # mid-way: the rest is built now
    assert panel.plots.built and panel.plots.widget().isVisible()
    assert len(panel.plots.widget().plot_items) == 5
    for _ in range(10):
        QApplication.processEvents()
    assert panel._prerendering is None  # shown already: painted for real, nothing painted off screen
