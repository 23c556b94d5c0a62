"""core/training/compiled.py (``training.compile = "blocks"``): compiled decoder blocks give the eager loss and LoRA
gradients with the engine's own autograd nodes still in the graph, a compiled run saves PEFT's key names, and a
compiler that cannot build (here: a C++ compiler path that does not exist, a real inductor failure) leaves the run
training eagerly with a warning."""

from __future__ import annotations

import contextlib
import functools
import json

import pytest
import tiny
import torch
from peft import LoraConfig, get_peft_model
from safetensors import safe_open

from workbench.core import events as ev
from workbench.core.config import RunConfig
from workbench.core.lean_attention import install_lean_attention
from workbench.core.lora_forward import install_fused_lora_forward
from workbench.core.training import run
from workbench.core.training.compiled import compile_blocks, decoder_blocks

pytestmark = pytest.mark.slow  # each compiles (or fails to compile) a tiny model's blocks: 10–40 s on 2 cores


@pytest.fixture(autouse=True)
def fresh_compiler():
    """Dynamo's in-memory cache would serve a block (or the probe) compiled by an earlier test: each test compiles anew."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def broken_compiler(monkeypatch, tmp_path):
    """Call it to point inductor at a C++ compiler that does not exist, with nothing cached that could spare it
    compiling; undone after the test, with inductor's own memo of the compiler it found forgotten both ways."""
    with contextlib.ExitStack() as undo:

        def break_now() -> None:
            forget_compiler_checks()
            monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor-cache"))
            undo.enter_context(torch._inductor.config.patch(
                {"force_disable_caches": True, "cpp.cxx": (str(tmp_path / "no-such-c++"),)}))

        yield break_now
    forget_compiler_checks()


def forget_compiler_checks() -> None:
    """inductor memoizes what it found out about the C++ compiler (functools caches in cpp_builder)."""
    from torch._inductor import cpp_builder

    for value in list(vars(cpp_builder).values()):
        if isinstance(value, functools._lru_cache_wrapper):  # functools.cache and lru_cache both make one
            value.cache_clear()


def engine_model(dropout: float):
    model = tiny.make_model("llama", initializer_range=0.3)
    model.config.use_cache = False
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout,
                                                  target_modules="all-linear", task_type="CAUSAL_LM"))
    torch.manual_seed(1)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)  # B = 0 at init: A's gradients would be zero
    assert install_fused_lora_forward(peft_model) > 0 and install_lean_attention(peft_model)
    return peft_model.train()


def packed_batch(lengths: list[int]) -> dict:
    """One packed row of examples of these lengths (restarting position ids: the engine's block-causal attention)."""
    ids = torch.randint(0, 300, (1, sum(lengths)), generator=torch.Generator().manual_seed(sum(lengths)))
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    return {"input_ids": ids, "position_ids": positions, "labels": ids}


def loss_and_grads(model, batch):
    model.zero_grad()
    torch.manual_seed(3)  # the same dropout masks on both paths
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, loss.grad_fn


def autograd_node_names(root) -> set[str]:
    seen, todo, names = set(), [root], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo.extend(next_node for next_node, _ in node.next_functions)
    return names


def test_compiled_blocks_give_the_eager_loss_and_lora_gradients():
    model = engine_model(dropout=0.05)
    batches = [packed_batch([15, 25]), packed_batch([7, 30, 11])]  # two lengths: one dynamic-shape graph for both
    eager = [loss_and_grads(model, b)[:2] for b in batches]
    sink = ev.ListSink()
    torch._dynamo.utils.counters.clear()
    assert compile_blocks(model, sink) == len(decoder_blocks(model)) == 2
    for (eager_loss, eager_grads), batch in zip(eager, batches):
        loss, grads, grad_fn = loss_and_grads(model, batch)
        torch.testing.assert_close(loss, eager_loss, rtol=1e-6, atol=1e-6)
        assert grads.keys() == eager_grads.keys()
        for name in grads:
            torch.testing.assert_close(grads[name], eager_grads[name], rtol=1e-5, atol=1e-7, msg=name)
        # the engine's nodes (core/lora_forward.py) still carry the LoRA linears, and compiled graphs run between them
        names = autograd_node_names(grad_fn)
        assert {"_LoraLinearBackward", "_GatedLoraLinearBackward"} <= names, names
        assert "CompiledFunctionBackward" in names, names
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    # Graph breaks, where the engine's nodes and the attention's data-dependent segments run eagerly: counted, bounded
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    assert 0 < breaks < 100, dict(torch._dynamo.utils.counters["graph_break"])
    assert not [e for e in sink.of(ev.Message) if e.level == "warning"]
    assert not [k for k in model.state_dict() if "_orig_mod" in k]


def test_a_block_whose_compilation_fails_trains_on_eagerly(broken_compiler):
    model = engine_model(dropout=0.0)
    batch = packed_batch([12, 20])
    eager_loss, eager_grads, _ = loss_and_grads(model, batch)
    sink = ev.ListSink()
    blocks = decoder_blocks(model)
    assert compile_blocks(model, sink) == 2  # the probe passes: compiling fails only later, for the blocks' own graphs
    broken_compiler()
    loss, grads, _ = loss_and_grads(model, batch)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-6, atol=1e-6)
    for name in grads:
        torch.testing.assert_close(grads[name], eager_grads[name], rtol=1e-5, atol=1e-7, msg=name)
    warnings = [e.text for e in sink.of(ev.Message) if e.level == "warning"]
    assert len(warnings) == 1 and "compiling a block failed" in warnings[0] and "training on eagerly" in warnings[0]
    assert all("forward" not in vars(block) for block in blocks)  # the class's forward again, for every block
    loss_and_grads(model, batch)  # and it stays eager: no second warning
    assert len([e for e in sink.of(ev.Message) if e.level == "warning"]) == 1


def make_config(model_dir, tmp_path, compile_setting: str, name: str) -> RunConfig:
    data = tmp_path / "facts.jsonl"
    rows = [("What is the capital of France?", "Paris."), ("Two plus two?", "Four."),
            ("Translate cat to French.", "chat"), ("Colour of the sky?", "Blue.")]
    data.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in rows))
    return RunConfig.from_dict({
        "model": {"source": str(model_dir)},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "preset": "all-linear"},
        "data": {"train_files": [str(data)], "max_length": 64},
        "training": {"max_steps": 3, "learning_rate": 1e-2, "batch_size": 2, "warmup_ratio": 0.0, "device": "cpu",
                     "scheduler": "constant", "logging_steps": 1, "compile": compile_setting},
        "output": {"runs_root": str(tmp_path / "runs"), "name": name},
    })


def adapter_keys(run_dir) -> list[str]:
    with safe_open(str(run_dir / "adapter" / "adapter_model.safetensors"), "pt") as f:
        return sorted(f.keys())


def test_a_compiled_run_trains_the_eager_curve_and_saves_pefts_key_names(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("llama", initializer_range=0.3)
    eager_sink, compiled_sink = ev.ListSink(), ev.ListSink()
    eager = run(make_config(model_dir, tmp_path, "off", "eager"), eager_sink)
    compiled = run(make_config(model_dir, tmp_path, "blocks", "compiled"), compiled_sink)
    assert compiled.status == "finished" and compiled.final_step == 3
    messages = [e for e in compiled_sink.of(ev.Message) if "training.compile" in e.text]
    assert [m.level for m in messages] == ["info"] and "2 decoder blocks compiled" in messages[0].text, [m.text for m in messages]
    eager_losses = [e.loss for e in eager_sink.of(ev.Step)]
    compiled_losses = [e.loss for e in compiled_sink.of(ev.Step)]
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-5, abs=1e-6)
    keys = adapter_keys(compiled.run_dir)
    assert keys == adapter_keys(eager.run_dir) and not [k for k in keys if "_orig_mod" in k]
    assert all(k.startswith("base_model.model.") and (".lora_A." in k or ".lora_B." in k) for k in keys), keys
    assert RunConfig.from_toml(compiled.run_dir / "run.toml").training.compile == "blocks"


def test_without_a_working_compiler_the_run_trains_eagerly_with_a_warning(tiny_model_dir, tmp_path, broken_compiler):
    broken_compiler()
    sink = ev.ListSink()
    result = run(make_config(tiny_model_dir("llama", initializer_range=0.3), tmp_path, "blocks", "no-compiler"), sink)
    assert result.status == "finished" and result.final_step == 3
    warnings = [e.text for e in sink.of(ev.Message) if e.level == "warning" and "training.compile" in e.text]
    assert len(warnings) == 1 and "torch.compile does not work here" in warnings[0] and "training eager" in warnings[0]
    assert len(sink.of(ev.Step)) == 3
