"""``workbench reduce-intruders RUN_DIR``: the intruder-dimension trade-off of a run's adapter, and a reduced copy."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reduce-intruders", help="what scaling down an adapter's intruder dimensions gives back and costs",
                       description="Measure, for each mitigation λ (1 = the adapter as trained, 0 = intruder dimensions "
                                   "removed), the loss on the run's validation answers and the retention meter's "
                                   "numbers against the base (PEFT's reduce_intruder_dimension; arXiv 2410.21228). "
                                   "With --out, also save the adapter reduced at --save-lambda to a new folder.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder with a final adapter")
    p.add_argument("--lambdas", default="1,0.75,0.5,0.25,0", metavar="L1,L2,…",
                   help="the mitigation values to measure (default 1,0.75,0.5,0.25,0)")
    p.add_argument("--top-k", type=int, default=10, help="singular directions looked at per module (default 10)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="|cosine| below which a direction is an intruder (default 0.5)")
    p.add_argument("--out", metavar="DIR", help="new folder for the reduced adapter")
    p.add_argument("--save-lambda", type=float, default=0.5, metavar="L", help="the λ to save with --out (default 0.5)")
    p.set_defaults(func=run_reduce)


def run_reduce(args: argparse.Namespace) -> int:
    from workbench.core.config import ConfigError
    from workbench.core.intruders import run_trade_off, save_reduced_adapter

    try:
        lambdas = [float(v) for v in args.lambdas.split(",") if v.strip()]
    except ValueError:
        raise ConfigError([f"--lambdas {args.lambdas!r}: not a list of numbers"], "reduce-intruders",
                          "give values from 0 to 1 separated by commas, e.g. 1,0.5,0") from None
    loaded, trade = run_trade_off(args.run_dir, lambdas=lambdas, top_k=args.top_k, threshold_epsilon=args.threshold)
    base_task = f"{trade.base_task_loss:.4g}" if trade.base_task_loss is not None else "-"
    print(f"{trade.modules} adapted modules; base model: task loss {base_task}, general-text loss "
          f"{trade.base_text_loss:.4g}")
    rows = [("LAMBDA", "INTRUDERS", "TASK LOSS", "TEXT LOSS", "PPL/BASE", "AGREEMENT")]
    for p in trade.points:
        rows.append((f"{p.mitigation_lambda:g}", f"{p.intruders} in {p.modules_with_intruders}", _number(p.task_loss),
                     _number(p.retention_text_loss), _number(p.retention_ppl_ratio), _number(p.retention_agreement)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    if args.out:
        out = save_reduced_adapter(loaded.model, args.out, mitigation_lambda=args.save_lambda, top_k=args.top_k,
                                   threshold_epsilon=args.threshold)
        print(f"saved the adapter reduced at λ = {args.save_lambda:g} to {out}")
    return 0


def _number(value) -> str:
    import math

    return f"{value:.4g}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"
