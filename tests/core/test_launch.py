"""Launch scripts for clusters, parsed — not grepped — to check world size, rendezvous and command line."""

import argparse
import shlex
import subprocess
from pathlib import Path

import pytest

from workbench.cli import main
from workbench.core.config import RunConfig


def torchrun_args(line: str, **env: str) -> tuple[argparse.Namespace, list[str]]:
    """Expand the shell variables as the node's shell would, then parse the command as torch.distributed.run does."""
    from torch.distributed.run import get_args_parser

    for name, value in env.items():
        line = line.replace(f"${name}", value)
    words = shlex.split(line)
    start = words.index("torch.distributed.run") + 1
    return get_args_parser().parse_args(words[start:]), words


def write_run_file(tmp_path):
    cfg = RunConfig.from_dict({"model": {"source": "org/model"}, "data": {"train_files": ["/shared/data.jsonl"]},
                               "output": {"runs_root": "/shared/runs", "name": "big-run"}})
    cfg.save(tmp_path / "run.toml")
    return tmp_path / "run.toml"


def test_slurm_script_two_nodes_four_gpus(tmp_path, capsys):
    run_file = write_run_file(tmp_path)
    out = tmp_path / "job.sh"
    assert main(["launch-script", str(run_file), "--nodes", "2", "--gpus-per-node", "4", "--out", str(out)]) == 0
    script = out.read_text()
    assert subprocess.run(["bash", "-n", str(out)]).returncode == 0, "valid shell syntax"
    sbatch = dict(line[len("#SBATCH --"):].split("=", 1) for line in script.splitlines() if line.startswith("#SBATCH --"))
    assert sbatch["nodes"] == "2" and sbatch["gpus-per-node"] == "4" and sbatch["ntasks-per-node"] == "1"
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    args, words = torchrun_args(srun, MASTER_ADDR="gpu-node-1")
    world = int(args.nnodes) * int(args.nproc_per_node)
    assert world == 8
    assert args.rdzv_backend == "c10d" and args.rdzv_endpoint == "gpu-node-1:29500"
    assert args.module and args.training_script == "workbench"
    assert args.training_script_args == ["train", str(run_file), "--run-dir", "/shared/runs/big-run", "--quiet"]
    assert "MASTER_ADDR" in script and "scontrol show hostnames" in script


def test_plain_script_static_rendezvous(tmp_path, capsys):
    run_file = write_run_file(tmp_path)
    assert main(["launch-script", str(run_file), "--nodes", "3", "--gpus-per-node", "2", "--scheduler", "plain",
                 "--run-dir", "/shared/x", "--port", "29700"]) == 0
    script = capsys.readouterr().out
    line = next(line for line in script.splitlines() if "torch.distributed.run" in line and not line.startswith("#"))
    args, _ = torchrun_args(line, NODE_RANK="2", MASTER_ADDR="node0")
    assert int(args.nnodes) * int(args.nproc_per_node) == 6
    assert args.node_rank == 2 and args.master_addr == "node0" and args.master_port == 29700
    assert args.training_script_args[:4] == ["train", str(run_file), "--run-dir", "/shared/x"]


def test_bad_launch_values(tmp_path, capsys):
    run_file = write_run_file(tmp_path)
    assert main(["launch-script", str(run_file), "--nodes", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err
    assert main(["launch-script", str(tmp_path / "missing.toml")]) == 2


def script_run_dir(script: str) -> Path:
    """The --run-dir of the torchrun line of a plain launch script."""
    line = next(line for line in script.splitlines() if "torch.distributed.run" in line and not line.startswith("#"))
    args, _ = torchrun_args(line, NODE_RANK="0", MASTER_ADDR="node0")
    return Path(args.training_script_args[args.training_script_args.index("--run-dir") + 1])


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
    assert main(["launch-script", str(files / "run.toml"), "--scheduler", "plain"]) == 0
    from_script = script_run_dir(capsys.readouterr().out)
    engine = create_run(RunConfig.from_toml(files / "run.toml")).path
    assert from_script == engine == tmp_path / expected
    assert (tmp_path / expected / "run.toml").is_file()
