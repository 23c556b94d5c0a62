"""The Qt-free half of a separate-process run (core/external_run.py): how its end is judged, its log read, and
a real child process followed through its run folder, without a window."""

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from workbench.core.events import Failed, Finished, JsonlSink, Step
from workbench.core.exitcodes import EXIT_STOPPED
from workbench.core.external_run import LogTail, RunWatch, describe_exit, judge_outcome
from workbench.core.runs import RunFolder


def _run_dir(tmp_path, *, started=True) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if started:  # the engine's recorder wrote its status record: the run began
        RunFolder(run_dir).status_file.write_text("{}")
    return run_dir


def test_a_reported_end_decides_unless_the_process_failed_after_it(tmp_path):
    run_dir = _run_dir(tmp_path)
    done = Finished(status="finished", adapter_path="a", step=4)
    stopped = Finished(status="stopped", adapter_path="a", step=2)
    assert judge_outcome(run_dir, 0, done, []).status == "finished"
    assert judge_outcome(run_dir, EXIT_STOPPED, stopped, []).status == "stopped"
    late = judge_outcome(run_dir, 1, done, [])
    assert late.status == "crashed" and late.reason == "The training process ended with exit code 1 after the run finished."
    failed = judge_outcome(run_dir, 1, Failed(reason="Out of memory.", hint="Lower the batch size."), [])
    assert (failed.status, failed.reason) == ("failed", "Out of memory.\nLower the batch size.")
    assert not failed.ok and judge_outcome(run_dir, 0, done, []).ok


def test_a_process_refused_before_the_run_began_fails_with_its_own_message(tmp_path):
    run_dir = _run_dir(tmp_path, started=False)
    tail = ["loading", "error: data file x.jsonl not found", "hint: check the path"]
    outcome = judge_outcome(run_dir, 2, None, tail)
    assert outcome.status == "failed"
    assert outcome.reason == "error: data file x.jsonl not found\nhint: check the path"


def test_a_killed_process_is_a_crash_named_by_its_signal(tmp_path):
    outcome = judge_outcome(_run_dir(tmp_path), -signal.SIGKILL, None, [])
    assert outcome.status == "crashed"
    assert outcome.reason == "The training process was killed (SIGKILL) without reporting a result."
    assert describe_exit(3) == "ended with exit code 3"


def test_the_log_tail_keeps_whole_lines_and_the_last_state_of_a_rewritten_one(tmp_path):
    log = tmp_path / "process.log"
    log.write_bytes(b"first\nbar 10%\rbar 50%\rbar 100%\nhalf a li")
    tail = LogTail(log, keep=3)
    tail.read()
    assert list(tail.lines) == ["first", "bar 100%"]
    with open(log, "ab") as fh:
        fh.write(b"ne\nlast")
    tail.finish()
    assert list(tail.lines) == ["bar 100%", "half a line", "last"]


CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from workbench.core.events import Finished, JsonlSink, Step
    run_dir, code = Path(sys.argv[1]), int(sys.argv[2])
    if code == 0:
        (run_dir / "status.json").write_text("{}")
        (run_dir / "run.toml").write_text("")
        sink = JsonlSink(run_dir / "metrics.jsonl")
        sink.emit(Step(step=1, total_steps=2, epoch=0.5, loss=2.0, learning_rate=1e-3))
        sink.emit(Finished(status="finished", adapter_path=str(run_dir / "adapter"), step=2))
        print("done")
    else:
        print("error: the run file names no data")
        print("hint: add data.train_files")
    sys.exit(code)
""")


def _child(run_dir: Path, scratch: Path, code: int) -> tuple[subprocess.Popen, Path]:
    scratch.mkdir()
    log = scratch / "process.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(run_dir), str(code)], stdout=fh,
                                stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2])
    proc.wait(timeout=120)
    return proc, log


def test_a_finished_child_process_is_followed_through_its_folder(tmp_path):
    run_dir, scratch = _run_dir(tmp_path, started=False), tmp_path / "scratch"
    proc, log = _child(run_dir, scratch, 0)
    watch = RunWatch(run_dir, proc, log, scratch, created_dir=True)
    events, outcome = watch.poll()
    assert [type(e) for e in events] == [Step, Finished] and events[0].loss == 2.0
    assert outcome.status == "finished" and outcome.exit_code == 0 and list(outcome.log_tail) == ["done"]
    assert outcome.log_path is None and not scratch.exists()  # a run that went well leaves no scratch folder
    assert run_dir.is_dir()  # the engine wrote into it: kept
    assert watch.ended and watch.poll() == ([], None)


def test_a_child_refused_at_start_keeps_its_log_and_gives_back_the_claimed_folder(tmp_path):
    run_dir, scratch = _run_dir(tmp_path, started=False), tmp_path / "scratch"
    proc, log = _child(run_dir, scratch, 2)
    events, outcome = RunWatch(run_dir, proc, log, scratch, created_dir=True).poll()
    assert events == []
    assert outcome.status == "failed" and outcome.exit_code == 2
    assert outcome.reason == "error: the run file names no data\nhint: add data.train_files"
    assert outcome.log_path == log and log.is_file()  # the full log stays for the user
    assert not run_dir.exists()  # claimed for the run, never used: removed


def test_an_attached_run_ends_when_it_reports_its_end(tmp_path):
    run_dir = _run_dir(tmp_path)
    watch = RunWatch(run_dir)
    assert watch.poll() == ([], None)  # running, nothing written yet
    JsonlSink(run_dir / "metrics.jsonl").emit(Finished(status="stopped", adapter_path="a", step=3))
    events, outcome = watch.poll()
    assert [e.status for e in events] == ["stopped"]
    assert outcome.status == "stopped" and outcome.exit_code is None
