"""The playground on a trained tiny model: base and adapter answers differ, streamed token by token, from
one model loaded once."""

from trained_runs import trained_runs


def test_base_and_adapter_answers_differ(window, qtbot, tmp_path_factory, tiny_model_dir):
    runs = trained_runs(tmp_path_factory, tiny_model_dir)
    pg = window.playground
    window.tabs.setCurrentWidget(pg)
    pg.set_paths(str(runs["model"]), str(runs["done"] / "adapter"))
    assert not pg.generate_button.isEnabled()
    with qtbot.waitSignal(pg.loaded, timeout=60_000):
        pg.load_button.click()
    model = pg.model
    pg.prompt.setPlainText("What is the capital of France?")
    pg.max_tokens.setValue(6)
    pg.temperature.setValue(0.0)
    with qtbot.waitSignal(pg.generated, timeout=60_000) as got:
        pg.generate_button.click()
    answers = got.args[0]
    pieces = pg.pieces  # which answer each streamed piece went to, in arrival order
    assert answers["base"] != answers["adapter"]
    assert answers["adapter"].strip()
    assert pg.answers["base"].toPlainText() == answers["base"]
    assert pg.answers["adapter"].toPlainText() == answers["adapter"]
    assert pieces.count("adapter") > 1, "streamed piece by piece"
    assert pieces.index("adapter") > max(i for i, w in enumerate(pieces) if w == "base")
    qtbot.waitUntil(lambda: pg.generate_button.isEnabled())

    with qtbot.waitSignal(pg.generated, timeout=60_000) as again:  # same model object: nothing reloaded
        pg.generate_button.click()
    assert pg.model is model and again.args[0] == answers


def test_an_empty_answer_says_so_in_its_pane(qtbot):
    """A model that ends at once (or writes only whitespace) leaves a note in its pane, not a blank box; a real
    answer beside it is shown as it came."""
    from PySide6.QtGui import QPalette

    from workbench.gui.widgets.playground import Playground

    from workbench.core.control import RunControl

    pg = Playground()
    qtbot.addWidget(pg)
    pg.control = RunControl()  # as generate() leaves it: the generation's own, not stopped
    pg.answers["adapter"].setPlainText(" Jupiter.")  # as streamed
    with qtbot.waitSignal(pg.generated) as got:
        pg.show_answers({"base": "", "adapter": " Jupiter."})
    assert got.args[0] == {"base": "", "adapter": " Jupiter."}
    assert pg.answers["base"].toPlainText() == "(the model answered with nothing: an end-of-sequence token at once)"
    assert pg.answers["adapter"].toPlainText() == " Jupiter."
    muted = pg.palette().color(QPalette.ColorRole.PlaceholderText).name()
    assert muted in pg.answers["base"].document().toHtml()  # a muted note, not text the model wrote
    assert pg.status.text() == "Done."

    pg.answers["base"].setPlainText("\n\n")
    pg.show_answers({"base": "\n\n", "adapter": "Jupiter."})
    assert pg.answers["base"].toPlainText().startswith("(the model answered with only whitespace")


def test_a_stopped_answer_gets_no_note(qtbot):
    from workbench.gui.widgets.playground import Playground

    pg = Playground()
    qtbot.addWidget(pg)
    pg.show_answers({"base": ""})  # stopped before the adapter's answer began
    assert pg.answers["base"].toPlainText() == ""
    assert pg.status.text() == "Stopped."

    from workbench.core.control import RunControl

    pg.control = RunControl()
    pg.control.request_stop()  # stopped during the adapter's answer: both are there, the second cut short
    pg.show_answers({"base": "Neptune.", "adapter": ""})
    assert pg.answers["adapter"].toPlainText() == ""
    assert pg.status.text() == "Stopped."
