"""LoRA initialisations beyond PEFT's default, and LoRA+ — all of them PEFT's own implementations.

* ``pissa`` / ``pissa_niter_N`` / ``olora`` move the principal part of each base weight into A and B and leave the
  residual in the base, so the trained adapter only means something against that *rewritten* base. The run saves
  the initial A and B before the first step and, at the end, PEFT's conversion
  (``save_pretrained(path_initial_model_for_weight_conversion=...)``) turns the trained adapter into a plain LoRA of
  rank 2r against the *original* base: merges, exports and the playground then need nothing special.
* ``orthogonal`` (orthogonal A and B, base untouched) and ``gaussian`` change only the adapter.
* ``eva`` sets A from the SVD of the layers' inputs over the first batches of the training data (and redistributes
  ranks): a data pass before the first step, reported as ``Progress`` events.
* ``loftq`` (4-bit nf4 bases only) sets A and B so that the quantized base plus the adapter is as close as possible
  to the original weights, read from the model's safetensors files.

``training.loraplus_lr_ratio`` builds PEFT's ``create_loraplus_optimizer`` (B learns ratio× faster than A).

Importing this module does not import torch (``config.py`` validates ``lora.init`` with it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import TrainingError

__all__ = ["INITS", "check_init_name", "peft_init", "check_run", "rewrites_base", "INITIAL_ADAPTER",
           "save_initial", "conversion_source", "run_eva", "run_loftq", "make_optimizer"]

INITS: dict[str, str] = {
    "default": "Kaiming-uniform A, zero B: the adapter starts as a no-op (the LoRA paper's choice)",
    "gaussian": "Gaussian A scaled by the rank, zero B",
    "pissa": "A and B from the principal singular vectors of each weight (exact SVD): often converges faster; "
             "slow to start on big models",
    "pissa_niter_N": "PiSSA with a fast randomised SVD of N iterations (e.g. pissa_niter_4): the same benefit in seconds",
    "olora": "A and B from a QR decomposition of each weight: orthonormal start, often more stable",
    "orthogonal": "orthogonal A and B, base weights untouched (needs an even rank)",
    "eva": "A from the SVD of the layers' activations over the first training batches "
           "where the data needs them",
    "loftq": "for 4-bit nf4 bases: A and B absorb the quantization error, so training starts from the original model",
}
_PISSA_NITER = re.compile(r"pissa_niter_(\d+)")
# Where the initial A and B of a base-rewriting init are kept, inside the run folder (needed again at the end).
INITIAL_ADAPTER = "lora_init/initial_adapter"
EVA_BATCHES = 8  # EVA's SVD converges within a few batches (PEFT's own examples use about as many)


def check_init_name(name: str) -> str:
    m = _PISSA_NITER.fullmatch(name)
    if m and int(m.group(1)) >= 1:
        return name
    if name in INITS and name != "pissa_niter_N":
        return name
    allowed = ", ".join(n for n in INITS)
    raise ValueError(f"unknown initialisation; choose one of {allowed} (N a whole number ≥ 1, e.g. pissa_niter_4)")


def rewrites_base(name: str) -> bool:
    """Inits that subtract their starting adapter from the base weights (the adapter needs converting on save)."""
    return name == "pissa" or name == "olora" or _PISSA_NITER.fullmatch(name) is not None


def peft_init(name: str) -> tuple[Any, dict[str, Any]]:
    """``(init_lora_weights, extra LoraConfig kwargs)`` for a ``lora.init`` name."""
    if name == "default":
        return True, {}
    if name == "loftq":
        return True, {}  # LoftQ on a bnb-quantized base replaces the default weights after wrapping (run_loftq)
    if name == "eva":
        from peft import EvaConfig

        return "eva", {"eva_config": EvaConfig(rho=1.0)}
    return name, {}


def check_run(config: Any, device: str = "cpu") -> None:
    """Combinations refused before a run folder exists."""
    init, q = config.lora.init, config.model.quantization
    if init == "loftq" and q != "nf4":
        raise TrainingError(f"lora.init = 'loftq' needs a 4-bit nf4 base (model.quantization is {q!r})",
                            "set model.quantization = 'nf4', or choose lora.init = 'pissa_niter_4' for an unquantized base")
    if init == "loftq" and device != "cuda":
        # PEFT 0.21's replace_lora_weights_loftq computes on "cuda" (or "xpu") unconditionally
        raise TrainingError(f"lora.init = 'loftq' needs a CUDA GPU (PEFT computes it there); this run trains on {device}",
                            "train on a GPU, or use lora.init = 'default' with the nf4 base")
    if rewrites_base(init) and q != "none":
        raise TrainingError(
            f"lora.init = {init!r} rewrites the base weights, which a {q} base stores rounded: the adapter could not be "
            f"converted back to the original model", "use lora.init = 'loftq' (made for quantized bases) or model.quantization = 'none'")
    if init == "eva" and not config.data.train_files:
        raise TrainingError("lora.init = 'eva' initialises the adapter from a pass over the training data, and "
                            "data.train_files is empty", "add training files, or choose another lora.init")
    if init == "orthogonal" and (config.lora.r % 2 or any(r % 2 for r in config.lora.rank_pattern.values())):
        raise TrainingError(f"lora.init = 'orthogonal' needs even ranks (lora.r = {config.lora.r})",
                            f"set lora.r = {config.lora.r + config.lora.r % 2}")
    t = config.training
    if t.loraplus_lr_ratio is not None and t.optimizer not in ("adamw_torch", "adamw_torch_fused", "adamw_bnb_8bit"):
        raise TrainingError(f"training.loraplus_lr_ratio works with AdamW optimizers (training.optimizer is {t.optimizer!r})",
                            "set training.optimizer = 'adamw_torch', or unset training.loraplus_lr_ratio")
    if rewrites_base(init) and config.lora.use_dora:
        raise TrainingError(f"lora.init = {init!r} cannot be combined with DoRA (PEFT converts only plain LoRA weights)",
                            "turn off lora.use_dora, or use lora.init = 'default'")


def save_initial(peft_model: Any, run_dir: Path, init: str) -> None:
    """Keep the starting A and B of a base-rewriting init (once: a resumed run must keep the first start)."""
    folder = run_dir / INITIAL_ADAPTER
    if not rewrites_base(init) or (folder / "adapter_config.json").is_file():
        return
    from .fsutil import atomic_directory

    # PEFT's conversion recognises the initial adapter by init_lora_weights; saving it with True (the value it
    # expects there) keeps PEFT from treating it as yet another PiSSA start when it loads it at the end.
    cfg = peft_model.peft_config["default"]
    original = cfg.init_lora_weights
    cfg.init_lora_weights = True
    try:
        with atomic_directory(folder, overwrite=True) as tmp:
            peft_model.save_pretrained(str(tmp), safe_serialization=True)
    finally:
        cfg.init_lora_weights = original


def conversion_source(run_dir: Path, init: str) -> dict[str, Any]:
    """``save_pretrained`` kwargs that write the adapter as a plain LoRA against the original base."""
    if not rewrites_base(init):
        return {}
    return {"path_initial_model_for_weight_conversion": str(run_dir / INITIAL_ADAPTER)}


class _ProgressBatches:
    """The first ``limit`` batches of a loader, one ``Progress`` event each (EVA's data pass can take a while)."""

    def __init__(self, loader: Iterable, limit: int, sink: Any):
        self.loader, self.limit, self.sink = loader, limit, sink

    def __len__(self) -> int:
        return self.limit

    def __iter__(self) -> Iterator[Any]:
        from .events import Progress

        for i, batch in enumerate(self.loader):
            if i >= self.limit:
                return
            # EVA reads layer inputs only; packed rows' extra keys are fine, labels pick the tokens that count
            self.sink.emit(Progress(task="eva initialisation", done=i, total=self.limit, unit="batches"))
            yield batch
        self.sink.emit(Progress(task="eva initialisation", done=self.limit, total=self.limit, unit="batches"))


def run_eva(peft_model: Any, dataset: Any, collator: Any, batch_size: int, sink: Any, seed: int) -> None:
    """EVA's data pass: A from the SVD of each adapted layer's inputs, over the first batches of the training data."""
    import torch
    from peft import initialize_lora_eva_weights

    from .events import Message

    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collator, generator=gen)
    batches = _ProgressBatches(loader, min(EVA_BATCHES, len(loader)), sink)
    device = next(p.device for p in peft_model.parameters())

    def forward(model: Any, inputs: dict) -> Any:
        return model(**{k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()})

    was_training = peft_model.training
    peft_model.eval()
    try:
        initialize_lora_eva_weights(peft_model, dataloader=batches, forward_fn=forward, show_progress_bar=False)
    finally:
        peft_model.train(was_training)
    sink.emit(Message(f"EVA initialised the adapter from {len(batches)} batches of the training data"))


def run_loftq(peft_model: Any, model_dir: Path, sink: Any) -> None:
    """LoftQ for a bnb nf4 base: A and B set so that dequant(base) + BA is closest to the original weights, read
    lazily from the model's safetensors files (PEFT's ``replace_lora_weights_loftq``)."""
    from peft import replace_lora_weights_loftq

    from .events import Message

    files = sorted(model_dir.glob("*.safetensors"))
    if len(files) != 1:
        raise TrainingError(f"lora.init = 'loftq' reads the original weights from one safetensors file; {model_dir} has "
                            f"{len(files)}", "use a model saved as a single model.safetensors, or lora.init = 'default'")
    replace_lora_weights_loftq(peft_model, model_path=str(files[0]))
    sink.emit(Message("LoftQ initialised the adapter to absorb the 4-bit quantization error"))


def make_optimizer(peft_model: Any, config: Any) -> Any:
    """The LoRA+ optimizer when ``training.loraplus_lr_ratio`` is set, else None (the Trainer builds its own)."""
    t = config.training
    if t.loraplus_lr_ratio is None:
        return None
    import torch
    from peft.optimizers import create_loraplus_optimizer

    if t.optimizer == "adamw_bnb_8bit":
        import bitsandbytes as bnb

        cls: Any = bnb.optim.AdamW8bit
    else:  # check_run refused the others before the run started
        cls = torch.optim.AdamW
    return create_loraplus_optimizer(peft_model, cls, lr=t.learning_rate, loraplus_lr_ratio=t.loraplus_lr_ratio,
                                     weight_decay=t.weight_decay)
