"""``workbench launch-script RUN.toml``: a ready-to-submit script for K nodes × N GPUs."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "launch-script", help="write a cluster launch script (torchrun on K nodes × N GPUs, Slurm or plain)",
        description="Write a script that runs RUN.toml data-parallel with torchrun on several nodes. The run file and "
                    "the run folder must be on storage every node sees; the window can then watch the run live and "
                    "stop or pause it through the run folder.",
    )
    p.add_argument("run_file", help="run configuration (.toml) on shared storage")
    p.add_argument("--nodes", type=int, default=1, help="number of machines (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=1, help="GPUs (processes) per machine (default 1)")
    p.add_argument("--scheduler", choices=["slurm", "plain"], default="slurm", help="sbatch script, or a plain script per node")
    p.add_argument("--run-dir", help="run folder on shared storage (default: <runs_root>/<name> from the run file; "
                                     "a relative runs_root is taken from the current folder, as by `workbench train`)")
    p.add_argument("--python", help="Python interpreter on the nodes (default: this one)")
    p.add_argument("--port", type=int, default=29500, help="rendezvous port on the first node")
    p.add_argument("--time", dest="time_limit", help="Slurm time limit, e.g. 24:00:00")
    p.add_argument("--partition", help="Slurm partition")
    p.add_argument("--out", help="write the script to this new file (default: print it); an existing file is never "
                                 "replaced")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from workbench.core.config import RunConfig
    from workbench.core.fsutil import atomic_write_text
    from workbench.core.launch import LaunchPlan, render_script
    from workbench.core.paths import check_new_output, translated_os_errors
    from workbench.core.runs import default_run_name, output_path, planned_run_dir

    run_file = Path(args.run_file).resolve()
    config = RunConfig.from_toml(run_file)
    name = default_run_name(config)
    # Relative output paths are taken from the current folder, as `workbench train` and the window take them.
    run_dir = output_path(args.run_dir) if args.run_dir else planned_run_dir(config, name=name)
    plan = LaunchPlan(run_file=run_file, run_dir=run_dir, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                      scheduler=args.scheduler, python=args.python or sys.executable, port=args.port,
                      job_name=name, time_limit=args.time_limit, partition=args.partition)
    script = render_script(plan)
    if args.out:
        out = check_new_output(args.out, what="--out file", inputs={"the run folder": plan.run_dir})
        with translated_os_errors(args.out, noun="file"):
            atomic_write_text(out, script, replace=False)
            out.chmod(0o755)
        print(f"wrote {args.out} (world size {plan.world_size}); submit with: "
              + (f"sbatch {args.out}" if args.scheduler == "slurm" else f"NODE_RANK=i MASTER_ADDR=node0 bash {args.out} on each node"))
    else:
        print(script, end="")
    return 0
