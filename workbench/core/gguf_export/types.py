"""The GGUF file types an export can produce, and who produces them.

Two writers, chosen by evidence (checked against gguf 0.19 and llama-cpp-python 0.3.36):

* The ``gguf`` Python package quantizes F32, F16 (numpy), BF16 and Q8_0 (plus the legacy Q4_0/Q4_1/Q5_0/Q5_1
  and the ternary/MXFP4 types no export here needs). Its k-quant classes (Q2_K … Q6_K) only *de*-quantize:
  ``quants.Q4_K.quantize_blocks`` does not exist. These types are written tensor by tensor while the merge
  runs, so the exact size of the file is known before a byte is written.
* The k-quant mixes (Q4_K_M, Q5_K_M, Q6_K, …) need llama.cpp's own quantizer, which chooses a type per
  tensor (``_M`` keeps some ``attn_v`` / ``ffn_down`` tensors and the output at higher precision). The
  ``llama-cpp-python`` package ships it in its shared library as ``llama_model_quantize``; the export first
  writes an unquantized GGUF beside the output and lets llama.cpp quantize it in a child process
  (``quantize.py``). Their size is an estimate (bits per weight) until the file exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.util import find_spec
from typing import Literal

from workbench.core.errors import WorkbenchError

__all__ = ["GgufType", "GGUF_TYPES", "ADAPTER_TYPES", "DEFAULT_TYPE", "gguf_type", "llama_cpp_available",
           "available_types"]


@dataclass(frozen=True)
class GgufType:
    name: str  # what the user types: "q8_0"
    label: str  # what llama.cpp and model cards print: "Q8_0"
    writer: Literal["python", "llama.cpp"]
    file_type: int  # general.file_type (gguf.LlamaFileType)
    tensor_type: str | None  # GGMLQuantizationType name of the 2-D weights (python writer); None for llama.cpp mixes
    bits_per_weight: float  # for the size estimate of llama.cpp mixes (llama.cpp's own figures for 7B models)
    description: str


def _t(name: str, writer: Literal["python", "llama.cpp"], file_type: int, tensor_type: str | None, bpw: float,
       description: str) -> GgufType:
    return GgufType(name, name.upper(), writer, file_type, tensor_type, bpw, description)


GGUF_TYPES: dict[str, GgufType] = {t.name: t for t in (
    _t("f32", "python", 0, "F32", 32.0, "32-bit floats: exact, largest"),
    _t("f16", "python", 1, "F16", 16.0, "16-bit floats: as good as the merged model for inference"),
    _t("bf16", "python", 32, "BF16", 16.0, "bfloat16: the range of f32, the size of f16"),
    _t("q8_0", "python", 7, "Q8_0", 8.5, "8-bit blocks: near-lossless, half of f16"),
    _t("q6_k", "llama.cpp", 18, None, 6.56, "6-bit k-quant (llama.cpp)"),
    _t("q5_k_m", "llama.cpp", 17, None, 5.70, "5-bit k-quant mix, medium (llama.cpp)"),
    _t("q5_k_s", "llama.cpp", 16, None, 5.52, "5-bit k-quant mix, small (llama.cpp)"),
    _t("q4_k_m", "llama.cpp", 15, None, 4.89, "4-bit k-quant mix, medium: the usual choice (llama.cpp)"),
    _t("q4_k_s", "llama.cpp", 14, None, 4.58, "4-bit k-quant mix, small (llama.cpp)"),
    _t("q3_k_m", "llama.cpp", 12, None, 3.91, "3-bit k-quant mix, medium (llama.cpp)"),
    _t("q2_k", "llama.cpp", 10, None, 3.00, "2-bit k-quant mix: smallest, lossy (llama.cpp)"),
)}
# A LoRA adapter is small and is added to the base at run time: only plain float types make sense.
ADAPTER_TYPES = ("f32", "f16", "bf16")
DEFAULT_TYPE = "q8_0"


def llama_cpp_available() -> bool:
    """Whether llama-cpp-python is installed (located, not imported: importing loads its shared library)."""
    try:
        return find_spec("llama_cpp") is not None
    except (ImportError, ValueError):
        return False


def available_types() -> list[str]:
    """The types this machine can write now: the Python ones always, llama.cpp's when it is installed."""
    return [t.name for t in GGUF_TYPES.values() if t.writer == "python" or llama_cpp_available()]


def gguf_type(name: str, *, adapter: bool = False) -> GgufType:
    """The type called ``name`` (case-insensitive); ``WorkbenchError`` naming the choices for any other, and for
    a llama.cpp type when llama-cpp-python is missing."""
    key = (name or "").strip().lower()
    allowed = list(ADAPTER_TYPES) if adapter else list(GGUF_TYPES)
    if key not in GGUF_TYPES or key not in allowed:
        what = "a GGUF adapter" if adapter else "a GGUF model"
        raise WorkbenchError(f"{name!r} is not a type {what} can be written in",
                             f"choose one of: {', '.join(allowed)}"
                             + ("" if adapter else " (k-quants need llama-cpp-python)"))
    t = GGUF_TYPES[key]
    if t.writer == "llama.cpp" and not llama_cpp_available():
        python_types = ", ".join(n for n, x in GGUF_TYPES.items() if x.writer == "python")
        raise WorkbenchError(
            f"type {t.label} is made by llama.cpp's quantizer, and llama-cpp-python is not installed; the gguf "
            "package can only write f32, f16, bf16 and q8_0 itself",
            f"install it (it compiles llama.cpp, about 10 minutes): pip install llama-cpp-python — or choose one of: "
            f"{python_types}",
        )
    return t
