"""The playground's comparison of an adapter trained on an nf4 base: on the unquantized base against on the nf4 base,
from the real window, with a real 4-step QLoRA run of the tiny llama. The numbers themselves are checked against
transformers + PEFT in tests/core/test_quantized_eval.py; here, that the window runs the comparison off the GUI
thread, preselects what the run was trained on, shows the numbers, and refuses what it cannot do with the reason."""

import pytest

from trained_runs import qlora_run as trained_qlora_run

pytest.importorskip("bitsandbytes", reason="the quant extra (pip install bitsandbytes==0.50.2) is not installed")


@pytest.fixture
def qlora_run(tmp_path_factory, tiny_model_dir):
    return trained_qlora_run(tmp_path_factory, tiny_model_dir)


def test_compare_an_nf4_adapter_on_both_bases(window, qtbot, qlora_run):
    pg = window.playground
    box = pg.comparison
    window.tabs.setCurrentWidget(pg)
    box.quantization.setCurrentIndex(box.quantization.findData("int8"))
    pg.set_paths(str(qlora_run["model"]), str(qlora_run["adapter"]))
    assert box.quantization.currentData() == "nf4" and not box.double_quant.isChecked(), "as the run was trained"

    with qtbot.waitSignal(pg.loaded, timeout=60_000):
        pg.load_button.click()
    assert "trained on a base quantized to nf4" in pg.status.text()

    box.compare_button.click()
    assert "Type a prompt first" in box.result.text() and not box.running

    pg.prompt.setPlainText("What is the capital of France?")
    stages = []  # the worker's stage reports arrive on the GUI thread after this connection (they are polled)
    box.compareRequested.connect(lambda worker: worker.stage.connect(stages.append))
    with qtbot.waitSignal(box.compared, timeout=120_000) as got:
        box.compare_button.click()
        assert box.running and not pg.generate_button.isEnabled(), "one job on the prompt at a time"
    comparison = got.args[0]
    qtbot.waitUntil(lambda: not box.running)
    assert pg.generate_button.isEnabled() and box.compare_button.isEnabled()
    assert comparison.quantization == "nf4" and comparison.double_quant is False
    [prompt] = comparison.prompts
    assert prompt.prompt == "What is the capital of France?" and prompt.tokens > 1
    assert 0 < prompt.max_abs_diff and 0.0 <= prompt.top1_agreement <= 1.0 and prompt.adapter_effect > 0
    text = box.result.text()
    assert f"{prompt.max_abs_diff:.4g}" in text and f"{prompt.top1_agreement:.1%}" in text
    assert f"{prompt.adapter_effect:.4g}" in text and "<b>nf4</b>" in text
    assert [s.split(",")[0] for s in stages] == ["loading the base as stored", "loading the base quantized to nf4",
                                                 "running the prompts on the quantized base"]


def test_a_failed_comparison_is_one_line_in_the_box(window, qtbot, qlora_run, tmp_path):
    pg = window.playground
    box = pg.comparison
    pg.set_paths(str(qlora_run["model"]), str(tmp_path / "no-such-adapter"))
    pg.prompt.setPlainText("Two plus two?")
    with qtbot.waitSignal(box.busyChanged, timeout=120_000, check_params_cb=lambda busy: not busy):
        box.compare_button.click()
    assert "color:#c83232" in box.result.text() and "Traceback" not in box.result.text()


def test_without_bitsandbytes_compare_is_disabled_with_the_reason(qtbot, monkeypatch):
    from workbench.gui.widgets import quantized_comparison
    from workbench.gui.widgets.playground import Playground

    monkeypatch.setattr(quantized_comparison, "backend_available", lambda: False)
    pg = Playground()
    qtbot.addWidget(pg)
    box = pg.comparison
    assert not box.compare_button.isEnabled() and not box.quantization.isEnabled()
    assert "bitsandbytes" in box.result.text() and "pip install" in box.result.text()
