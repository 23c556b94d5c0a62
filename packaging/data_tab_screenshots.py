"""Screenshots of the Data tab in its states a newcomer meets, with the real built-in SmolLM2 model: the demo chat
data with its validation file (and its tokens shown), LLaMA-Factory v1 rows with per-message loss_weight, plain text and its split, and
a bad validation row shown beside its list.

    .venv/bin/python packaging/data_tab_screenshots.py [OUT_FOLDER]   (default: a temporary folder, printed)

Runs itself under ``xvfb-run`` when there is no display (see packaging/screenshots.py, whose helpers it uses).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import screenshots as shots  # noqa: E402  (the window-driving helpers of the README screenshots)

ROOT = shots.ROOT
DEMO = ROOT / "resources" / "demo"
PLAY = """\
Before we proceed any further, hear me speak.

All:
Speak, speak.

First Citizen:
You are all resolved rather to die than to famish?

All:
Resolved. resolved.

First Citizen:
First, you know Caius Marcius is chief enemy to the people.
"""


def v1_rows(folder: Path) -> Path:
    """The demo's conversations as LLaMA-Factory's v1 SFT format writes them: content parts and loss_weight,
    with an earlier assistant turn left out of the loss."""
    out = []
    for line in (DEMO / "train.jsonl").read_text().splitlines()[:40]:
        user, assistant = json.loads(line)["messages"]
        out.append({"messages": [
            {"role": "user", "content": [{"type": "text", "value": "Hi, can you help me with something?"}],
             "loss_weight": 0.0},
            {"role": "assistant", "content": [{"type": "text", "value": "Of course. What is it?"}], "loss_weight": 0.0},
            {"role": "user", "content": [{"type": "text", "value": user["content"]}], "loss_weight": 0.0},
            {"role": "assistant", "content": [{"type": "text", "value": assistant["content"]}], "loss_weight": 1.0},
        ]})
    path = folder / "LLaMA-Factory" / "data" / "v1_sft_demo_extraction.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out))
    return path


def main() -> int:
    shots.ensure_display()
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="data-tab-"))
    out.mkdir(parents=True, exist_ok=True)
    from PySide6.QtCore import QSettings

    from workbench.core.builtin import ensure_builtin
    from workbench.gui.app import create_app
    from workbench.gui.main_window import MainWindow

    model = ensure_builtin()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        create_app()
        window = MainWindow(QSettings(str(folder / "settings.ini"), QSettings.Format.IniFormat))
        window.resize(*shots.SIZE)
        window.store.update("output", runs_root=str(folder / "runs"), name="data-tab")
        window.show()
        opened, inspected, failed = [], [], []
        window.model_opened.connect(lambda: opened.append(1))
        window.data_inspected.connect(lambda: inspected.append(1))
        window.data_failed.connect(failed.append)
        window.open_model(str(model))
        shots.wait(lambda: opened)
        window.tabs.setCurrentWidget(window.data)
        window.store.update("data", max_length=256)

        def settle_data(action) -> None:
            inspected.clear()
            failed.clear()
            action()
            shots.wait(lambda: (inspected or failed) and window._jobs == 0 and not window._data_timer.isActive())

        def shoot(name: str) -> None:
            shots.settle()
            path = out / f"{name}.png"
            window.grab().save(str(path))
            print("saved", path)

        settle_data(lambda: window.data.add_files([str(DEMO / "train.jsonl")]))
        settle_data(lambda: window.data.add_validation_files([str(DEMO / "validation.jsonl")]))
        shoot("data-chat")
        window.data.show_tokens.setChecked(True)
        shoot("data-tokens")
        window.data.show_tokens.setChecked(False)

        bad = folder / "held-out-by-hand.jsonl"
        bad.write_text((DEMO / "validation.jsonl").read_text() + '{"messages": [{"role": "user", "content": 3}]}\n')
        settle_data(lambda: window.data.add_validation_files([str(bad)]))
        shoot("data-bad-row")

        window.store.update("data", validation_files=[], skip_bad_rows=False)
        settle_data(lambda: window.data.set_files([str(v1_rows(folder))]))
        shoot("data-llamafactory-v1")

        play = folder / "tinyshakespeare-excerpt.txt"
        play.write_text(PLAY)
        settle_data(lambda: window.data.set_files([str(play)]))
        shoot("data-plain-text")
        window.ask_before_discarding = False
        window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
