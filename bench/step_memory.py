"""One training step's saved activations and time, PEFT's LoRA forward against the engine's (core/lora_forward.py).

The saved activations are what autograd keeps from the forward pass for the backward pass — the part of a step's
memory that grows with the batch, and what decides its peak. They are counted exactly, by a
``saved_tensors_hooks`` pair that adds up the distinct storages saved (parameters left out); no timing or
allocator noise enters that number. Time is forward + backward of the same step, the ways interleaved round by
round (A B C, B C A, ...), min and median printed; on a shared machine only the ratios mean anything.

The model is the built-in SmolLM2-135M's config (random weights: the numbers do not depend on them), optionally
with fewer layers (``--layers``) to keep a round short; the batch is packed rows like the engine's (examples of
about 170 tokens with restarting position ids), LoRA all-linear r = 16, alpha 32, dropout 0.05 as in
bench/train_throughput.py, the loss computed as the engine does (core/loss.py).

    .venv/bin/python bench/step_memory.py                        # 30 layers, 3 rows of 512, 3 rounds
    .venv/bin/python bench/step_memory.py --layers 6 --rounds 5
"""

from __future__ import annotations

import os
import sys

sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

WAYS = ("peft", "engine")


def build(layers: int | None, way: str):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from workbench.core.builtin import ensure_builtin
    from workbench.core.lean_attention import install_lean_attention
    from workbench.core.lora_forward import install_fused_lora_forward

    config = AutoConfig.from_pretrained(ensure_builtin())
    if layers:
        config.num_hidden_layers = layers
    config.use_cache = False
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.01)
    if way != "peft":
        install_fused_lora_forward(model)
        install_lean_attention(model)
    return model.train()


def batch(rows: int, width: int, vocab: int) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (rows, width), generator=g)
    positions = torch.zeros_like(ids)
    labels = ids.clone()
    for r in range(rows):
        start = 0
        while start < width:
            n = min(width - start, 120 + int(torch.randint(0, 100, (1,), generator=g)))
            positions[r, start:start + n] = torch.arange(n)
            labels[r, start:start + n // 3] = -100  # the prompt: no loss
            start += n
    return {"input_ids": ids, "position_ids": positions, "labels": labels}


def saved_bytes(model, inputs) -> tuple[int, float]:
    """(bytes of distinct non-parameter storages autograd saved in one forward, forward + backward seconds)."""
    from workbench.core.loss import HeadlessCausalLM, chunked_loss_head

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    step = HeadlessCausalLM(model, *chunked_loss_head(model))
    model.zero_grad()
    torch.manual_seed(1)
    began = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step(**dict(inputs))["loss"]
    loss.backward()
    return sum(seen.values()), time.perf_counter() - began


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=0, help="decoder layers (default: the model's 30)")
    ap.add_argument("--rows", type=int, default=3)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=WAYS, action="append")
    args = ap.parse_args()
    ways = list(args.only or WAYS)
    models = {w: build(args.layers or None, w) for w in ways}
    inputs = batch(args.rows, args.width, next(iter(models.values())).config.vocab_size)
    tokens = args.rows * args.width
    memory: dict[str, int] = {}
    times: dict[str, list[float]] = {w: [] for w in ways}
    for r in range(args.rounds):
        order = ways[r % len(ways):] + ways[:r % len(ways)]
        for way in order:
            nbytes, seconds = saved_bytes(models[way], inputs)
            memory[way] = nbytes
            times[way].append(seconds)
            print(f"round {r + 1} {way:>17}: saved {nbytes / 2**20:8.1f} MiB ({nbytes / tokens / 1024:6.1f} KiB a token), "
                  f"forward + backward {seconds:6.2f} s (load {os.getloadavg()[0]:.2f})", flush=True)
    base = ways[0]
    print(f"\n{tokens} tokens ({args.rows} × {args.width}), {models[base].config.num_hidden_layers} layers, "
          f"torch threads {torch.get_num_threads()}")
    for way in ways:
        t = times[way]
        print(f"{way:>17}: saved {memory[way] / 2**20:8.1f} MiB = {memory[way] / memory[base]:.2f}× {base}; time min "
              f"{min(t):6.2f} s, median {statistics.median(t):6.2f} s = {statistics.median(t) / statistics.median(times[base]):.2f}× {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
