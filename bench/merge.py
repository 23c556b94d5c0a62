"""Streaming merge against PEFT's merge_and_unload: peak resident memory and wall time, same model, same run.

    python bench/merge.py                  # ~1.4B-parameter llama in bf16, ~500 MB shards (about 2.8 GB)
    python bench/merge.py --size small     # ~0.2B, a minute or so
    python bench/merge.py --size tiny      # seconds: checks that the benchmark itself works

The base model is written shard by shard from a config (random weights, HF tensor names from a
meta-device skeleton), so building it never holds the model in memory; the adapter gets random A and B.
Each merge then runs in its own child process, and the child's peak resident set size comes from the
kernel's accounting of that child alone (``os.wait4``). The parent stays small until both merges are
done (building happens in a child too): Linux carries a process's peak RSS across ``exec``, so a child
forked from a parent holding torch and a model would report the parent's memory as its own.
Both outputs are finally compared tensor by tensor. Target: streaming peak ≤ 1/4 of PEFT's, and no slower.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Running a file puts its folder first on sys.path, where a sibling benchmark named like a standard module
# (bench/inspect.py) would shadow that module for torch and everything else imported here.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

SIZES = {  # llama-style configs; parameters counted with untied embeddings
    "tiny": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=4096),
    "small": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                  num_key_value_heads=4, vocab_size=32000),
    "1.5b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=4, vocab_size=32000),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_base(folder: Path, size: str, shard_bytes: int) -> tuple[int, int, int]:
    """Write a random bf16 llama as HF safetensors shards; return (parameters, bytes, shards)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**SIZES[size], tie_word_embeddings=False, dtype="bfloat16", architectures=["LlamaForCausalLM"])
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    specs = [(name, tuple(t.shape)) for name, t in skeleton.state_dict().items()]
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    filled = 0
    for name, shape in specs:
        nbytes = 2 * torch.Size(shape).numel()
        if groups[-1] and filled + nbytes > shard_bytes:
            groups.append([])
            filled = 0
        groups[-1].append((name, shape))
        filled += nbytes
    folder.mkdir(parents=True)
    weight_map = {}
    generator = torch.Generator().manual_seed(0)
    for i, group in enumerate(groups, 1):
        shard = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name, shape in group:
            std = 1.0 if name.endswith("norm.weight") else 0.02
            tensors[name] = (torch.randn(shape, generator=generator) * std).to(torch.bfloat16)
            weight_map[name] = shard
        save_file(tensors, folder / shard, metadata={"format": "pt"})
        del tensors
    total = sum(2 * torch.Size(s).numel() for _, s in specs)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    config.save_pretrained(folder)
    return sum(torch.Size(s).numel() for _, s in specs), total, len(groups)


def build_adapter(folder: Path, base: Path, rank: int) -> int:
    """A PEFT LoRA adapter with random non-zero A and B on every linear layer of the blocks."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base))
    generator = torch.Generator().manual_seed(1)
    tensors = {}
    for name, module in skeleton.named_modules():
        if name.rsplit(".", 1)[-1] in TARGETS:
            prefix = f"base_model.model.{name}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=generator) * 0.01
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=generator) * 0.01
    LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, task_type="CAUSAL_LM",
               base_model_name_or_path=str(base)).save_pretrained(folder)
    save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    return len(tensors) // 2


# ------------------------------------------------------------------------------------ child processes


def child_streaming(base: str, adapter: str, out: str) -> None:
    from workbench.core.merge import merge_adapter

    merge_adapter(base, adapter, out)


def child_peft(base: str, adapter: str, out: str) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    PeftModel.from_pretrained(model, adapter).merge_and_unload().save_pretrained(out, max_shard_size="500MB")


def child_build(work: str, size: str, shard_bytes: str, rank: str) -> dict:
    params, nbytes, shards = build_base(Path(work) / "base", size, int(shard_bytes))
    modules = build_adapter(Path(work) / "adapter", Path(work) / "base", int(rank))
    return {"params": params, "bytes": nbytes, "shards": shards, "modules": modules}


def run_child(*args: str) -> tuple[dict, int, float]:
    """Run ``--child *args`` in a fresh process: (its JSON result, its peak RSS in bytes, wall seconds)."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", *args],
                            stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"})
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # resource usage of this child alone
    proc.returncode = os.waitstatus_to_exitcode(status)
    process_seconds = time.perf_counter() - started
    proc.stdout.close()
    if proc.returncode != 0:
        raise SystemExit(f"child {args[0]} failed (exit {proc.returncode})")
    peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux
    return json.loads(output.strip().splitlines()[-1]), peak, process_seconds


def compare_outputs(ours: Path, theirs: Path) -> tuple[int, int, int]:
    """(tensors, identical, within one bf16 rounding step) between two model folders, one tensor at a time."""
    import torch
    from safetensors import safe_open

    def locate(folder: Path) -> dict[str, Path]:
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            return {k: folder / v for k, v in json.loads(index.read_text())["weight_map"].items()}
        with safe_open(folder / "model.safetensors", "pt") as f:
            return {k: folder / "model.safetensors" for k in f.keys()}

    def ordered(t: torch.Tensor) -> torch.Tensor:
        bits = t.view(torch.int16).to(torch.int32)
        return torch.where(bits < 0, -(bits & 0x7FFF), bits & 0x7FFF)

    ours_at, theirs_at = locate(ours), locate(theirs)
    if ours_at.keys() != theirs_at.keys():
        raise SystemExit(f"the outputs hold different tensors: {sorted(ours_at.keys() ^ theirs_at.keys())[:5]}")
    identical = close = 0
    for key in ours_at:
        with safe_open(ours_at[key], "pt") as f:
            a = f.get_tensor(key)
        with safe_open(theirs_at[key], "pt") as f:
            b = f.get_tensor(key)
        identical += bool(torch.equal(a, b))
        close += bool(a.dtype == b.dtype == torch.bfloat16 and int((ordered(a) - ordered(b)).abs().max()) <= 1)
    return len(ours_at), identical, close


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, rest = sys.argv[2], sys.argv[3:]
        if kind == "build":
            print(json.dumps(child_build(*rest)))
            return
        started = time.perf_counter()
        {"streaming": child_streaming, "peft": child_peft}[kind](*rest)
        print(json.dumps({"merge_seconds": time.perf_counter() - started}))
        return

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="1.5b")
    parser.add_argument("--shard-mb", type=int, default=500, help="shard size of the base model (default 500)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--workdir", type=Path, help="folder in which to create the scratch folder (default: the system's temp)")
    parser.add_argument("--keep", action="store_true", help="keep the models afterwards")
    args = parser.parse_args()

    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-merge-", dir=args.workdir))  # only this folder is removed afterwards
    try:
        built, _, seconds = run_child("build", str(work), args.size, str(args.shard_mb << 20), str(args.rank))
        print(f"base: llama {built['params'] / 1e6:,.0f}M parameters, bf16, {built['shards']} shards, "
              f"{built['bytes'] / 2**30:.2f} GiB; adapter: r={args.rank} on {built['modules']} modules "
              f"(built in {seconds:.0f} s)")
        results = {}
        for kind in ("streaming", "peft"):
            result, peak, process_seconds = run_child(kind, str(work / "base"), str(work / "adapter"), str(work / kind))
            results[kind] = (result["merge_seconds"], peak, process_seconds)
        (s_wall, s_peak, s_proc), (p_wall, p_peak, p_proc) = results["streaming"], results["peft"]
        print(f"{'':24}{'peak RSS':>12}{'merge wall':>12}{'process wall':>14}")
        print(f"{'streaming (workbench)':24}{s_peak / 2**30:>8.2f} GiB{s_wall:>10.1f} s{s_proc:>12.1f} s")
        print(f"{'PEFT merge_and_unload':24}{p_peak / 2**30:>8.2f} GiB{p_wall:>10.1f} s{p_proc:>12.1f} s")
        print(f"{'ratio streaming / PEFT':24}{s_peak / p_peak:>12.3f}{s_wall / p_wall:>12.3f}{s_proc / p_proc:>14.3f}")
        total, identical, close = compare_outputs(work / "streaming", work / "peft")
        print(f"outputs: {total} tensors, {identical} bit-identical, {close} within one bf16 rounding step")
        verdict = "met" if s_peak <= p_peak / 4 and s_wall <= p_wall else "NOT met"
        print(f"target (peak ≤ 1/4 of PEFT's, merge no slower): {verdict}")
    finally:
        if args.keep:
            print(f"files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
