"""Cluster launch scripts: the run designed on a workstation, started on K nodes × N GPUs by torchrun.

The script does no distribution of its own: each node runs ``torchrun`` (PyTorch's launcher), which
starts one process per GPU and joins the others through a c10d rendezvous on the first node; the
engine then runs data-parallel under the HF Trainer. The run folder must be on storage every node sees
(only global rank 0 writes it), so the window can watch the run live through its ``metrics.jsonl`` and
stop or pause it through its control file.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .config import RunConfig
from .errors import WorkbenchError
from .exitcodes import EXIT_STOPPED

Scheduler = Literal["slurm", "plain"]
DEFAULT_PORT = 29500


def portable_config(config: RunConfig, base: Path | None = None) -> RunConfig:
    """``config`` with relative local paths (model folder, data files, runs root) made absolute from ``base``
    (the current folder, against which the window and its processes read them; for the runs root that is
    ``core.runs.output_path``'s rule), so that the run file reads the same from any folder on any node.
    A relative path that does not exist from ``base`` is left as written (it may name something elsewhere)."""
    from .runs import output_path

    base = base or Path.cwd()

    def absolute(p: str) -> str:
        path = Path(p).expanduser()
        return str(base / path) if not path.is_absolute() and (base / path).exists() else str(path)

    source = config.model.source
    if source and ":" not in source.split("/")[0]:  # not builtin:…, not a URL
        source = absolute(source)
    data = config.data
    return config.copy_with(
        model={"source": source},
        data={"train_files": [absolute(f) for f in data.train_files],
              "validation_files": [absolute(f) for f in data.validation_files]},
        output={"runs_root": str(output_path(config.output.runs_root, base))},
    )


@dataclass(frozen=True)
class LaunchPlan:
    run_file: Path  # absolute path of the run configuration, on shared storage
    run_dir: Path  # absolute path of the run folder, on shared storage
    nodes: int
    gpus_per_node: int
    scheduler: Scheduler = "slurm"
    python: str = sys.executable
    port: int = DEFAULT_PORT
    job_name: str = "workbench"
    time_limit: str | None = None  # Slurm --time, e.g. "24:00:00"
    partition: str | None = None

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    def validate(self) -> None:
        if self.nodes < 1 or self.gpus_per_node < 1:
            raise WorkbenchError(f"nodes and GPUs per node must be at least 1 (got {self.nodes} × {self.gpus_per_node})")
        if not 1 <= self.port <= 65535:
            raise WorkbenchError(f"port {self.port} is not a TCP port")


def torchrun_command(plan: LaunchPlan, rendezvous_host: str, node_rank: str | None = None,
                     workbench_args: list[str] | None = None) -> list[str]:
    """The per-node launcher command line (a list, so quoting is exact). ``workbench_args``: what follows
    ``-m workbench`` (default: train the run file into the run folder)."""
    cmd = [plan.python, "-m", "torch.distributed.run", f"--nnodes={plan.nodes}", f"--nproc_per_node={plan.gpus_per_node}"]
    if node_rank is None:  # elastic c10d rendezvous: node ranks are assigned on arrival
        cmd += ["--rdzv_backend=c10d", f"--rdzv_endpoint={rendezvous_host}:{plan.port}", f"--rdzv_id={plan.job_name}"]
    else:  # static: every node is told its rank and the master's address
        cmd += [f"--node_rank={node_rank}", f"--master_addr={rendezvous_host}", f"--master_port={plan.port}"]
    if workbench_args is None:
        workbench_args = [*train_args(plan), "--quiet"]
    return cmd + ["-m", "workbench", *workbench_args]


def train_args(plan: LaunchPlan) -> list[str]:
    return ["train", str(plan.run_file), "--run-dir", str(plan.run_dir)]


def resume_args(plan: LaunchPlan) -> list[str]:
    return ["resume", str(plan.run_dir)]


def _train_or_resume(plan: LaunchPlan) -> list[str]:
    """Shell lines that set WORKBENCH_ARGS: a first start trains, a restarted or requeued job (the run folder
    exists) resumes from the newest checkpoint instead of starting the run again."""
    q = shlex.quote
    return [
        "# A first start trains; a restarted or requeued job finds the run folder and resumes it.",
        f"if [ -f {q(str(plan.run_dir / 'run.toml'))} ]; then",
        f"  WORKBENCH_ARGS=({' '.join(map(q, resume_args(plan)))} --quiet)",
        "else",
        f"  WORKBENCH_ARGS=({' '.join(map(q, train_args(plan)))} --quiet)",
        "fi",
    ]


def _join(cmd: list[str]) -> str:
    # Shell variables ($MASTER_ADDR, $NODE_RANK, ${SLURM_JOB_ID}) must expand: quote everything else.
    return " ".join(part if "$" in part and "'" not in part else shlex.quote(part) for part in cmd)


def render_script(plan: LaunchPlan) -> str:
    plan.validate()
    header = [
        "#!/usr/bin/env bash",
        f"# LoRA Workbench launch script: {plan.nodes} node(s) × {plan.gpus_per_node} GPU(s) = world size {plan.world_size}.",
        f"# Run file: {plan.run_file}",
        f"# Run folder (shared storage; watch it from the window: Runs → Open folder): {plan.run_dir}",
    ]
    run_args = ['"${WORKBENCH_ARGS[@]}"']  # set by _train_or_resume's lines
    q = shlex.quote
    if plan.scheduler == "slurm":
        sbatch = [
            f"#SBATCH --job-name={plan.job_name}",
            f"#SBATCH --nodes={plan.nodes}",
            "#SBATCH --ntasks-per-node=1",  # one torchrun per node; it starts one process per GPU
            f"#SBATCH --gpus-per-node={plan.gpus_per_node}",
            f"#SBATCH --output={plan.run_dir.parent / (plan.job_name + '-%j.log')}",
            "#SBATCH --open-mode=append",  # a requeued job adds to its log instead of replacing it
            # Pre-emption warning: 120 s before the time limit the batch shell gets USR1 (trapped below) and asks
            # the run to stop after its current step, saving a checkpoint and the adapter; the job is then
            # requeued and resumes from that checkpoint.
            "#SBATCH --signal=B:USR1@120",
            "#SBATCH --requeue",
        ]
        if plan.time_limit:
            sbatch.append(f"#SBATCH --time={plan.time_limit}")
        if plan.partition:
            sbatch.append(f"#SBATCH --partition={plan.partition}")
        body = [
            "set -euo pipefail",
            'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
            f"export MASTER_PORT={plan.port}",
            "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}",
            f"mkdir -p {q(str(plan.run_dir.parent))}",
            *_train_or_resume(plan),
            "# USR1 (the time-limit warning above, or `scancel --signal=USR1 --batch JOB`): stop after this step through",
            "# the run folder, which every node sees; if the run is not recording yet, stop srun's tasks instead.",
            "requeue=0",
            f"trap 'requeue=1; {q(plan.python)} -m workbench control {q(str(plan.run_dir))} stop || kill -TERM \"$child\"' USR1",
            "srun --kill-on-bad-exit=1 " + _join(torchrun_command(plan, "$MASTER_ADDR", workbench_args=run_args)) + " &",
            "child=$!",
            "# A trapped signal interrupts `wait`: wait again until srun has ended, then take its exit status.",
            'while kill -0 "$child" 2>/dev/null; do wait "$child" || true; done',
            'wait "$child" && status=0 || status=$?',
            "# torchrun ends with 0 when its workers stopped cleanly: the run folder tells a stopped run from a",
            "# finished one.",
            f'if [ "$requeue" = 1 ] && {{ [ "$status" = 0 ] || [ "$status" = {EXIT_STOPPED} ]; }} && '
            f'[ "$({q(plan.python)} -m workbench runs --status {q(str(plan.run_dir))} 2>/dev/null)" = stopped ]; then',
            '  echo "stopped before the time limit; requeueing job $SLURM_JOB_ID to resume the run"',
            '  scontrol requeue "$SLURM_JOB_ID"',
            f"  status={EXIT_STOPPED}",
            "fi",
            'exit "$status"',
        ]
        return "\n".join(header + sbatch + [""] + body) + "\n"
    body = [
        "# Start this script on every node with NODE_RANK=0..N-1 and MASTER_ADDR set to node 0's address, e.g.",
        f"#   MASTER_ADDR=node0.example NODE_RANK=1 bash {plan.job_name}.sh",
        "set -euo pipefail",
        ': "${MASTER_ADDR:?set MASTER_ADDR to the address of node 0}"',
        # (no apostrophe in these messages: inside ${...:?...} bash would take it for an opening quote)
        ': "${NODE_RANK:?set NODE_RANK to the index of this node (0 on the first node)}"',
        "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}",
        *_train_or_resume(plan),
        "# exec: SIGTERM to this script reaches torchrun, which forwards it to the training processes; the run",
        "# stops after its current step and saves a checkpoint and the adapter (`workbench runs --status` then says",
        "# stopped; run this script again to resume).",
        "exec " + _join(torchrun_command(plan, "$MASTER_ADDR", node_rank="$NODE_RANK", workbench_args=run_args)),
    ]
    return "\n".join(header + [""] + body) + "\n"
