"""``training.compile = "blocks"``: each decoder block's forward through ``torch.compile`` (dynamic shapes: packed
rows vary in length), with the engine's own autograd nodes kept as they are, and eager training whenever the
compiler fails.

The fused LoRA linears, gated MLPs and RMSNorms (core/lora_forward.py) are custom autograd Functions that draw
dropout masks from a private generator, carry a norm's input on its output tensor and call ``torch.autograd.grad``
in their backward pass. Traced by Dynamo they crashed it (torch 2.13: an ``AssertionError`` inside
``lift_tracked_freevar_to_input``). So each of them runs behind ``torch.compiler.disable``: Dynamo breaks the graph
there and calls it eagerly, exactly as without compiling, and compiles what lies between (rotary embeddings,
residual adds, reshapes). The lean attention (core/lean_attention.py) reads the mask's segments from its data
(``torch.equal``, ``nonzero``): Dynamo breaks the graph there by itself and runs it eagerly too. So the loss and
the gradients are the eager path's (tests/core/test_compiled_blocks.py), and what compiling can win is only the
elementwise work between the nodes — measured in docs/benchmarks.md, where it does not pay on a CPU.

Before the first block is compiled, a two-op function is compiled forward and backward: without a working C
compiler (or an inductor that cannot build here) that fails in a second, and the run trains eagerly with a
warning. A block whose compiled call fails later (an op the compiler cannot take, a recompilation that breaks) is
called again eagerly; if the eager call succeeds the compiler was at fault, every block goes back to eager for the
rest of the run and a warning says why. If the eager call fails too, that error is the run's (a real fault in the
model or the data), raised as it would be without compiling. Out-of-memory errors are raised at once: the
engine's retry (faults.OutOfMemory) handles them.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import first_line
from ..events import Message, Sink
from . import faults

__all__ = ["compile_blocks", "decoder_blocks", "compiler_problem"]

_SETTING = "training.compile = 'blocks'"


def compile_blocks(model: Any, sink: Sink) -> int:
    """Compile each decoder block of ``model`` (a PEFT model, LoRA already applied and the engine's forwards already
    installed); returns how many blocks were compiled (0: training eager, with a warning saying why)."""
    blocks = decoder_blocks(model)
    if not blocks:
        sink.emit(Message(f"{_SETTING}: this model has no decoder blocks to compile one by one; training eager",
                          level="warning"))
        return 0
    problem = compiler_problem()
    if problem is not None:
        sink.emit(Message(f"{_SETTING}: torch.compile does not work here ({problem}); training eager", level="warning"))
        return 0
    _CompiledBlocks(blocks, _engine_nodes(model), sink).install()
    sink.emit(Message(f"{_SETTING}: {len(blocks)} decoder blocks compiled with torch.compile (dynamic shapes); the "
                      "first steps include the compilation"))
    return len(blocks)


def decoder_blocks(model: Any) -> list[Any]:
    """The outermost ``GradientCheckpointingLayer`` modules: transformers' decoder (and encoder) blocks."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    blocks: list[Any] = []
    inside: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, GradientCheckpointingLayer) and not any(name.startswith(p + ".") for p in inside):
            blocks.append(module)
            inside.append(name)
    return blocks


def compiler_problem() -> str | None:
    """None when torch.compile builds and runs a function forward and backward here; else the first line of why not."""
    import torch

    try:
        probe = torch.compile(_probe, dynamic=True)
        probe(torch.ones(3, requires_grad=True)).backward()
    except Exception as exc:  # noqa: BLE001 — whatever the compiler raises, the run trains eagerly instead
        return _reason(exc)
    return None


def _reason(exc: BaseException) -> str:
    """The compiler's own error: torch wraps it (BackendCompilerFailed), and the wrapper's first line says little."""
    cause = exc.__cause__ or exc
    return f"{type(cause).__name__}: {first_line(cause)}"


def _probe(x: Any) -> Any:
    return (x.sin() * 2).sum()


def _engine_nodes(model: Any) -> list[Any]:
    """The modules whose forward core/lora_forward.py replaced: they run eagerly inside the compiled blocks."""
    from ..lora_forward import fused_forward_modules

    return fused_forward_modules(model)


class _CompiledBlocks:
    """The compiled forwards of one model's blocks, and the way back to eager for all of them at once."""

    def __init__(self, blocks: list[Any], nodes: list[Any], sink: Sink):
        self.blocks, self.nodes, self.sink = blocks, nodes, sink
        self.eager = False
        self.node_forwards: list[Callable] = []

    def install(self) -> None:
        import torch

        for node in self.nodes:
            self.node_forwards.append(node.forward)  # the engine's bound forward (an instance attribute)
            node.forward = torch.compiler.disable(node.forward)
        for block in self.blocks:
            # The bound forward, compiled; the module is not wrapped, so state-dict keys (and PEFT's saved
            # adapter) stay as they are, without torch.compile's "_orig_mod." prefix.
            eager = block.forward
            block.forward = self._guarded(eager, torch.compile(eager, dynamic=True))

    def _guarded(self, eager: Callable, compiled: Callable) -> Callable:
        def forward(*args: Any, **kwargs: Any) -> Any:
            if self.eager:
                return eager(*args, **kwargs)
            try:
                return compiled(*args, **kwargs)
            except Exception as exc:
                if faults.is_out_of_memory(exc):
                    raise
                out = eager(*args, **kwargs)  # raises again if the fault is the model's or the data's, not the compiler's
                self.fall_back(exc)
                return out

        return forward

    def fall_back(self, exc: BaseException) -> None:
        self.eager = True
        for block in self.blocks:
            del block.forward  # the class's forward shows through again
        for node, engine_forward in zip(self.nodes, self.node_forwards):
            node.forward = engine_forward  # without the compiler's disable wrapper
        self.sink.emit(Message(f"{_SETTING}: compiling a block failed ({_reason(exc)}); "
                               "training on eagerly", level="warning"))
