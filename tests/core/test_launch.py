"""Launch scripts for clusters, run by bash with stand-ins for srun and scontrol — not grepped — to check world
size, rendezvous, the command line, train-or-resume and the pre-emption path."""

import json
import os
import signal
import subprocess

import pytest

from launch_scripts import plain_script_command, recorder, script_run_dir, torchrun_args
from waiting import wait_until
from workbench.cli import main
from workbench.core.config import RunConfig


STUB_SRUN = """#!/usr/bin/env bash
# Records the command it was given (one JSON list per line), then behaves like a job step: it ends with
# $SRUN_EXIT or, when it receives SIGTERM, as torchrun does when its workers stopped a run: the run folder's
# status.json says "stopped" (or $STUB_STATE) and the exit code is 0.
python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" >> "$SRUN_LOG"
trap 'kill "$sleeper" 2>/dev/null; mkdir -p "$RUN_DIR"; echo "{\\"state\\": \\"${STUB_STATE:-stopped}\\"}" > "$RUN_DIR/status.json"; exit 0' TERM
if [ -n "${SRUN_SLEEP:-}" ]; then sleep "$SRUN_SLEEP" & sleeper=$!; wait "$sleeper"; fi
exit "${SRUN_EXIT:-0}"
"""
STUB_SCONTROL = """#!/usr/bin/env bash
if [ "$1" = show ]; then echo gpu-node-1; echo gpu-node-2; else echo "$@" >> "$SCONTROL_LOG"; fi
"""


def run_slurm_script(script, tmp_path, *, exit_code=0, usr1=False, run_dir=None, state="stopped"):
    """Run ``script`` as sbatch would on the first node, with recording stand-ins for srun and scontrol; returns
    (exit code, the srun command lines, scontrol's requeue calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("srun", STUB_SRUN), ("scontrol", STUB_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    logs = {"SRUN_LOG": tmp_path / "srun.log", "SCONTROL_LOG": tmp_path / "scontrol.log"}
    for log in logs.values():
        log.write_text("")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-node-[1-2]",
           "SLURM_JOB_ID": "4242", "SRUN_EXIT": str(exit_code), "RUN_DIR": str(run_dir or tmp_path / "no-run"),
           "STUB_STATE": state,
           **{k: str(v) for k, v in logs.items()}}
    if usr1:
        env["SRUN_SLEEP"] = "60"
    proc = subprocess.Popen(["bash", str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if usr1:  # Slurm's time-limit warning (--signal=B:USR1@120), once srun runs
        wait_until(lambda: logs["SRUN_LOG"].read_text(), "the stand-in srun to start")
        proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=90)
    commands = [json.loads(line) for line in logs["SRUN_LOG"].read_text().splitlines()]
    return proc.returncode, commands, logs["SCONTROL_LOG"].read_text().split("\n")[:-1], out + err


def write_run_file(tmp_path):
    cfg = RunConfig.from_dict({"model": {"source": "org/model"}, "data": {"train_files": ["/shared/data.jsonl"]},
                               "output": {"runs_root": "/shared/runs", "name": "big-run"}})
    cfg.save(tmp_path / "run.toml")
    return tmp_path / "run.toml"


@pytest.mark.subprocess
def test_slurm_script_two_nodes_four_gpus(tmp_path, capsys):
    run_file = write_run_file(tmp_path)
    out = tmp_path / "job.sh"
    assert main(["launch-script", str(run_file), "--nodes", "2", "--gpus-per-node", "4", "--out", str(out)]) == 0
    script = out.read_text()
    assert subprocess.run(["bash", "-n", str(out)]).returncode == 0, "valid shell syntax"
    sbatch = dict(line[len("#SBATCH --"):].split("=", 1) for line in script.splitlines()
                  if line.startswith("#SBATCH --") and "=" in line)
    assert sbatch["nodes"] == "2" and sbatch["gpus-per-node"] == "4" and sbatch["ntasks-per-node"] == "1"
    assert sbatch["signal"] == "B:USR1@120" and "#SBATCH --requeue" in script
    code, commands, requeued, _ = run_slurm_script(out, tmp_path)
    assert code == 0 and requeued == []
    (words,) = commands
    assert words[:2] == ["--kill-on-bad-exit=1", os.sys.executable]
    args = torchrun_args(words)
    world = int(args.nnodes) * int(args.nproc_per_node)
    assert world == 8
    assert args.rdzv_backend == "c10d" and args.rdzv_endpoint == "gpu-node-1:29500"
    assert args.module and args.training_script == "workbench"
    assert args.training_script_args == ["train", str(run_file), "--run-dir", "/shared/runs/big-run", "--quiet"]


@pytest.mark.subprocess
def test_slurm_script_resumes_a_requeued_run_and_requeues_itself_on_the_time_limit_warning(tmp_path):
    cfg = RunConfig.from_dict({"model": {"source": "org/model"}, "data": {"train_files": ["/shared/data.jsonl"]},
                               "output": {"runs_root": str(tmp_path / "runs"), "name": "big-run"}})
    cfg.save(tmp_path / "run.toml")
    out = tmp_path / "job.sh"
    assert main(["launch-script", str(tmp_path / "run.toml"), "--nodes", "2", "--gpus-per-node", "4", "--out", str(out)]) == 0
    run_dir = tmp_path / "runs" / "big-run"

    # USR1 while the run is not recording yet (no run folder): `workbench control` refuses, so srun's tasks get
    # SIGTERM instead; torchrun ends with 0, the run folder says the run stopped, so the job is requeued and ends
    # with the stopped run's exit code.
    code, commands, requeued, output = run_slurm_script(out, tmp_path, usr1=True, run_dir=run_dir)
    assert torchrun_args(commands[0]).training_script_args[0] == "train"
    assert code == 3 and requeued == ["requeue 4242"], output
    assert "requeueing job 4242" in output

    # The requeued job finds the run folder and resumes the run instead of starting it again.
    cfg.save(run_dir / "run.toml")
    code, commands, requeued, _ = run_slurm_script(out, tmp_path, run_dir=run_dir)
    assert code == 0 and requeued == []
    assert torchrun_args(commands[0]).training_script_args == ["resume", str(run_dir), "--quiet"]

    # USR1 near the time limit of a run that then finishes (srun ends with 0, the run folder says finished):
    # nothing to requeue.
    code, _, requeued, output = run_slurm_script(out, tmp_path, usr1=True, run_dir=run_dir, state="finished")
    assert code == 0 and requeued == [], output

    # A run that fails is not requeued, and the job reports the failure.
    code, _, requeued, _ = run_slurm_script(out, tmp_path, exit_code=2)
    assert code == 2 and requeued == []


@pytest.mark.subprocess
def test_plain_script_static_rendezvous(tmp_path, capsys):
    run_file = write_run_file(tmp_path)
    assert main(["launch-script", str(run_file), "--nodes", "3", "--gpus-per-node", "2", "--scheduler", "plain",
                 "--run-dir", "/shared/x", "--port", "29700", "--python", str(recorder(tmp_path))]) == 0
    words = plain_script_command(capsys.readouterr().out, NODE_RANK="2")
    args = torchrun_args(words)
    assert int(args.nnodes) * int(args.nproc_per_node) == 6
    assert args.node_rank == 2 and args.master_addr == "node0" and args.master_port == 29700
    assert args.training_script_args[:4] == ["train", str(run_file), "--run-dir", "/shared/x"]


def test_bad_launch_values(tmp_path, capsys):
    run_file = write_run_file(tmp_path)
    assert main(["launch-script", str(run_file), "--nodes", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err
    assert main(["launch-script", str(tmp_path / "missing.toml")]) == 2


@pytest.mark.parametrize("output, expected", [
    ({"runs_root": "runs", "name": "exp"}, "elsewhere/runs/exp"),
    ({"runs_root": "~/wb-runs", "name": "exp"}, "home/wb-runs/exp"),
    ({"run_dir": "exact-run"}, "elsewhere/exact-run"),
])
def test_one_run_file_gives_one_run_folder_to_the_engine_and_launch_script(tmp_path, monkeypatch, capsys, output,
                                                                           expected):
    """The run file lies in one folder and the commands run in another: a relative output path is taken from the
    current folder (and ``~`` expanded) by both, so the script trains into the folder `workbench train` makes."""
    from workbench.core.runs import create_run

    files, elsewhere, home = tmp_path / "files", tmp_path / "elsewhere", tmp_path / "home"
    for folder in (files, elsewhere, home):
        folder.mkdir()
    monkeypatch.setenv("HOME", str(home))
    RunConfig.from_dict({"model": {"source": "org/model"}, "data": {"train_files": ["/shared/data.jsonl"]},
                         "output": output}).save(files / "run.toml")
    monkeypatch.chdir(elsewhere)
    assert main(["launch-script", str(files / "run.toml"), "--scheduler", "plain", "--python",
                 str(recorder(tmp_path))]) == 0
    from_script = script_run_dir(capsys.readouterr().out)
    engine = create_run(RunConfig.from_toml(files / "run.toml")).path
    assert from_script == engine == tmp_path / expected
    assert (tmp_path / expected / "run.toml").is_file()


def test_launch_script_never_replaces_a_file_or_writes_a_folder(tmp_path, capsys):
    run_file = write_run_file(tmp_path)
    before = run_file.read_bytes()
    assert main(["launch-script", str(run_file), "--nodes", "2", "--out", str(run_file)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "nothing was written" in err and "Traceback" not in err
    assert run_file.read_bytes() == before, "the run file is untouched"
    assert main(["launch-script", str(run_file), "--out", str(tmp_path)]) == 2
    assert "already exists (a folder)" in capsys.readouterr().err
