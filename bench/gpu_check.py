"""CUDA checks: the memory estimate against measured peaks, bf16 against fp32, throughput, bf16 merge fidelity.

Needs a CUDA GPU (``--device cpu --shapes tiny`` runs the same code on the CPU, to check the script itself).
No download: every model is a random-weight copy of a real architecture's *shapes* (built from its config
on the GPU, saved as bf16 safetensors), with the built-in SmolLM2 tokenizer (49,152 ids, valid for every
vocabulary below). Memory and speed depend on shapes, not on the weights' values.

For each shape and training case the engine (``workbench.core.training.run``) trains ``--steps`` optimizer
steps on packed rows of exactly ``max_length`` tokens, and the script records:

* **estimate** — ``core.memory.estimate_for_config``, exactly what the window's summary bar shows;
* **measured** — what the device saw: its used memory sampled through NVML every 5 ms (``nvidia-ml-py``), less
  what was used before the script started; also the caching allocator's peaks (``max_memory_allocated``:
  live tensors; ``max_memory_reserved``: what the allocator held, fragmentation included) and what lay
  outside the allocator (CUDA context, cuBLAS workspaces, kernels loaded on first use);
* **ratio** estimate / measured (1.0 = exact; above 1 = the estimate is on the safe side);
* throughput: median real tokens per second over the steps after the first two (the engine's ``Step``
  events), and the loss at the first and last step;
* what is left allocated after the run returns (a leak check: the window trains many runs in one process).

Then, for the bf16 merge: an adapter with large random B matrices (so the update is far above bf16's
rounding) is merged in bf16 by ``core.merge.merge_adapter``; the merged model's logits, and PEFT's unmerged
bf16 model's, are each compared with an fp32 unmerged reference. The merged bf16 model must be no further
from the reference than PEFT's own bf16 model is.

    python bench/gpu_check.py --tokenizer TOKDIR --shapes smollm2-135m,qwen2.5-1.5b,llama-3.2-3b --out results.jsonl
    .venv/bin/python bench/gpu_check.py --reestimate docs/gpu/h100-2026-11-22.jsonl    # today's estimate vs those peaks
Each result is printed and appended to ``--out`` as one JSON line as soon as it is measured, so a run cut
short keeps what it measured.
"""

from __future__ import annotations

import os
import sys

# bench/inspect.py would shadow the stdlib's inspect module for every script in this folder.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
GiB = 1024**3

# Shapes of real models (from their published config.json files); weights are random.
SHAPES = {
    "tiny": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=49152, tie_word_embeddings=True),
    "smollm2-135m": dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "llama-3.2-3b": dict(model_type="llama", hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                         num_attention_heads=24, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "llama-3.1-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
}

# (name, overrides of the run configuration). Every case trains LoRA r=16 unless it says otherwise.
CASES = {
    "bf16 b4 s1024": {"training": {"precision": "bf16", "batch_size": 4}, "data": {"max_length": 1024}},
    "bf16 b4 s1024 ckpt": {"training": {"precision": "bf16", "batch_size": 4, "gradient_checkpointing": True},
                           "data": {"max_length": 1024}},
    "bf16 b1 s4096 ckpt": {"training": {"precision": "bf16", "batch_size": 1, "gradient_checkpointing": True},
                           "data": {"max_length": 4096}},
    "bf16 b8 s512 attn r64": {"training": {"precision": "bf16", "batch_size": 8}, "data": {"max_length": 512},
                              "lora": {"preset": "attention", "r": 64, "alpha": 128.0}},
    "fp32 b4 s1024": {"training": {"precision": "fp32", "batch_size": 4}, "data": {"max_length": 1024}},
}
# The largest shapes skip the slowest cases: fp32 weights of 8B parameters alone take 32 GB.
SKIP = {"llama-3.1-8b": {"fp32 b4 s1024", "bf16 b8 s512 attn r64"}}

WORDS = ("the a of to and in is for on with as by at from that this it be are was were will can model data train "
         "answer question explain describe list write summarize number value result example city river country "
         "science history music language computer program function variable system network energy water").split()


def out_line(out: Path | None, record: dict) -> None:
    print(json.dumps(record), flush=True)
    if out:
        with out.open("a") as f:
            f.write(json.dumps(record) + "\n")


def build_model(shape: str, folder: Path, tokenizer_dir: Path, device: str) -> Path:
    """A random-weight model of ``shape`` saved as bf16 safetensors, with the given tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = folder / shape
    if (folder / "config.json").exists():
        return folder
    spec = dict(SHAPES[shape])
    tok_cfg = json.loads((tokenizer_dir / "config.json").read_text())
    config = AutoConfig.for_model(
        spec.pop("model_type"), **spec, max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0,
        bos_token_id=tok_cfg.get("bos_token_id"), eos_token_id=tok_cfg.get("eos_token_id"),
        pad_token_id=tok_cfg.get("pad_token_id"), dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True, max_shard_size="4GB")
    del model
    for f in tokenizer_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy2(f, folder / f.name)
    _release()
    return folder


def make_data(path: Path, rows: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(rows):
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(80, 400)))}) + "\n")
    return path


def _release() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


class NvmlSampler:
    """Samples the device's used memory every 5 ms (the figure nvidia-smi shows); None without NVML."""

    def __init__(self):
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(int(os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or 0))
        except Exception:  # no NVML: the allocator's figures stand alone
            self._nvml = None
        self.peak = 0
        self._stop = threading.Event()
        self._thread = None

    def used(self) -> int | None:
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used) if self._nvml else None

    def __enter__(self):
        if self._nvml:
            self.peak = self.used()
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def _loop(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.used())

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join()


def run_case(shape: str, case: str, model_dir: Path, data_file: Path, work: Path, args, context_bytes: int,
             idle_used: int | None) -> dict:
    import torch

    from workbench.core import events as ev
    from workbench.core.layers import count_selection, resolve_selection
    from workbench.core.memory import estimate_for_config
    from workbench.core.models import open_overview
    from workbench.core.training import run

    cfg = case_config(shape, case, model_dir, data_file, work, args)
    ov = open_overview(str(model_dir))
    sel = resolve_selection(ov.tree, cfg.lora)
    estimate = estimate_for_config(ov.tree, sel, ov.hf_config, cfg, device=args.device)
    record = {"shape": shape, "case": case, "total_params": ov.tree.total_params,
              "trainable_params": count_selection(ov.tree, sel).trainable_params,
              "estimate_bytes": estimate.total, "estimate_parts": dict(estimate.parts())}
    _release()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sink = ev.ListSink()
    started = time.perf_counter()
    try:
        with NvmlSampler() as nvml:
            run(cfg, sink)
    except Exception as exc:  # an out-of-memory case is a finding, not the end of the check
        record.update(error=f"{type(exc).__name__}: {exc}"[:500])
        _release()
        return record
    record["wall_s"] = round(time.perf_counter() - started, 1)
    steps = sink.of(ev.Step)
    tps = [s.tokens_per_second for s in steps[2:] if s.tokens_per_second]
    record.update(
        steps=len(steps), loss_first=steps[0].loss if steps else None, loss_last=steps[-1].loss if steps else None,
        tokens_per_s=round(statistics.median(tps)) if tps else None,
        engine_reported_memory=steps[-1].memory_bytes if steps else None,
        precision=sink.of(ev.RunStarted)[0].precision,
    )
    if args.device == "cuda":
        reserved, allocated = torch.cuda.max_memory_reserved(), torch.cuda.max_memory_allocated()
        # What the device saw: NVML's used memory (the CUDA context, cuBLAS workspaces and lazily loaded kernels
        # included), else the context at start-up plus the allocator's peak (which misses the later growth).
        if idle_used is not None and nvml.peak:
            measured = nvml.peak - idle_used
        else:
            measured = context_bytes + reserved
        record.update(peak_allocated=allocated, peak_reserved=reserved, measured_bytes=measured,
                      outside_allocator=measured - reserved, ratio=round(estimate.total / measured, 3))
        _release()
        record["left_allocated_after_run"] = torch.cuda.memory_allocated()
    return record


def merge_fidelity(model_dir: Path, adapter_dir: Path, work: Path, device: str) -> dict:
    """bf16 merge vs PEFT's unmerged bf16 model, each against an fp32 unmerged reference."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from workbench.core.merge import merge_adapter

    # Large random B matrices: ΔW = B·A·scale well above bf16's rounding of W, so a wrong merge shows.
    big = work / "adapter-big"
    shutil.copytree(adapter_dir, big)
    tensors = load_file(big / "adapter_model.safetensors")
    gen = torch.Generator().manual_seed(1)
    for k, t in tensors.items():
        if "lora_B" in k:
            tensors[k] = torch.randn(t.shape, generator=gen, dtype=torch.float32) * 0.02
    save_file(tensors, big / "adapter_model.safetensors", metadata={"format": "pt"})

    merged_dir = work / "merged-bf16"
    started = time.perf_counter()
    merge_adapter(model_dir, big, merged_dir, dtype="bf16")
    merge_s = time.perf_counter() - started
    ids = torch.randint(0, 49152, (2, 256), generator=gen).to(device)

    def logits(model):
        with torch.no_grad():
            return model(input_ids=ids).logits.float()

    ref_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device), big)
    ref = logits(ref_model)
    with ref_model.disable_adapter():
        base_ref = logits(ref_model)
    del ref_model
    _release()
    peft_bf16 = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(device), big)
    unmerged = logits(peft_bf16)
    del peft_bf16
    _release()
    merged_model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.bfloat16).to(device)
    merged = logits(merged_model)
    del merged_model
    _release()

    def err(x):
        return {"max_abs": round(float((x - ref).abs().max()), 4), "mean_abs": round(float((x - ref).abs().mean()), 5),
                "top1_agree": round(float((x.argmax(-1) == ref.argmax(-1)).float().mean()), 4)}

    return {"check": "bf16 merge fidelity", "merge_s": round(merge_s, 1),
            "adapter_effect_mean_abs": round(float((ref - base_ref).abs().mean()), 4),
            "merged_bf16_vs_fp32_ref": err(merged), "peft_unmerged_bf16_vs_fp32_ref": err(unmerged)}


def case_config(shape: str, case: str, model_dir: Path, data_file: Path, work: Path, args):
    from workbench.core.config import RunConfig

    over = CASES[case]
    return RunConfig.from_dict({
        "model": {"source": str(model_dir)},
        "lora": {"r": 16, "alpha": 32.0, "dropout": 0.05, "preset": "all-linear", **over.get("lora", {})},
        "data": {"train_files": [str(data_file)], "format": "text", "packing": True, "train_on": "all",
                 **over.get("data", {})},
        "training": {"max_steps": args.steps, "learning_rate": 2e-4, "logging_steps": 1, "warmup_ratio": 0.0,
                     "device": args.device, **over.get("training", {})},
        "output": {"run_dir": str(work / f"{shape}-{case.replace(' ', '_')}")},
    })


def reestimate(results: Path) -> int:
    """The current estimate for every case measured in ``results`` (no GPU needed: only configs are read)."""
    import tempfile

    from workbench.core.layers import resolve_selection
    from workbench.core.memory import estimate_for_config
    from workbench.core.models import open_overview

    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for line in results.read_text().splitlines():
            r = json.loads(line)
            if "measured_bytes" not in r:
                continue
            folder = Path(tmp) / r["shape"]
            if not folder.exists():
                from transformers import AutoConfig

                spec = dict(SHAPES[r["shape"]])
                AutoConfig.for_model(spec.pop("model_type"), **spec, dtype="bfloat16").save_pretrained(folder)
            cfg = case_config(r["shape"], r["case"], folder, folder / "none.jsonl", Path(tmp), argparse.Namespace(steps=8, device="cuda"))
            ov = open_overview(str(folder))
            estimate = estimate_for_config(ov.tree, resolve_selection(ov.tree, cfg.lora), ov.hf_config, cfg, device="cuda")
            ratio = estimate.total / r["measured_bytes"]
            ratios.append(ratio)
            print(f"{r['shape']:>13} {r['case']:<22} estimate {estimate.total / GiB:6.2f} GiB  measured "
                  f"{r['measured_bytes'] / GiB:6.2f} GiB  ratio {ratio:.3f}  (when measured: {r['ratio']:.3f})")
    if ratios:
        print(f"{len(ratios)} cases: estimate / measured from {min(ratios):.3f} to {max(ratios):.3f}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", type=Path, help="folder with tokenizer.json and config.json (SmolLM2's)")
    ap.add_argument("--reestimate", type=Path, metavar="RESULTS",
                    help="recompute today's estimate for every case in a results file and compare (no GPU needed)")
    ap.add_argument("--shapes", default="smollm2-135m,qwen2.5-1.5b,llama-3.2-3b")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/gpu_check"))
    ap.add_argument("--merge-shape", default="qwen2.5-1.5b", help="shape for the bf16 merge check ('' to skip)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--alloc-conf", default=None,
                    help="PYTORCH_CUDA_ALLOC_CONF for this run, e.g. '' for PyTorch's own default "
                         "(default: as set, else workbench's expandable_segments:True)")
    args = ap.parse_args()
    if args.reestimate:
        return reestimate(args.reestimate)
    if args.tokenizer is None:
        ap.error("--tokenizer is needed to build the models")
    if args.alloc_conf is not None:  # read when CUDA's allocator starts: set before torch is imported
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = args.alloc_conf
    import workbench  # noqa: F401  (its default allocator setting, as in the app, unless one was given above)

    import warnings

    import torch

    warnings.filterwarnings("ignore", category=FutureWarning)

    args.work.mkdir(parents=True, exist_ok=True)
    env = {"torch": torch.__version__, "device": args.device,
           "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")}
    idle_used = None
    context = 0
    if args.device == "cuda":
        nvml = NvmlSampler()
        idle_used = nvml.used()
        free0, total = torch.cuda.mem_get_info()  # initialises the context
        torch.cuda.synchronize()
        free1, _ = torch.cuda.mem_get_info()
        # What this process holds with no tensor yet: the CUDA context (and the kernels loaded with it).
        context = total - free1 - (idle_used or 0) if idle_used is not None else total - free1
        import transformers

        env.update(name=torch.cuda.get_device_name(0), total_bytes=total, context_bytes=context,
                   bf16=torch.cuda.is_bf16_supported(), transformers=transformers.__version__,
                   capability=torch.cuda.get_device_capability(0))
    out_line(args.out, {"environment": env})
    data_file = make_data(args.work / "text.jsonl", rows=4000)
    cases = [c for c in args.cases.split(",") if c]
    for shape in [s for s in args.shapes.split(",") if s]:
        started = time.perf_counter()
        model_dir = build_model(shape, args.work / "models", args.tokenizer, args.device)
        out_line(args.out, {"built": shape, "seconds": round(time.perf_counter() - started, 1)})
        for case in cases:
            if case in SKIP.get(shape, ()):
                continue
            out_line(args.out, run_case(shape, case, model_dir, data_file, args.work / "runs", args, context, idle_used))
    if args.merge_shape:
        model_dir = build_model(args.merge_shape, args.work / "models", args.tokenizer, args.device)
        runs = sorted((args.work / "runs").glob(f"{args.merge_shape}-bf16*"))
        adapter = next((r / "adapter" for r in runs if (r / "adapter" / "adapter_config.json").exists()), None)
        if adapter is None:
            out_line(args.out, {"check": "bf16 merge fidelity", "skipped": f"no trained {args.merge_shape} bf16 adapter"})
        else:
            out_line(args.out, merge_fidelity(model_dir, adapter, args.work, args.device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
