"""Peak-memory estimate for a training configuration, before anything is loaded.

The estimate is the sum of these parts (``P`` = base parameters, ``T`` = trainable parameters,
``b`` = micro-batch, ``s`` = sequence length, ``L`` = transformer blocks, ``V`` = vocabulary):

* **weights** — ``P × bytes(dtype)`` for the frozen base model. With a quantized base (``model.quantization``)
  every Linear but the head is counted at its stored size (``quantization.stored_bytes``: 4-bit = half a byte per
  weight plus block scales, int8 = a byte plus a row scale) and the rest (embeddings, norms, head, biases) in
  float32: PEFT's ``prepare_model_for_kbit_training`` upcasts them.
* **dequantization buffers** (quantized bases) — each quantized matmul dequantizes its weight to the compute
  dtype first; the estimate holds two of the largest one (forward and the backward's recomputation).
* **adapter** — ``T × 4``: PEFT keeps adapter weights in float32 even on a half-precision base.
* **gradients** — ``T × 4``: only adapter weights get gradients.
* **optimizer** — AdamW keeps two float32 moments (``T × 8``); bitsandbytes' 8-bit AdamW two uint8 moments with a
  float32 scale per 256 values (``T × 2 × 1.016``; paged_adamw_32bit stays ``T × 8``); SGD without momentum none;
  Adafactor factored second moments (one value per row plus one per column of each matrix).
* **activations** — what autograd keeps for the backward pass, per token and block, in the compute
  dtype: the outputs of every linear layer in the block (from the tree, so it fits each architecture),
  the inputs and outputs of the two normalisations (``4h``), the MLP's activation output, and — when
  LoRA dropout is on — the dropped-out copy of each adapted layer's input, plus ``r`` per adapted layer.
  Times ``b·s·L``. Attention itself is assumed memory-efficient (SDPA / flash); with the ``eager``
  implementation the ``b·heads·s²`` score and probability matrices are added per block.
  With gradient checkpointing only each block's input (``b·s·h``) is kept, plus one block's full set
  while it is recomputed. Where the engine's own layer nodes run (``lean_layers``: llama / mistral / qwen2
  blocks in float32, plain LoRA on an unquantized base — core/lora_forward.py, core/lean_attention.py) a block
  keeps less, counted by ``_lean_block_activation_elements``: 23 KiB a token for SmolLM2-135M, all-linear,
  against 55 by the count above (tests/core/test_memory_engine.py checks the count against autograd's). In half
  precision a block's share is raised by 15 %: some of it stays in float32 (the normalisations upcast their
  input; PEFT casts each LoRA input to the adapter's float32).
* **logits** — ``b·s·V`` float32 logits and their gradient (``2·b·s·V·4``); in half precision also the
  half-precision logits the model returns before the loss upcasts them (``+0.5·b·s·V·4``). Often the largest
  single buffer for models with large vocabularies. Where the engine computes the loss itself
  (``chunked_loss``: core/loss.py, a supervised causal LM of a listed type with its head not adapted) only one
  64 MiB chunk of float32 logits exists at a time, beside the supervised positions' hidden states and their
  gradient (``2·b·s·h·4``).
* **overhead** — what lies outside the tensors: on a GPU the CUDA context, cuBLAS workspaces and kernels
  (0.75 GiB) plus the caching allocator's slack (what it reserves beyond the live tensors: 0.8× the
  float32 logits in half precision, 0.4× in float32, +0.3× with checkpointing, +5 % of the activations);
  on the CPU 0.4 GiB for the interpreter and libraries plus what the C allocator holds beyond the live
  tensors (``CPU_ALLOCATOR_SLACK`` × the activations, measured: see the constant).

The constants were measured (``bench/gpu_check.py``, docs/benchmarks.md) on an H100 with PyTorch 2.11 and
CUDA 13, ``expandable_segments`` on (the engine's default), on four real architectures' shapes from 135M
to 8B parameters: the estimate came to 0.98–1.12× the device's measured peak across 18 cases. Without
expandable segments the allocator can fragment far beyond this (cases reserved up to 2.9× their tensors).

The chunked loss and the lean blocks came later (2026-12-03) and are not in those GPU measurements: where they
apply on a GPU (float32 runs for the blocks; the loss in any precision) the estimate follows what they allocate,
unmeasured there.

It is an estimate, meant to say "fits / tight / does not fit" before a run, not to the megabyte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .layers import LayerTree, Selection

GiB = 1024**3
# Measured on an H100 (PyTorch 2.11, CUDA 13): device memory in use beyond the allocator's reservation.
CUDA_FRAMEWORK_BYTES = int(0.75 * GiB)
CPU_FRAMEWORK_BYTES = int(0.4 * GiB)
HALF_PRECISION_ACTIVATION_FACTOR = 1.15
# core/loss.py's CHUNK_BYTES and CHUNKED_LOSS_MODEL_TYPES, not imported: that module imports torch, and the window
# estimates on its own thread (tests/core/test_memory_engine.py keeps them equal).
LOSS_CHUNK_BYTES = 64 * 2**20
CHUNKED_LOSS_TYPES = frozenset({"gemma", "gpt2", "gpt_neox", "llama", "mistral", "opt", "phi3", "qwen2"})
# Architectures whose blocks core/lora_forward.py computes with its own nodes (GATED_SILU_MLPS, RMS_NORMS there).
LEAN_LAYER_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2"})
# How far a CPU process's peak resident memory rises beyond its live tensors, as a share of the saved activations:
# glibc serves tensors under its (self-raising, up to 32 MiB) mmap threshold from its heap and keeps what the
# backward pass frees there, reused imperfectly. Measured with /usr/bin/time on SmolLM2-135M, all-linear r=16,
# fp32, 4 × 1024 tokens: 2.71 GiB saved (bench/step_memory.py's exact count), peak RSS 7.19 GiB for that step
# alone and 7.55 GiB for a 3-step CLI run — about 1.4 × the activations beyond weights, activations and libraries.
CPU_ALLOCATOR_SLACK = 1.4
DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "int8": 1}


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    adapter: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    overhead: int
    dequant_buffers: int = 0
    quantization: str = "none"  # what the frozen weights are held in, said in the breakdown
    optimizer_name: str = "adamw_torch"

    @property
    def total(self) -> int:
        return (self.weights + self.adapter + self.gradients + self.optimizer + self.activations + self.logits
                + self.overhead + self.dequant_buffers)

    def parts(self) -> list[tuple[str, int]]:
        frozen = "frozen weights" if self.quantization == "none" else f"frozen weights ({self.quantization} linear layers, rest float32)"
        rows = [
            (frozen, self.weights),
            ("adapter weights", self.adapter),
            ("gradients", self.gradients),
            (f"optimizer state ({self.optimizer_name})", self.optimizer),
            ("activations", self.activations),
            ("logits", self.logits),
            ("framework overhead", self.overhead),
        ]
        if self.quantization != "none":
            rows.insert(1, ("dequantization buffers", self.dequant_buffers))
        return rows

    def verdict(self, available: int | None) -> str:
        """'fits' (under 85 % of the memory), 'tight' (85–100 %), 'does not fit', or 'unknown'."""
        if not available:
            return "unknown"
        share = self.total / available
        return "fits" if share < 0.85 else "tight" if share <= 1.0 else "does not fit"


def estimate_memory(
    tree: "LayerTree",
    sel: "Selection",
    *,
    hidden_size: int,
    vocab_size: int,
    num_heads: int = 0,
    weight_dtype: str = "bfloat16",
    compute_dtype: str | None = None,
    batch_size: int = 1,
    seq_len: int = 1024,
    gradient_checkpointing: bool = False,
    optimizer: str = "adamw_torch",
    lora_dropout: float = 0.0,
    device: str = "cuda",
    attn_implementation: str = "sdpa",
    classification: bool = False,
    quantization: str = "none",
    double_quant: bool = True,
    chunked_loss: bool = False,
    lean_layers: bool = False,
) -> MemoryEstimate:
    from .layers import count_selection

    counts = count_selection(tree, sel)
    trainable = counts.trainable_params
    w_bytes = DTYPE_BYTES[weight_dtype]
    a_bytes = DTYPE_BYTES[compute_dtype or weight_dtype]
    tokens = batch_size * seq_len

    weights = tree.total_params * w_bytes
    dequant = 0
    if quantization != "none":
        from .quantization import quantizable, stored_bytes

        packed = [n for n in tree.nodes.values() if quantizable(n)]
        matrix = sum(n.in_features * n.out_features for n in packed)
        weights = (sum(stored_bytes(n.in_features, n.out_features, quantization, double_quant) for n in packed)
                   + (tree.total_params - matrix) * 4)
        dequant = 2 * max((n.in_features * n.out_features for n in packed), default=0) * a_bytes
    adapter = trainable * 4
    gradients = trainable * 4
    optimizer_bytes = _optimizer_bytes(tree, sel, optimizer, trainable)

    if lean_layers:
        per_block = _lean_block_activation_elements(tree, sel, hidden_size, lora_dropout, a_bytes, device)
    else:
        per_block = _block_activation_elements(tree, sel, hidden_size, lora_dropout)
    blocks = max(tree.num_blocks, 1)
    attn_scores = 2 * batch_size * num_heads * seq_len * seq_len * a_bytes if attn_implementation == "eager" else 0
    half = a_bytes == 2
    # In half precision some of a block's tensors stay in float32 (see the docstring).
    block_bytes_per_token = per_block * a_bytes * (HALF_PRECISION_ACTIVATION_FACTOR if half else 1.0)
    full_block = int(tokens * block_bytes_per_token) + attn_scores
    if gradient_checkpointing:
        activations = blocks * tokens * hidden_size * a_bytes + full_block
    else:
        activations = blocks * full_block
    # Embedding output and final norm, always kept.
    activations += 2 * tokens * hidden_size * a_bytes
    if lean_layers:  # lean attention's one additive mask per forward (b × s × s), instead of one in every block
        activations += tokens * seq_len * a_bytes

    float_logits = 0 if classification else tokens * vocab_size * 4
    if chunked_loss and not classification:
        # core/loss.py: one chunk of fp32 logits at a time (its softmax computed in place; a half-precision
        # product before the upcast), plus the supervised positions' hidden states and their gradient.
        logits = 2 * LOSS_CHUNK_BYTES + (LOSS_CHUNK_BYTES // 2 if half else 0) + 2 * tokens * hidden_size * 4
        slack_logits = 0
    else:
        logits = int(float_logits * (2.5 if half else 2))
        slack_logits = float_logits
    if device == "cuda":
        slack = slack_logits * ((0.8 if half else 0.4) + (0.3 if gradient_checkpointing else 0.0)) + activations * 0.05
        overhead = CUDA_FRAMEWORK_BYTES + int(slack)
    else:
        overhead = CPU_FRAMEWORK_BYTES + int(activations * CPU_ALLOCATOR_SLACK)
    return MemoryEstimate(weights, adapter, gradients, optimizer_bytes, activations, logits, overhead, dequant,
                          quantization, optimizer)


def _optimizer_bytes(tree: "LayerTree", sel: "Selection", optimizer: str, trainable: int) -> int:
    if optimizer in ("adamw_bnb_8bit", "paged_adamw_8bit"):
        return trainable * 2 + (trainable * 2 // 256) * 4
    if optimizer.startswith("adamw") or optimizer == "paged_adamw_32bit":
        return trainable * 8
    if optimizer == "sgd":
        return 0
    if optimizer == "adafactor":
        factored = sum(
            (sel.rank_of(n) + tree.nodes[n].in_features) + (tree.nodes[n].out_features + sel.rank_of(n)) for n in sel.targets
        )
        return factored * 4
    return trainable * 8


def _block_activation_elements(tree: "LayerTree", sel: "Selection", hidden: int, lora_dropout: float) -> int:
    """Elements kept per token for one transformer block (block 0 stands for all)."""
    block0 = [n for n in tree.adaptable() if n.block == 0]
    if not block0:  # no repeated blocks: treat every linear layer as one block
        block0 = [n for n in tree.adaptable() if n.kind != "head"]
    outputs = sum(n.out_features for n in block0)
    act_fn = sum(n.out_features for n in block0 if n.kind == "mlp_in")  # activation output of the MLP
    selected0 = [n for n in sel.targets if tree.nodes[n].block in (0, None) and tree.nodes[n].kind != "head"]
    lora_extra = sum(sel.rank_of(n) for n in selected0)
    if lora_dropout > 0:
        lora_extra += sum(tree.nodes[n].in_features for n in selected0)
    return outputs + act_fn + 4 * hidden + lora_extra


def _lean_block_activation_elements(tree: "LayerTree", sel: "Selection", hidden: int, lora_dropout: float,
                                    a_bytes: int, device: str) -> int:
    """Elements kept per token for one block when the engine's own layer nodes run (``lean_layers``): the
    outputs of q, k, v (k and v not repeated for grouped-query attention) and of the MLP's input projections,
    the attention output (o's input), the two norms' inputs, and the rank-wide products; not the outputs of o
    and down (added straight into the residual stream), not the norms' outputs (recomputed), not the MLP's
    activation when down is adapted (``silu(gate) * up`` recomputed). Dropout masks are redrawn on a CPU and
    kept as booleans elsewhere. Measured 23.0 KiB a token for a SmolLM2-135M block, all-linear r=16 (this
    count: 22.9; docs/benchmarks.md)."""
    block0 = [n for n in tree.adaptable() if n.block == 0]
    if not block0:
        return _block_activation_elements(tree, sel, hidden, lora_dropout)
    kept = sum(n.in_features if n.kind == "o" else n.out_features for n in block0 if n.kind != "mlp_out")
    selected0 = [n for n in sel.targets if tree.nodes[n].block == 0]
    if not any(tree.nodes[n].kind == "mlp_out" for n in selected0):  # no gated node: the activation is kept
        kept += sum(n.out_features for n in block0 if n.kind == "mlp_in") // 2
    kept += 2 * hidden + sum(sel.rank_of(n) for n in selected0)
    if lora_dropout > 0 and device != "cpu":
        kept += -(-sum(tree.nodes[n].in_features for n in selected0) // a_bytes)  # one byte a masked element
    return kept


def estimate_for_config(tree: "LayerTree", sel: "Selection", hf_config: Any, config: Any, *, device: str = "cuda",
                        weight_dtype: str | None = None, compute_dtype: str | None = None) -> MemoryEstimate:
    """Convenience wrapper: read the sizes from a transformers config and the run configuration."""
    from .compat import attention_implementation
    from .precision import planned_compute
    from .quantization import wants_gradient_checkpointing

    text_cfg = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    planned = planned_compute(config, device)  # the engine's rule (core/precision.py) for this device
    # What the engine will load the weights in, and compute activations in (autocast), unless told otherwise.
    weight_dtype = planned.weight_dtype if weight_dtype is None else weight_dtype
    compute_dtype = planned.compute_dtype if compute_dtype is None else compute_dtype
    return estimate_memory(
        tree, sel,
        hidden_size=int(getattr(text_cfg, "hidden_size", 0) or 0),
        vocab_size=int(getattr(text_cfg, "vocab_size", 0) or 0),
        num_heads=int(getattr(text_cfg, "num_attention_heads", 0) or 0),
        weight_dtype=weight_dtype,
        compute_dtype=compute_dtype,
        batch_size=config.training.batch_size,
        seq_len=config.data.max_length,
        gradient_checkpointing=wants_gradient_checkpointing(config),
        optimizer=config.training.optimizer,
        lora_dropout=config.lora.dropout,
        device=device,
        attn_implementation=attention_implementation(hf_config) or "sdpa",
        classification=config.model.task == "sequence-classification",
        quantization=config.model.quantization,
        double_quant=config.model.double_quant,
        chunked_loss=_engine_loss_is_chunked(tree, sel, hf_config, config),  # the causal LM's own type, not its text part's
        lean_layers=_engine_layers_are_lean(text_cfg, config, weight_dtype, compute_dtype),
    )


def _engine_loss_is_chunked(tree: "LayerTree", sel: "Selection", hf_config: Any, config: Any) -> bool:
    """Whether a training step computes the loss as core/loss.py does (``chunked_loss_head``'s rule, read from
    the configuration): a supervised causal LM of a listed type whose output head is not adapted."""
    return (config.model.task == "causal-lm" and config.training.method == "sft"
            and getattr(hf_config, "model_type", None) in CHUNKED_LOSS_TYPES
            and not any(tree.nodes[n].kind == "head" for n in sel.targets if n in tree.nodes))


def _engine_layers_are_lean(text_cfg: Any, config: Any, weight_dtype: str, compute_dtype: str) -> bool:
    """Whether core/lora_forward.py's nodes (LoRA linear, gated MLP, RMSNorm) and lean attention compute the
    blocks: their architectures, plain LoRA (no DoRA), an unquantized base, one dtype throughout (no autocast;
    PEFT's adapters are float32, so a float32 base)."""
    return (getattr(text_cfg, "model_type", None) in LEAN_LAYER_MODEL_TYPES and config.model.quantization == "none"
            and not config.lora.use_dora and DTYPE_BYTES[weight_dtype] == DTYPE_BYTES[compute_dtype] == 4)
