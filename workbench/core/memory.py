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
  while it is recomputed. In half precision a block's share is raised by 15 %: some of it stays in float32
  (the normalisations upcast their input; PEFT casts each LoRA input to the adapter's float32).
* **logits** — ``b·s·V`` float32 logits and their gradient (``2·b·s·V·4``); in half precision also the
  half-precision logits the model returns before the loss upcasts them (``+0.5·b·s·V·4``). Often the largest
  single buffer for models with large vocabularies.
* **overhead** — what lies outside the tensors: on a GPU the CUDA context, cuBLAS workspaces and kernels
  (0.75 GiB) plus the caching allocator's slack (what it reserves beyond the live tensors: 0.8× the
  float32 logits in half precision, 0.4× in float32, +0.3× with checkpointing, +5 % of the activations);
  on the CPU 0.4 GiB for the interpreter and libraries plus 10 % of the activations.

The constants were measured (``bench/gpu_check.py``, docs/benchmarks.md) on an H100 with PyTorch 2.11 and
CUDA 13, ``expandable_segments`` on (the engine's default), on four real architectures' shapes from 135M
to 8B parameters: the estimate came to 0.98–1.12× the device's measured peak across 18 cases. Without
expandable segments the allocator can fragment far beyond this (cases reserved up to 2.9× their tensors).

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

    float_logits = 0 if classification else tokens * vocab_size * 4
    logits = int(float_logits * (2.5 if half else 2))
    if device == "cuda":
        slack = float_logits * ((0.8 if half else 0.4) + (0.3 if gradient_checkpointing else 0.0)) + activations * 0.05
        overhead = CUDA_FRAMEWORK_BYTES + int(slack)
    else:
        overhead = CPU_FRAMEWORK_BYTES + activations // 10
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
    )
