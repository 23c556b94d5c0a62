"""A bug's report (core.crashlog.report_unexpected): one line naming what failed, where the traceback went, and
never an error of its own when no log can be written."""

from workbench.core import crashlog


def test_the_report_names_what_failed_and_the_log_holding_the_traceback(monkeypatch, tmp_path):
    monkeypatch.setenv("LORA_WORKBENCH_CACHE", str(tmp_path / "cache"))
    try:
        {}["missing"]
    except KeyError as exc:
        line, where, log = crashlog.report_unexpected("Opening the model", exc)
    assert line == "Opening the model failed unexpectedly: KeyError: 'missing'"
    assert log is not None and log.parent == tmp_path / "cache" / "logs"
    assert where == f"the details are in {log} (please include it in a bug report)"
    assert "Traceback (most recent call last)" in log.read_text()


def test_when_no_log_can_be_written_the_report_says_so(monkeypatch):
    def full_disk(what, exc):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(crashlog, "write_crash_log", full_disk)
    line, where, log = crashlog.report_unexpected("Training", ValueError("bad\nsecond line"))
    assert (line, log) == ("Training failed unexpectedly: ValueError: bad", None)
    assert where == "no log could be written (the disk may be full or read-only)"
