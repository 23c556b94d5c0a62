"""``workbench inspect MODEL``: the module tree, a LoRA selection on it, and its cost."""

from __future__ import annotations

import argparse
import json
import sys

from workbench.core.presets import DEFAULT_PRESET, PRESETS


def register(sub: argparse._SubParsersAction) -> None:
    presets = "; ".join(f"{k}: {v}" for k, v in PRESETS.items())
    p = sub.add_parser(
        "inspect",
        help="show a model's module tree, a LoRA selection and its cost (no weights are read)",
        description=(
            "Print the module tree of MODEL (a local Hugging Face folder, a Hub id or a .gguf file) with shapes and "
            "parameter counts, the modules a LoRA selection adapts, the trainable parameters PEFT will report, the "
            f"adapter size and a memory estimate. Without selection flags the default selection applies: the "
            f"'{DEFAULT_PRESET}' preset (the window starts with the same one)."
        ),
        epilog=f"Presets — {presets}.",
    )
    p.add_argument("model", help="local folder, Hub id (org/name) or .gguf file")
    p.add_argument("--preset", choices=[*PRESETS, "none"], help=f"layer preset (default: {DEFAULT_PRESET}, unless --target is given)")
    p.add_argument("--target", action="append", default=[], metavar="PATTERN",
                   help="module name or pattern to adapt; repeatable. Plain names match a whole name or a dot-bounded "
                        "suffix (q_proj), globs use * and ?, regexes start with re:")
    p.add_argument("--blocks", metavar="A-B", help="only these transformer blocks, e.g. 8-15 or 0,2,4-6")
    p.add_argument("--rank", "-r", type=int, default=16, help="LoRA rank (default 16)")
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: twice the rank)")
    p.add_argument("--rank-for", action="append", default=[], metavar="NAME=R", help="per-module rank override; repeatable")
    p.add_argument("--alpha-for", action="append", default=[], metavar="NAME=A", help="per-module alpha override; repeatable")
    p.add_argument("--dora", action="store_true", help="count DoRA magnitude vectors")
    p.add_argument("--rslora", action="store_true", help="rank-stabilised scaling (alpha/sqrt(r))")
    p.add_argument("--task", choices=["causal-lm", "sequence-classification"], default="causal-lm")
    p.add_argument("--batch-size", type=int, default=4, help="micro-batch for the memory estimate (default 4)")
    p.add_argument("--max-length", type=int, default=1024, help="sequence length for the memory estimate (default 1024)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="memory estimate with gradient checkpointing")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto", help="device for the memory estimate")
    p.add_argument("--revision", help="Hub revision")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own Python code to run")
    p.add_argument("--allow-pickle", action="store_true", help="allow pickle weights (only for files you trust)")
    p.add_argument("--full", action="store_true", help="print every block instead of folding identical ones")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-cache", action="store_true",
                   help="build the tree afresh instead of reusing the one remembered for this config.json")
    p.set_defaults(func=run)


def _pairs(items: list[str], cast, flag: str) -> dict:
    from workbench.core.errors import WorkbenchError

    out = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name] = cast(value)
        except ValueError:
            raise WorkbenchError(f"{flag} {item!r}: expected NAME=NUMBER",
                                 f"write e.g. {flag} model.layers.0.self_attn.q_proj=32, with a module name "
                                 "from the tree this command prints") from None
    return out


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from workbench.core.config import ConfigError, LoraSettings, RunConfig
    from workbench.core.layers import count_selection, resolve_selection
    from workbench.core.memory import estimate_for_config
    from workbench.core.tree_cache import open_overview_cached

    try:
        lora = LoraSettings(
            r=args.rank,
            alpha=args.alpha if args.alpha is not None else 2.0 * max(args.rank, 1),
            preset=args.preset or ("none" if args.target else DEFAULT_PRESET),
            include=args.target,
            blocks=args.blocks,
            rank_pattern=_pairs(args.rank_for, int, "--rank-for"),
            alpha_pattern=_pairs(args.alpha_for, float, "--alpha-for"),
            use_dora=args.dora,
            use_rslora=args.rslora,
        )
    except ValidationError as exc:
        from workbench.core.config import describe_validation_error

        raise ConfigError(describe_validation_error(exc, prefix="lora."), "command line") from None
    # The tree of a config.json seen before comes from the cache: no modeling code is imported (see tree_cache).
    ov, _ = open_overview_cached(args.model, revision=args.revision, task=args.task, trust_remote_code=args.trust_remote_code,
                                 allow_pickle=args.allow_pickle, use_cache=not args.no_cache)
    tree = ov.tree
    sel = resolve_selection(tree, lora, args.task)
    counts = count_selection(tree, sel)
    run_config = RunConfig.from_dict({
        "model": {"task": args.task}, "lora": lora.model_dump(mode="json"), "data": {"max_length": args.max_length},
        "training": {"batch_size": args.batch_size, "gradient_checkpointing": args.gradient_checkpointing},
    }, "command line")
    mem = estimate_for_config(tree, sel, ov.hf_config, run_config, device=_device(args.device))
    selected = set(sel.targets)
    if args.json:
        out = {
            "model": args.model,
            "source": {"kind": ov.source.kind, "path": str(ov.source.path), "weights": ov.source.weights},
            "architecture": ov.architecture,
            "model_type": tree.model_type,
            "dtype": ov.dtype,
            "blocks": {"prefix": tree.blocks_prefix, "count": tree.num_blocks},
            "total_params": tree.total_params,
            "trainable_params": counts.trainable_params,
            "trainable_share": counts.trainable_share,
            "adapter_bytes": counts.adapter_bytes,
            "target_modules": sel.targets,
            "rank_pattern": sel.rank_overrides,
            "alpha_pattern": sel.alpha_overrides,
            "r": sel.r,
            "alpha": sel.alpha,
            "warnings": sel.warnings,
            "memory_estimate": {**{k.replace(" ", "_"): v for k, v in mem.parts()}, "total": mem.total,
                                "batch_size": args.batch_size, "max_length": args.max_length},
            "modules": [
                {
                    "name": n.name, "type": n.type, "shape": list(n.shape) if n.shape else None, "params": n.params,
                    "adaptable": n.adaptable, "kind": n.kind, "block": n.block, "selected": n.name in selected,
                    "lora_params": n.lora_params(sel.rank_of(n.name)) if n.name in selected else 0,
                }
                for n in tree.root.walk() if n.name
            ],
        }
        json.dump(out, sys.stdout, indent=1)
        print()
        return 0

    print(f"{ov.architecture}  ({tree.model_type}, {_num(tree.total_params)} parameters, {ov.dtype}, "
          f"{tree.num_blocks} blocks)  — {ov.source.kind}: {ov.source.path}")
    print()
    for line in _tree_lines(tree, sel, folded=not args.full):
        print(line)
    print()
    origin = ", ".join(sel.targets) if len(sel.targets) <= 4 else f"{len(sel.targets)} modules"
    print(f"Selection: {origin}   r={sel.r} alpha={sel.alpha:g}{' rsLoRA' if sel.use_rslora else ''}{' DoRA' if sel.use_dora else ''}"
          + (f", {len(sel.rank_overrides)} rank / {len(sel.alpha_overrides)} alpha overrides" if sel.rank_overrides or sel.alpha_overrides else ""))
    print(f"Trainable parameters: {counts.trainable_params:,} ({100 * counts.trainable_share:.3f}% of {_num(tree.total_params)})")
    print(f"Adapter size on disk: {_bytes(counts.adapter_bytes)}")
    print(f"Memory estimate (batch {args.batch_size} × {args.max_length} tokens{', gradient checkpointing' if args.gradient_checkpointing else ''}): "
          f"{_bytes(mem.total)} = " + " + ".join(f"{label} {_bytes(v)}" for label, v in mem.parts()))
    for w in sel.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0


def _device(choice: str) -> str:
    """The device to estimate for: the one named (a GPU may be planned for on a machine without one), or the
    one training would choose here."""
    if choice != "auto":
        return choice
    from workbench.core.precision import choose_device

    return choose_device("auto")


def _tree_lines(tree, sel, folded: bool) -> list[str]:
    """Indented tree. Folded: block 0 stands for all blocks; each module says in which blocks it is selected."""
    selected = set(sel.targets)
    lines: list[str] = []
    prefix = tree.blocks_prefix

    def blocks_marker(node) -> str:
        if not node.adaptable:
            return ""
        if folded and node.block is not None and prefix:
            suffix = node.name[len(f"{prefix}.{node.block}."):]
            hits = [b for b in range(tree.num_blocks) if f"{prefix}.{b}.{suffix}" in selected]
            if not hits:
                return "  ·"
            ranks = {sel.rank_of(f"{prefix}.{b}.{suffix}") for b in hits}
            r = f" r={'/'.join(str(x) for x in sorted(ranks))}"
            return f"  ✓ {_ranges(hits)}{r}" if len(hits) < tree.num_blocks else f"  ✓ all blocks{r}"
        return f"  ✓ r={sel.rank_of(node.name)}" if node.name in selected else "  ·"

    def visit(node, depth: int) -> None:
        shape = "×".join(str(s) for s in node.shape) if node.shape else ""
        label = node.short
        if folded and prefix and node.name == prefix:
            lines.append(f"{'  ' * depth + label:<44} {node.type:<24} {'':<14} {_num(node.params):>9}   "
                         f"{tree.num_blocks} blocks, shown once")
            first = node.children[0] if node.children else None
            if first is not None:
                block_label = "  " * (depth + 1) + f"[0–{tree.num_blocks - 1}]"
                lines.append(f"{block_label:<44} {first.type:<24} {'':<14} {_num(first.params):>9}   each")
                for c in first.children:
                    visit(c, depth + 2)
            return
        tied = f"  (shares weight with {node.tied_to})" if node.tied_to else ""
        lines.append(f"{'  ' * depth + label:<44} {node.type:<24} {shape:<14} {_num(node.params):>9}{blocks_marker(node)}{tied}")
        for c in node.children:
            visit(c, depth + 1)

    for c in tree.root.children:
        visit(c, 0)
    return lines


def _ranges(nums: list[int]) -> str:
    out, start = [], None
    for i, n in enumerate(nums):
        if start is None:
            start = n
        if i + 1 == len(nums) or nums[i + 1] != n + 1:
            out.append(f"{start}" if start == n else f"{start}–{n}")
            start = None
    return "blocks " + ",".join(out)


def _num(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _bytes(n: int) -> str:
    for unit, div in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"
