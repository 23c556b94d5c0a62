"""The Data tab's "Add image folder…" buttons: shown only for image classification, they open a folder dialog, and the
folder chosen becomes the training (or validation) data, read into thumbnails and a bar per class."""

from pathlib import Path

from PySide6.QtCore import Qt


def choose_folder(qtbot, button, folder: Path) -> None:
    """Click the button and choose ``folder`` in the dialog it opens, as a user would."""
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    dialog = button.dialog
    assert dialog is not None and dialog.isVisible() and dialog.isModal()
    dialog.selectFile(str(folder))
    dialog.accept()


def test_image_folder_buttons_follow_the_task_and_read_the_folder(window, qtbot, tmp_path):
    import tiny

    panel = window.data
    buttons = (panel.train_folder, panel.validation_folder)
    assert window.store.config.model.task != "image-classification"
    assert all(b.isHidden() for b in buttons), "text data has no image folders"
    window.store.update("model", task="image-classification")
    assert not any(b.isHidden() for b in buttons)

    digits = tiny.save_digit_images(tmp_path / "digits", per_class=3, classes=4)
    with qtbot.waitSignal(window.data_inspected, timeout=60_000):
        choose_folder(qtbot, panel.train_folder, digits)
    assert window.store.config.data.train_files == [str(digits)]
    assert panel.train_box.paths() == [str(digits)]
    assert "Images for" in panel.detected_label.text() and "12 training rows" in panel.detected_label.text()
    assert panel.preview.toHtml().count("<img") == 4, "one thumbnail per class"
    assert list(panel.bars.opts["height"]) == [3.0, 3.0, 3.0, 3.0]
    assert panel.train_folder.dialog is None, "the dialog is gone once closed"

    held_out = tiny.save_digit_images(tmp_path / "held-out", per_class=2, classes=4, seed=1)
    with qtbot.waitSignal(window.data_inspected, timeout=60_000):
        choose_folder(qtbot, panel.validation_folder, held_out)
    assert window.store.config.data.validation_files == [str(held_out)]
    assert "8 validation rows" in panel.detected_label.text()

    qtbot.mouseClick(panel.train_folder, Qt.MouseButton.LeftButton)  # cancelled: nothing changes
    panel.train_folder.dialog.reject()
    assert window.store.config.data.train_files == [str(digits)] and panel.train_folder.dialog is None

    window.store.update("model", task="causal-lm")
    assert all(b.isHidden() for b in buttons)
