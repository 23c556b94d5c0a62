"""The Preset box never names a preset the ticks are not: a hand-made selection reads "custom selection", an
applied preset (or the same modules ticked by hand) is named, in the box and in the run file."""


def _ticked(window):
    return set(window.layers.model.selection.ordered())


def test_the_preset_box_follows_what_is_ticked(opened):
    window = opened
    layers, tree = window.layers, window.overview.tree
    assert layers.preset_combo.currentData() == window.store.config.lora.preset == "all-linear"
    assert _ticked(window) == set(tree.preset("all-linear"))

    # Untick one module: no preset is what will train any more.
    one = tree.preset("all-linear")[0]
    layers.model.set_selected([one], False)
    assert layers.preset_combo.currentIndex() == -1 and layers.preset_combo.currentText() == ""
    assert layers.preset_combo.placeholderText() == "custom selection"
    assert one not in window.store.config.lora.target_modules

    # Apply another preset: named in the box and in the configuration.
    layers.preset_combo.setCurrentIndex(layers.preset_combo.findData("attention"))
    layers.apply_preset()
    assert _ticked(window) == set(tree.preset("attention"))
    assert layers.preset_combo.currentData() == window.store.config.lora.preset == "attention"

    # Tick exactly the MLP modules by hand: that is the mlp preset, and the box says so.
    layers.model.set_selected(tree.preset("attention"), False)
    layers.model.set_selected(tree.preset("mlp"), True)
    assert layers.preset_combo.currentData() == window.store.config.lora.preset == "mlp"

    # "Apply preset" with the box on "custom selection" changes nothing.
    layers.model.set_selected([tree.preset("mlp")[0]], False)
    before = _ticked(window)
    layers.apply_preset()
    assert _ticked(window) == before


def _darkest_text_pixel(combo) -> int:
    image = combo.grab().toImage()
    label = range(4, image.width() - 30)  # the label, not the drop-down arrow
    return min(image.pixelColor(x, y).lightness() for x in label for y in range(image.height()))


def test_custom_selection_is_drawn_as_a_state_not_a_grey_placeholder(qtbot):
    from workbench.gui.widgets.layer_panel import StateComboBox

    combo = StateComboBox()
    qtbot.addWidget(combo)
    combo.addItem("attention", "attention")
    combo.setPlaceholderText("custom selection")
    combo.resize(220, 30)
    combo.show()
    combo.setCurrentIndex(0)
    named = _darkest_text_pixel(combo)
    combo.setCurrentIndex(-1)
    assert combo.currentData() is None
    assert abs(_darkest_text_pixel(combo) - named) <= 10, "drawn in the text colour a preset's name has"
