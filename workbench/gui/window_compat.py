"""The window's names from before its state moved into controllers (``model_controller``, ``run_controller``,
``run_files``, ``workers.JobRunner``, ``recents``): tests, scripts and the window's own mixins reach them on the
window, and each forwards to the controller that owns the state now. Nothing here holds state of its own."""

from __future__ import annotations

from typing import Any


def _forward(owner: str, name: str, writable: bool = False) -> Any:
    """A property of the window that is ``self.<owner>.<name>`` (an attribute, or a bound method)."""

    def get(self):
        return getattr(getattr(self, owner), name)

    def put(self, value) -> None:
        setattr(getattr(self, owner), name, value)

    return property(get, put if writable else None, doc=f"``{owner}.{name}``")


class WindowCompatMixin:
    # the open model
    overview = _forward("model_ctl", "overview")
    device_kind = _forward("model_ctl", "device_kind")
    available_memory = _forward("model_ctl", "available_memory")
    device_text = _forward("model_ctl", "device_text")
    update_summary = _forward("model_ctl", "update_summary")
    # jobs
    _jobs = _forward("job_runner", "count")
    _running_jobs = _forward("job_runner", "running")
    # the run in this process
    continued_process = _forward("run_ctl", "continued_process")
    _training_close_choice = _forward("run_ctl", "close_choice", writable=True)
    # run files
    ask_before_discarding = _forward("files", "ask_before_discarding", writable=True)
    discard_prompt = _forward("files", "discard_prompt")
    confirm_discard = _forward("files", "confirm_discard")
    request_new_run = _forward("files", "request_new_run")
    request_demo = _forward("files", "request_demo")
    new_run = _forward("files", "new_run")
    open_demo = _forward("files", "open_demo")
    open_run_dialog = _forward("files", "open_run_dialog")
    open_run = _forward("files", "open_run")
    save_run = _forward("files", "save_run")
    save_run_as = _forward("files", "save_run_as")
    _save_to = _forward("files", "save_to")
    copy_command_line = _forward("files", "copy_command_line")
    # remembered lists
    _recent = _forward("recents", "items")
    _remember = _forward("recents", "remember")
