"""Opening a model: the overview and the training device (``core.opening``), with the progress of a built-in
model's one-time conversion and the consent question for what is unsafe by default."""

from __future__ import annotations

from PySide6.QtCore import Signal

from workbench.core.config import RunConfig

from .jobs import JobCancelled, Worker


class OpenModelWorker(Worker):
    """Opens a model; a built-in model's one-time conversion reports ``progress(done, total, detail)``."""

    progress = Signal(float, float, str)
    what = "Opening the model"
    # The model opens only if the user allows something unsafe by default: (model.* setting, files, what the
    # files say — the code that would run, for remote code — and the refusal's message).
    consent_needed = Signal(str, list, str, str)

    def __init__(self, config: RunConfig):
        super().__init__()
        self._config = config

    def work(self):
        from workbench.core.errors import ConsentRequired
        from workbench.core.opening import consent_preview, open_model

        try:
            return open_model(self._config, sink=self)
        except ConsentRequired as exc:
            self.post("consent_needed", exc.setting, list(exc.files), consent_preview(exc.files, exc.setting),
                      exc.message)
            raise

    def emit(self, event) -> None:  # conversion sink, on the job thread
        from workbench.core.events import Message, Progress

        if self.should_stop():  # cancelled: the conversion ends at its next step and removes its partial folder
            raise JobCancelled

        if isinstance(event, Progress):
            detail = event.detail or event.task
            if event.task == "convert":  # say why this open is slow, and that it happens once
                detail = f"Converting the model to safetensors, once (later starts reuse it) — {detail}"
            self.post("progress", float(event.done), float(event.total), detail)
        elif isinstance(event, Message):
            self.post("progress", 0.0, 0.0, event.text)
