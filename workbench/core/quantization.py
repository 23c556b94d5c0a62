"""Quantized bases (QLoRA): the frozen base weights held in 4 or 8 bits while the LoRA weights train in full.

The backend is bitsandbytes (chosen over torchao by measurement, see docs/benchmarks.md): one library for
nf4, fp4 and int8 bases on CPU and CUDA, loaded through transformers' ``BitsAndBytesConfig``, and the 8-bit
and paged optimizers. What this module owns:

* ``check_run`` — every quantization problem found before a run folder exists (backend missing, device it
  cannot run on, a model already quantized in its files, optimizers that need bitsandbytes or CUDA);
* ``load_kwargs`` — the ``from_pretrained`` arguments that quantize the base while it loads;
* ``prepare_for_training`` — PEFT's ``prepare_model_for_kbit_training`` (norms in fp32, input grads, and
  gradient checkpointing, on by default for quantized bases).

Merging never touches the rounded weights: ``core/merge.py`` streams from the original safetensors files, so an
adapter trained on a 4-bit base merges into the unquantized weights in their own dtype (tested).

Importing this module does not import torch (``config.py`` reads the names from here).
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any

from .errors import TrainingError

__all__ = ["QUANTIZATIONS", "BNB_OPTIMIZERS", "PAGED_OPTIMIZERS", "QuantizationError", "BNB_PIN", "check_run",
           "load_kwargs", "prepare_for_training", "is_quantized", "wants_gradient_checkpointing", "bits_of",
           "stored_bytes", "quantizable", "mark_tree", "module_mark", "logical_numel", "disable_cpu_fast_path"]

BNB_PIN = "bitsandbytes==0.50.2"
QUANTIZATIONS: dict[str, str] = {
    "none": "the base weights in model.dtype (no quantization)",
    "nf4": "4-bit NormalFloat (QLoRA's choice: best 4-bit quality for normally distributed weights)",
    "fp4": "4-bit float",
    "int8": "8-bit integer (LLM.int8(): about half of bf16's memory, the closest to unquantized quality)",
}
# HF Trainer optimizer names that bitsandbytes implements; paged ones move their state to CPU memory when the
# GPU runs out, which only exists on CUDA (bitsandbytes silently falls back to unpaged elsewhere).
PAGED_OPTIMIZERS = ("paged_adamw_8bit", "paged_adamw_32bit")
BNB_OPTIMIZERS = ("adamw_bnb_8bit", *PAGED_OPTIMIZERS)


class QuantizationError(TrainingError):
    """A quantization setting this model, device or installation cannot do."""


def is_quantized(model_config: Any) -> bool:
    return getattr(model_config, "quantization", "none") != "none"


def bits_of(quantization: str) -> int | None:
    return {"nf4": 4, "fp4": 4, "int8": 8}.get(quantization)


def wants_gradient_checkpointing(config: Any) -> bool:
    """``training.gradient_checkpointing`` when set; unset, on for quantized bases (QLoRA's memory saving is
    wasted if the activations of a long sequence still fill the device) and off otherwise."""
    setting = config.training.gradient_checkpointing
    return is_quantized(config.model) if setting is None else bool(setting)


def backend_available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def check_run(config: Any, hf_config: Any, device: str) -> None:
    """Raise ``QuantizationError`` for a quantization or optimizer setting that cannot work, before any run
    folder or weight is touched. ``hf_config`` is the model's transformers config (None for a GGUF source,
    whose conversion is never pre-quantized)."""
    q = config.model.quantization
    pre = getattr(hf_config, "quantization_config", None) if hf_config is not None else None
    if pre is not None:
        method = pre.get("quant_method", "unknown") if isinstance(pre, dict) else getattr(pre, "quant_method", "unknown")
        method = getattr(method, "value", method)
        # Loading such a folder as-is would train on its rounded weights with no original to merge back into
        # (merges stream from the original files); so they are refused, naming what works instead.
        raise QuantizationError(
            f"{config.model.source} is already quantized in its files (config.json quantization_config: "
            f"quant_method {method!r}); the workbench trains on unquantized models only and quantizes them itself "
            f"(model.quantization = nf4, fp4 or int8)",
            "choose the unquantized original of this model (float32, bfloat16 or float16 safetensors) and set "
            "model.quantization = 'nf4' for a 4-bit base",
        )
    optim = config.training.optimizer
    if q == "none" and optim not in BNB_OPTIMIZERS:
        return
    if not backend_available():
        what = f"model.quantization = {q!r}" if q != "none" else f"training.optimizer = {optim!r}"
        raise QuantizationError(f"{what} needs bitsandbytes, which is not installed",
                                f"install it with: pip install {BNB_PIN}  (or pip install 'lora-workbench[quant]')")
    if device == "mps":
        raise QuantizationError(f"bitsandbytes has no backend for Apple's mps device (model.quantization = {q!r})",
                                "set training.device = 'cpu', or model.quantization = 'none' on this Mac")
    if optim in PAGED_OPTIMIZERS and device != "cuda":
        raise QuantizationError(
            f"training.optimizer = {optim!r} pages its state between GPU and CPU memory, which needs a CUDA GPU "
            f"(this run trains on {device})",
            "use training.optimizer = 'adamw_bnb_8bit' (8-bit state, any device) or 'adamw_torch'")
    if q != "none" and config.model.dtype == "float16" and device == "cpu":
        raise QuantizationError("model.dtype = 'float16' with a quantized base on the CPU: bitsandbytes' CPU kernels "
                                "compute in float32 or bfloat16", "set model.dtype = 'auto' (float32) or 'bfloat16'")


def load_kwargs(model_config: Any, device: str, weight_dtype: Any) -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments: the ``BitsAndBytesConfig`` and the device map the quantizer needs
    (bitsandbytes quantizes while it places each weight, so the model cannot be moved afterwards)."""
    q = model_config.quantization
    if q == "none":
        return {}
    from transformers import BitsAndBytesConfig

    if q == "int8":
        qc = BitsAndBytesConfig(load_in_8bit=True)
    else:
        # Compute dtype = the dtype of the unquantized rest of the model (model.dtype, resolved per device):
        # 4-bit weights are dequantized to it for each matmul, so the two must agree.
        qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q, bnb_4bit_use_double_quant=model_config.double_quant,
                                bnb_4bit_compute_dtype=weight_dtype, bnb_4bit_quant_storage="uint8")
    return {"quantization_config": qc, "device_map": {"": 0} if device == "cuda" else {"": device}}


def prepare_for_training(model: Any, config: Any) -> Any:
    """PEFT's preparation of a quantized base: layer norms and the head in fp32, input embeddings that pass
    gradients (the base is frozen), and gradient checkpointing when wanted. Plain bases are left alone."""
    if not is_quantized(config.model):
        return model
    from peft import prepare_model_for_kbit_training

    _quiet_int8_casts()
    disable_cpu_fast_path(model)  # the run's evaluations and samples run in eval mode without gradients
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=wants_gradient_checkpointing(config),
                                           gradient_checkpointing_kwargs={"use_reentrant": False})


def disable_cpu_fast_path(model: Any) -> int:
    """Switch off bitsandbytes' CPU inference path for 4-bit layers; returns how many layers it was on for.

    bitsandbytes 0.50.x, on a CPU with AVX512-BF16, repacks a ``Linear4bit``'s weight the first time it runs in
    eval mode without gradients (``_convert_weight_packed_for_cpu``). Measured on a tiny llama (tests/core/
    test_quantized_eval.py): for any 4-bit type, with or without double quantization, the repacking fails with a
    reshape error when a layer's input width is not a multiple of the 64-weight block, and where it works, its
    bfloat16 scales and compute move the logits by ~0.1–0.2 from those of the path training uses. The repacking is
    permanent: after a run's first evaluation the training steps themselves would compute with the rounded scales
    (the loss of the same batch moved from 8.5127 to 8.5073 in the test). With it off, eval-mode logits equal the
    training path's exactly, so an evaluation or a comparison measures the model that was trained."""
    switched = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            switched += 1
    return switched


def stored_bytes(in_features: int, out_features: int, quantization: str, double_quant: bool = True) -> int:
    """Bytes one quantized weight matrix occupies in bitsandbytes' layout (bias excluded).

    4-bit: two weights per byte, plus one absmax per 64-weight block — a float32 (4 bytes), or with double
    quantization one byte plus a float32 per 256 blocks. int8: one byte per weight plus a float32 scale per row."""
    n = in_features * out_features
    if quantization == "int8":
        return n + 4 * out_features
    blocks = -(-n // 64)
    absmax = blocks + 4 * -(-blocks // 256) if double_quant else 4 * blocks
    return n // 2 + n % 2 + absmax


def quantizable(node: Any) -> bool:
    """Whether transformers' bitsandbytes integration replaces this module: every Linear / Conv1D except the output
    head (kept in full precision, like the embeddings, by ``get_keys_to_not_convert``)."""
    return bool(node.adaptable) and node.kind != "head" and node.type in ("Linear", "Conv1D", "Linear4bit", "Linear8bitLt")


def mark_tree(tree: Any, model_config: Any) -> None:
    """Mark in a layer tree (built from a meta skeleton: nothing loaded) the modules a run with this
    ``model.quantization`` will hold quantized, with their stored size; a run's real tree is marked by
    ``layers.build_tree`` itself. The window shows the marks; the memory estimate sums the sizes."""
    q = model_config.quantization
    for node in tree.nodes.values():
        if q != "none" and quantizable(node):
            node.quantized = q
            node.stored_bytes = stored_bytes(node.in_features, node.out_features, q, model_config.double_quant)
        elif node.quantized is None or q == "none":
            node.quantized, node.stored_bytes = None, 0


def module_mark(module: Any) -> tuple[str, int] | None:
    """(quantization, stored bytes) of a loaded bitsandbytes module, from its real tensors; None for others."""
    weight = getattr(module, "weight", None)
    state = getattr(weight, "quant_state", None)
    if state is not None and weight is not None:  # Params4bit: packed data + the state's absmax (and its own, nested)
        size = weight.data.numel() * weight.data.element_size() + state.absmax.numel() * state.absmax.element_size()
        if getattr(state, "nested", False) and state.state2 is not None:
            size += state.state2.absmax.numel() * state.state2.absmax.element_size()
        return str(state.quant_type), int(size)
    if type(module).__name__ == "Linear8bitLt" and weight is not None:
        scale = getattr(weight, "SCB", None)
        return "int8", int(weight.numel() + (scale.numel() * scale.element_size() if scale is not None else 0))
    return None


def logical_numel(param: Any) -> int:
    """Parameters a tensor stands for: a 4-bit weight packs two per byte into a flat uint8 tensor."""
    state = getattr(param, "quant_state", None)
    if state is not None:
        n = 1
        for d in state.shape:
            n *= int(d)
        return n
    return int(param.numel())


def _quiet_int8_casts() -> None:
    """bitsandbytes warns on every int8 matmul of an fp32 input ('inputs will be cast to float16'): once per layer
    per step would bury the run's own messages, and the cast is what int8 does. A process-wide filter (not
    ``catch_warnings``, which is not thread-safe and the run trains in a worker thread), for these two texts only."""
    warnings.filterwarnings("ignore", message=r"MatMul8bitLt: inputs will be cast")
    warnings.filterwarnings("ignore", message=r"Paged optimizers are not supported on CPU")


def describe(model_config: Any) -> str:
    """One line for messages and model cards: what the base was held in while training."""
    q = model_config.quantization
    if q == "none":
        return "unquantized base"
    extra = ", double quantization" if q in ("nf4", "fp4") and model_config.double_quant else ""
    return f"{q} base (bitsandbytes{extra})"
