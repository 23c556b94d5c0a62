"""Merged-GGUF export of a multi-shard model: peak resident memory and wall time against the model's size, with the
streaming merge to safetensors (the same reads, the same merge arithmetic) as the time baseline of the same run.

    python bench/gguf_export.py                    # ~1.4B-parameter llama in bf16, ~500 MB shards (about 2.8 GB)
    python bench/gguf_export.py --types f16,q8_0   # several GGUF types
    python bench/gguf_export.py --size tiny        # seconds: checks that the benchmark itself works

The base and the adapter are built as ``bench/merge.py`` builds them (random weights written shard by shard, HF
tensor names from a meta-device skeleton) plus a small byte-level BPE tokenizer, which the GGUF needs. Each
export runs in its own child process, whose peak resident set size comes from the kernel's accounting of that
child alone (``os.wait4``; see bench/merge.py for why the parent stays small). Target: peak RSS of the GGUF
export under a quarter of the model's size, like the streaming merge.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def _merge_bench():
    """bench/merge.py as a module (its model builders and child runner are this benchmark's too)."""
    spec = importlib.util.spec_from_file_location("bench_merge", REPO / "bench" / "merge.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def child_build(work: str, size: str, shard_bytes: str, rank: str) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    import tiny

    merge = _merge_bench()
    params, nbytes, shards = merge.build_base(Path(work) / "base", size, int(shard_bytes))
    tiny.make_tokenizer().save_pretrained(Path(work) / "base")  # 300 tokens; the GGUF pads the rest as unused
    modules = merge.build_adapter(Path(work) / "adapter", Path(work) / "base", int(rank))
    return {"params": params, "bytes": nbytes, "shards": shards, "modules": modules}


def child_gguf(base: str, adapter: str, out: str, type_name: str) -> dict:
    from workbench.core.gguf_export import export_gguf

    result = export_gguf(base, adapter, out, type_name=type_name)
    return {"bytes": result.bytes_written}


def child_merge(base: str, adapter: str, out: str) -> dict:
    from workbench.core.merge import merge_adapter

    return {"bytes": merge_adapter(base, adapter, out).bytes_written}


def run_child(*args: str) -> tuple[dict, int, float]:
    """``--child *args`` in a fresh process: (its JSON result, its peak RSS in bytes, wall seconds)."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", *args], stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"})
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.stdout.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"child {args[0]} failed")
    peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return json.loads(output.strip().splitlines()[-1]), peak, time.perf_counter() - started


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, rest = sys.argv[2], sys.argv[3:]
        print(json.dumps({"build": child_build, "gguf": child_gguf, "merge": child_merge}[kind](*rest)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["tiny", "small", "1.5b"], default="1.5b")
    parser.add_argument("--shard-mb", type=int, default=500)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--types", default="q8_0", help="comma-separated GGUF types (default q8_0)")
    parser.add_argument("--workdir", type=Path, help="folder for the scratch folder (default: the system's temp)")
    args = parser.parse_args()
    types = [t.strip() for t in args.types.split(",") if t.strip()]

    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-gguf-", dir=args.workdir))
    try:
        built, _, seconds = run_child("build", str(work), args.size, str(args.shard_mb << 20), str(args.rank))
        size = built["bytes"]
        print(f"base: llama {built['params'] / 1e6:,.0f}M parameters, bf16, {built['shards']} shards, "
              f"{size / 2**30:.2f} GiB; adapter: r={args.rank} on {built['modules']} modules (built in {seconds:.0f} s)")
        rows = []
        merge_result, merge_peak, merge_wall = run_child("merge", str(work / "base"), str(work / "adapter"), str(work / "merged"))
        shutil.rmtree(work / "merged")
        rows.append(("streaming merge (safetensors)", merge_result["bytes"], merge_peak, merge_wall))
        for t in types:
            result, peak, wall = run_child("gguf", str(work / "base"), str(work / "adapter"), str(work / f"gguf-{t}"), t)
            shutil.rmtree(work / f"gguf-{t}")
            rows.append((f"merged GGUF {t}", result["bytes"], peak, wall))
        print(f"{'':32}{'output':>11}{'peak RSS':>11}{'RSS/model':>11}{'wall':>9}{'wall/merge':>12}")
        for name, nbytes, peak, wall in rows:
            print(f"{name:32}{nbytes / 2**30:>7.2f} GiB{peak / 2**30:>7.2f} GiB{peak / size:>11.3f}{wall:>7.1f} s"
                  f"{wall / merge_wall:>12.2f}")
        worst = max(peak for name, _, peak, _ in rows if name.startswith("merged GGUF"))
        print(f"target (GGUF export peak RSS < 1/4 of the model, {size / 4 / 2**30:.2f} GiB): "
              f"{'met' if worst < size / 4 else 'NOT met'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
