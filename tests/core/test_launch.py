"""Launch scripts for clusters, parsed — not grepped — to check world size, rendezvous and command line."""

import argparse
import shlex
import subprocess

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
