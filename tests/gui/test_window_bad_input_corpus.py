"""The bad-input corpus (tests/bad_inputs) driven through the window: every case the window can meet — a model
folder, a data file, a run file, an adapter folder — is opened the way a user would open it. Each must end in
a message the user can act on (never a bug's 'SomeError: …' text), nothing the user had may change, and
the window must stay usable: after all the cases of a kind, a good model still opens in the same window.

Where the window meets a case earlier or later than the command line does (a model without weights opens
fine as a tree; training it is what fails), the case may end without a message here; the corpus' CLI test
holds those to their exact message. The test asserts that most cases do produce one.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from bad_inputs.corpus import GUI_CASE_INFO, GUI_CASES

BUG_TEXT = re.compile(r"^(\w+\.)*\w*(Error|Exception)\b: ", re.M)  # how Worker.run words an exception that is a bug


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "runs" not in p.relative_to(folder).parts}


def _open_case(window, built, kind: str) -> None:
    run_files = [a for a in built.argv if a.endswith(".toml")]
    if run_files and kind in ("runfile", "data", "model"):
        window.open_run(Path(run_files[0]))
    elif kind == "model":
        window.open_model(str(built.target))
    elif kind == "data":
        window.data.set_files([str(built.target)])
    elif kind == "adapter":
        window.inspect_adapter(str(built.target), "")
    elif kind == "runfile":
        window.open_run(built.target)


def _settle(window, qtbot) -> None:
    qtbot.wait(50)
    qtbot.waitUntil(lambda: window._jobs == 0 and not window._data_running and not window._data_timer.isActive(),
                    timeout=60_000)
    qtbot.wait(50)


@pytest.mark.parametrize("kind", ["model", "data", "runfile", "adapter"])
def test_every_bad_input_of_a_kind_gets_a_message_and_the_window_stays_usable(kind, window, qtbot, tmp_path,
                                                                                tiny_model_dir):
    cases = [(case_id, build) for case_id, build, k in GUI_CASES if k == kind
             and GUI_CASE_INFO[case_id].patch is None and GUI_CASE_INFO[case_id].skip_if is None]
    messages: list[str] = []
    for signal in (window.model_failed, window.data_failed, window.inspect_failed):
        signal.connect(messages.append)
    outcome: dict[str, str] = {}
    for case_id, build in cases:
        folder = tmp_path / case_id
        folder.mkdir()
        built = build(folder, tiny_model_dir)
        before = _snapshot(folder)
        messages.clear()
        _open_case(window, built, kind)
        _settle(window, qtbot)
        shown = []
        if window.error_box is not None:
            shown.append(window.error_box.text())
            window.error_box.close()
        if window.consent_box is not None:
            shown.append(window.consent_box.text() + window.consent_box.informativeText())
            window.consent_box.reject()
            _settle(window, qtbot)
        shown += messages
        for text in shown:
            assert not BUG_TEXT.search(text), f"{case_id}: a bug's message reached the user:\n{text}"
        assert _snapshot(folder) == before, f"{case_id}: the user's files changed"
        outcome[case_id] = "message" if shown else "no message"
    with_message = sum(v == "message" for v in outcome.values())
    print(f"\n{kind}: {with_message} of {len(outcome)} cases answered with a message in the window; without: "
          + ", ".join(k for k, v in outcome.items() if v != "message"))
    assert with_message >= 0.6 * len(outcome), outcome

    # Still usable: a good model opens in the same window.
    with qtbot.waitSignal(window.model_opened, timeout=60_000):
        window.open_model(str(tiny_model_dir("llama")))
