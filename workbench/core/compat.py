"""Every framework API Workbench reads that the framework does not document as public, behind one module.

Each function here says what it reads and why no public API does the same, imports the framework inside the
function (this module is imported on short command paths), and has a test in ``tests/core/test_compat_<area>.py``
that fails when a framework release moves or changes what it reads, so an upgrade breaks there, in CI, and
not in a user's hands. Sections are named after the area of Workbench that uses them.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from datasets import Dataset

# --- transformers (models) ---------------------------------------------------------------------------------


def known_model_types() -> frozenset[str]:
    """Every ``model_type`` (``config.json``'s "model_type") this transformers can build a config for.

    Public: ``transformers.CONFIG_MAPPING``, the auto-config mapping keyed by model type (its keys are the
    private ``CONFIG_MAPPING_NAMES`` plus any registered with ``AutoConfig.register``). Listed here all the
    same because Workbench relies on it meaning "AutoConfig knows this type", which the test checks.
    """
    from transformers import CONFIG_MAPPING

    return frozenset(CONFIG_MAPPING.keys())


def gguf_architectures_transformers_reads() -> frozenset[str]:
    """GGUF architectures (``general.architecture``, as transformers spells them) whose config and weights
    transformers' GGUF loading turns into a PyTorch model, whatever the task.

    No public API lists them. transformers 5 has two GGUF paths: the original one, driven by
    ``transformers.integrations.ggml.GGUF_CONFIG_MAPPING`` (metadata key renames per architecture, beside two
    entries that are no architecture, "general" and "tokenizer"; an architecture's entry is the one that
    renames ``block_count``), and a newer one for the architectures in
    ``transformers.integrations.gguf.GGUF_ARCHS``. A file of any other architecture is refused by transformers.
    """
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    found = {arch for arch, renames in GGUF_CONFIG_MAPPING.items() if "block_count" in renames}
    try:
        from transformers.integrations.gguf import GGUF_ARCHS
    except ImportError:  # a transformers with the original path only
        GGUF_ARCHS = {}
    return frozenset(found | set(GGUF_ARCHS))


def attention_implementation(hf_config: Any) -> str | None:
    """The attention kernel a model built from ``hf_config`` uses ("sdpa", "eager", "flash_attention_2"…), or None
    when the config does not say (transformers then picks one when the model is built).

    No public API: transformers keeps the choice in ``PretrainedConfig._attn_implementation`` (set from the
    ``attn_implementation=`` argument of ``from_pretrained`` / ``from_config``, and read by every attention
    module). The memory estimate sizes the attention activations by it.
    """
    value = getattr(hf_config, "_attn_implementation", None)
    return value if isinstance(value, str) and value else None


def loaded_parameter_names(model: Any, stored_keys: Iterable[str]) -> dict[str, str | None]:
    """For each tensor name stored in a checkpoint, the parameter of ``model`` that ``from_pretrained`` loads it
    into (the name itself when nothing renames it), or None when a converter builds that parameter from several
    stored tensors or reshapes it (a fused or split projection), so no single stored tensor is the parameter.

    transformers 5 renames many models' modules on load (ViT: the checkpoint's ``encoder.layer.0.attention.
    attention.query`` is the model's ``layers.0.attention.q_proj``) and adds or strips the base model prefix (a
    bare ``BertModel`` checkpoint loaded as ``BertForSequenceClassification``), and reverts both on save, so the
    files keep the original names. No public API maps one name to the other: this applies the loader's own
    steps from ``transformers.modeling_utils``: ``conversion_mapping.get_model_conversion_mapping(model)``, split
    into ``WeightRenaming`` and ``WeightConverter`` entries, then ``core_model_loading.rename_source_key`` with the
    model's ``base_model_prefix`` and state dict, retried without renamings for a key the renaming took away from
    a parameter of its own name, as ``convert_and_load_state_dict_in_model`` does.
    """
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    conversions = get_model_conversion_mapping(model)
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    prefix = model.base_model_prefix
    parameters = model.state_dict()
    names: dict[str, str | None] = {}
    for key in stored_keys:
        renamed, converter = rename_source_key(key, renamings, converters, prefix, parameters)
        if renamed not in parameters and key in parameters:
            renamed, converter = rename_source_key(key, [], [], base_model_prefix=prefix, meta_state_dict=parameters)
        names[key] = None if converter is not None else renamed
    return names


# --- transformers (training) -------------------------------------------------------------------------------
#
# ``training.trainer.AtomicCheckpointTrainer`` overrides two private Trainer methods, which cannot be wrapped
# here: ``Trainer._save_checkpoint(model, trial)`` (writes checkpoint-N) and ``Trainer._get_output_dir(trial)``,
# which ``_save_checkpoint`` asks for the folder it saves into. tests/core/test_compat_training.py checks both.


def trainer_load_allowlist() -> AbstractContextManager[Any]:
    """The context in which ``torch.load(weights_only=True)`` accepts what the Trainer's checkpoints hold (the numpy
    RNG state): the same allowlist the Trainer itself loads them under at resume.

    Not documented: ``transformers.trainer_pt_utils.safe_globals``, the Trainer's own helper.
    """
    from transformers.trainer_pt_utils import safe_globals

    return safe_globals()


# --- datasets (data) ---------------------------------------------------------------------------------------


def dataset_fingerprint(ds: Dataset) -> str:
    """The fingerprint ``datasets`` names a dataset's state by: the same for the same data and transforms
    (including a dataset read back from its cache files), different after any transform. The data
    preparation keys each cached stage on the fingerprint of the stage before it.

    No public API: ``datasets`` keeps it in ``Dataset._fingerprint`` (its own transforms read it there to
    derive the next one) and documents only the ``new_fingerprint=`` arguments that set it.
    """
    return ds._fingerprint


# --- transformers (attention while training: core/lean_attention.py) ---------------------------------------


def sdpa_attention_forward() -> Any:
    """transformers' own SDPA attention function, ``(module, query, key, value, attention_mask, **kwargs) ->
    (output [batch, length, heads, dim], None)``: what the ``"sdpa"`` implementation runs. Workbench's training
    attention calls it for every case it does not compute itself, so those stay transformers' computation.

    Not documented as public: ``transformers.integrations.sdpa_attention.sdpa_attention_forward`` (the public
    ``AttentionInterface`` registry holds it under "sdpa"; read through an instance of it, as the models read it).
    """
    from transformers import AttentionInterface

    return AttentionInterface()["sdpa"]


def sdpa_mask_function() -> Any:
    """The mask builder transformers uses for ``"sdpa"`` (a boolean ``[batch, 1, query, key]`` mask, or None where
    ``is_causal`` suffices), registered under Workbench's attention name so that its masks are built the same way.

    ``transformers.masking_utils.sdpa_mask``: the docs' own example for a custom attention function
    (``AttentionMaskInterface.register(name, sdpa_mask)``), read through the public registry.
    """
    from transformers import AttentionMaskInterface

    return AttentionMaskInterface()["sdpa"]


def cpu_flash_attention() -> tuple[Any, Any] | None:
    """torch's CPU flash-attention kernel, forward and backward, as ``(forward, backward)`` — or None where this
    torch has no such ops. Workbench's per-example attention (core/lean_attention.py) runs one causal call per
    example of a packed row and writes each into one output tensor that the backward pass keeps; the public
    ``scaled_dot_product_attention`` would keep every call's own output besides (a second copy of the layer's
    attention output), and has no ``out=``.

    ``torch.ops.aten._scaled_dot_product_flash_attention_for_cpu`` (``(query, key, value, dropout_p, is_causal,
    *, attn_mask, scale) -> (output, logsumexp)``, key/value heads fewer than query heads allowed) and its
    ``_backward`` (``(grad_out, query, key, value, out, logsumexp, dropout_p, is_causal, *, attn_mask, scale) ->
    (grad_query, grad_key, grad_value)``): what ``scaled_dot_product_attention`` dispatches to on a CPU.
    """
    import torch

    forward = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    backward = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    return None if forward is None or backward is None else (forward, backward)
