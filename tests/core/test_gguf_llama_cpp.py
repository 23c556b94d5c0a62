"""GGUF exports checked by llama.cpp itself (llama-cpp-python, built from its source package): the files load,
tokenize like the Hugging Face tokenizer and compute the logits transformers computes for the merged model;
the GGUF adapter on the GGUF base equals the merged GGUF; the k-quant mixes come from llama.cpp's quantizer.

The last part is the round trip of issue 18 on the real built-in SmolLM2: the demo trained a few steps, exported
merged (F16, Q8_0) and as an adapter applied to the original Q4_1 file. The numbers it measures are printed
(``pytest -s``) and recorded in docs/benchmarks.md.

Without llama-cpp-python these tests are skipped; ``make test-gguf`` (and CI) installs it and sets
``WORKBENCH_REQUIRE_LLAMA_CPP=1``, which turns a missing package into a failure instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.core.control import RunControl
from workbench.core.events import ListSink, Progress
from workbench.core.gguf_export import export_gguf, export_gguf_adapter

# base_dir is a fixture: the tests below take it as a parameter, hence the F811 marks on them.
from test_gguf_export import LLAMA_ALL, base_dir, load_model, make_adapter, read_gguf, save_qwen3  # noqa: F401

if os.environ.get("WORKBENCH_REQUIRE_LLAMA_CPP") == "1":
    import llama_cpp
else:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make test-gguf installs it)")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TOKENS = [1, 5, 7, 9, 20, 30, 41, 2, 77, 150, 4, 8, 120, 60, 33, 201]


class Llama:
    """llama.cpp on one GGUF file (plus an adapter): logits of every position, greedy tokens, tokenization."""

    def __init__(self, path: Path, lora: Path | None = None, n_ctx: int = 512):
        self.llm = llama_cpp.Llama(model_path=str(path), lora_path=str(lora) if lora else None, logits_all=True,
                                   n_ctx=n_ctx, n_threads=2, n_batch=n_ctx, verbose=False)

    def logits(self, tokens: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(tokens)
        return np.array(self.llm.scores[: len(tokens)], dtype=np.float32)

    def greedy(self, tokens: list[int], n: int) -> list[int]:
        out = []
        for token in self.llm.generate(tokens, temp=0.0, top_k=1, reset=True):
            out.append(int(token))
            if len(out) == n or token == self.llm.token_eos():
                break
        return out

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def close(self) -> None:
        self.llm.close()


@pytest.fixture
def llama():
    opened: list[Llama] = []

    def open_(path: Path, lora: Path | None = None, **kw) -> Llama:
        opened.append(Llama(path, lora, **kw))
        return opened[-1]

    yield open_
    for m in opened:
        m.close()


@torch.no_grad()
def hf_logits(base: Path, adapter: Path | None, tokens: list[int]) -> np.ndarray:
    from peft import PeftModel

    model = load_model(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).eval()
    return model(torch.tensor([tokens])).logits[0].numpy()


def top1(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).mean())


# ----------------------------------------------------------------------------------------- tiny models


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3-head-dim-16"])
def test_llama_cpp_computes_the_merged_models_logits_and_tokenizes_alike(arch, base_dir, tmp_path, llama):  # noqa: F811
    from transformers import AutoTokenizer

    # head_dim 16 ≠ hidden / heads: llama.cpp must read attention.key_length (transformers' loader cannot)
    base = save_qwen3(tmp_path / "qwen3", head_dim=16) if arch == "qwen3-head-dim-16" else base_dir(arch)
    adapter = make_adapter(base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=LLAMA_ALL)
    expected = hf_logits(base, adapter, TOKENS)
    f32 = export_gguf(base, adapter, tmp_path / "f32", type_name="f32").gguf
    got = llama(f32).logits(TOKENS)
    assert np.abs(got - expected).max() < 2e-3 and top1(got, expected) == 1.0
    f16 = llama(export_gguf(base, adapter, tmp_path / "f16", type_name="f16").gguf).logits(TOKENS)
    assert np.abs(f16 - expected).max() < 5e-2
    tok = AutoTokenizer.from_pretrained(base)
    text = "The quick brown fox, 1234 jumps!\n  Paris? <|im_start|>user\nhi<|im_end|>"
    assert llama(f32).tokenize(text) == tok.encode(text, add_special_tokens=False)


def test_llama3_rope_scaling_is_written_as_llama_cpps_rope_freqs(tmp_path, llama):
    import tiny

    base = tiny.save_model("llama", tmp_path / "llama31", rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                          max_position_embeddings=512)
    expected = hf_logits(base, None, TOKENS * 4)
    path = export_gguf(base, None, tmp_path / "out", type_name="f32").gguf
    assert "rope_freqs.weight" in read_gguf(path)[1]
    got = llama(path).logits(TOKENS * 4)
    assert np.abs(got - expected).max() < 2e-3


@pytest.mark.parametrize("lora", [
    dict(r=4, lora_alpha=8, target_modules=LLAMA_ALL),
    dict(r=4, lora_alpha=8, target_modules=LLAMA_ALL, rank_pattern={"v_proj": 8, "down_proj": 2},
         alpha_pattern={"o_proj": 3, "q_proj": 16}),
    dict(r=8, lora_alpha=4, use_rslora=True, target_modules=["q_proj", "k_proj", "embed_tokens", "lm_head"]),
], ids=["plain", "rank-alpha-patterns", "rslora-embedding-lm-head"])
def test_gguf_adapter_on_the_gguf_base_equals_the_merged_gguf_in_llama_cpp(lora, base_dir, tmp_path, llama):  # noqa: F811
    base = base_dir("llama")
    adapter = make_adapter(base, tmp_path / "adapter", **lora)
    base_gguf = export_gguf(base, None, tmp_path / "base", type_name="f32").gguf
    merged = export_gguf(base, adapter, tmp_path / "merged", type_name="f32").gguf
    result = export_gguf_adapter(adapter, base, tmp_path / "adapter-gguf", base_gguf=base_gguf)
    assert f"--lora {result.gguf}" in result.instructions
    with_adapter = llama(base_gguf, result.gguf).logits(TOKENS)
    np.testing.assert_allclose(with_adapter, llama(merged).logits(TOKENS), atol=2e-3, rtol=0)
    np.testing.assert_allclose(with_adapter, hf_logits(base, adapter, TOKENS), atol=2e-3, rtol=0)


@pytest.mark.parametrize("type_name, file_type, k_types", [("q4_k_m", 15, {"Q4_K", "Q6_K"}), ("q6_k", 18, {"Q6_K"}),
                                                            ("q5_k_m", 17, {"Q5_K", "Q6_K"})])
def test_k_quants_are_made_by_llama_cpps_quantizer(type_name, file_type, k_types, tmp_path, llama):
    """A model wide enough for k-quant blocks of 256: llama.cpp picks the per-tensor types of the mix."""
    import tiny

    base = tiny.save_model("llama", tmp_path / "wide", hidden_size=256, intermediate_size=512, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=64)
    sink = ListSink()
    result = export_gguf(base, None, tmp_path / "out", type_name=type_name, sink=sink)
    assert sorted(p.name for p in result.output.iterdir()) == ["README.md", f"model-{type_name.upper()}.gguf"], \
        "no intermediate left"
    meta, _, types = read_gguf(result.gguf)
    assert meta["general.file_type"] == file_type
    assert k_types <= set(types.values()), types
    assert {e.task for e in sink.of(Progress)} == {"gguf", "quantize"}
    expected = hf_logits(base, None, TOKENS)
    got = llama(result.gguf).logits(TOKENS)
    # a random model's logits are nearly flat, so 4-bit noise flips many argmaxes: compare the whole logit vectors
    print(f"\n{type_name}: top-1 {top1(got, expected):.2f}, logit correlation {np.corrcoef(got.ravel(), expected.ravel())[0, 1]:.4f}")
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.98


def test_stop_during_llama_cpp_quantization_leaves_nothing(tmp_path, tiny_model_dir):
    control = RunControl()

    def sink(event):
        if isinstance(event, Progress) and event.task == "quantize":
            control.request_stop()

    result = export_gguf(tiny_model_dir("llama"), None, tmp_path / "out", type_name="q4_k_m", sink=sink, control=control)
    assert result.stopped and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------- the built-in SmolLM2, trained


@pytest.fixture(scope="module")
def trained_demo(smollm2, tmp_path_factory, monkeypatch_module):
    """The demo run trained for 3 steps on the built-in SmolLM2 (short sequences, no evaluation or samples)."""
    from workbench.core.cache import CACHE_ENV
    from workbench.core.demo import demo_config
    from workbench.core.training import run

    monkeypatch_module.setenv(CACHE_ENV, str(tmp_path_factory.getbasetemp() / "workbench-cache"))
    config = demo_config(["training.max_steps=3", "data.max_length=96", "data.validation_files=[]",
                                  "training.sample_prompts=[]", "training.learning_rate=0.003"])
    result = run(config, run_dir=tmp_path_factory.mktemp("demo") / "run")
    assert result.status == "finished"
    return result.run_dir


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def demo_conversations() -> list[list[dict[str, str]]]:
    from workbench.core.demo import resources_dir

    rows = [json.loads(line) for line in (resources_dir() / "demo" / "validation.jsonl").read_text().splitlines()[:6]]
    return [r["messages"] for r in rows]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 3 training steps of a 135M model, three exports and four models on 2 shared cores
def test_round_trip_on_the_builtin_smollm2(trained_demo, smollm2, tmp_path, llama):
    from transformers import AutoTokenizer

    from workbench.core import builtin
    from workbench.core.gguf_export.templates import PROBES

    import gotemplate

    tok = AutoTokenizer.from_pretrained(smollm2)
    sequences = [tok.apply_chat_template(c, tokenize=False) for c in demo_conversations()]
    token_lists = [tok(s, add_special_tokens=False)["input_ids"] for s in sequences]
    expected = [hf_logits(smollm2, trained_demo / "adapter", t) for t in token_lists]

    f16 = export_gguf(smollm2, trained_demo, tmp_path / "f16", type_name="f16", ollama=True)
    q8 = export_gguf(smollm2, trained_demo, tmp_path / "q8_0", type_name="q8_0")
    adapter = export_gguf_adapter(trained_demo, smollm2, tmp_path / "adapter", ollama=True)
    original = builtin.find_builtin_gguf()

    report = {}
    for name, path, lora in (("f16", f16.gguf, None), ("q8_0", q8.gguf, None), ("q4_1+adapter", original, adapter.gguf)):
        model = llama(path, lora)
        assert all(model.tokenize(s) == t for s, t in zip(sequences, token_lists)), f"{name}: tokens differ"
        got = [model.logits(t) for t in token_lists]
        report[name] = {"top1": float(np.mean(np.concatenate([g.argmax(-1) == e.argmax(-1) for g, e in zip(got, expected)]))),
                        "max_abs_delta_logit": float(max(np.abs(g - e).max() for g, e in zip(got, expected))),
                        "positions": int(sum(len(t) for t in token_lists))}
    # greedy answers to the demo's own prompts: the adapter on the original Q4_1 file against the merged GGUF
    prompts = [tok.apply_chat_template(c[:1], tokenize=False, add_generation_prompt=True) for c in demo_conversations()[:3]]
    prompt_tokens = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    merged_model, adapted_model = llama(f16.gguf), llama(original, adapter.gguf)
    greedy = [(merged_model.greedy(t, 24), adapted_model.greedy(t, 24)) for t in prompt_tokens]
    report["greedy_equal"] = [m == a for m, a in greedy]
    # transformers' own GGUF loader reads the merged F16 file back
    back = load_model(f16.gguf.parent, gguf_file=f16.gguf.name, dtype=torch.float32)
    with torch.no_grad():
        back_logits = [back(torch.tensor([t])).logits[0].numpy() for t in token_lists]
    report["transformers_f16"] = {"top1": float(np.mean(np.concatenate([b.argmax(-1) == e.argmax(-1) for b, e in zip(back_logits, expected)]))),
                                  "max_abs_delta_logit": float(max(np.abs(b - e).max() for b, e in zip(back_logits, expected)))}
    print("\nGGUF round trip on SmolLM2-135M-Instruct (demo, 3 steps):", json.dumps(report, indent=2))

    assert report["f16"]["top1"] >= 0.99 and report["f16"]["max_abs_delta_logit"] < 0.5
    assert report["q8_0"]["top1"] >= 0.95
    assert all(report["greedy_equal"]), greedy
    assert report["transformers_f16"]["top1"] >= 0.99 and report["transformers_f16"]["max_abs_delta_logit"] < 0.5

    # the chat template: in the GGUF (rendered by llama-cpp-python's own Jinja formatter) and in the Modelfile
    # (rendered by Go's text/template, as Ollama does) the two-turn prompt is the tokenizer's
    two_turn = [dict(m) for m in PROBES[1]]
    wanted = tok.apply_chat_template(two_turn, tokenize=False, add_generation_prompt=True)
    meta, _, _ = read_gguf(f16.gguf)
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(meta["tokenizer.chat_template"], eos_token=tok.eos_token, bos_token=tok.bos_token or "",
                                    add_generation_prompt=True)
    assert formatter(messages=two_turn).prompt == wanted
    if gotemplate.available() or os.environ.get("WORKBENCH_REQUIRE_GO") == "1":
        for result in (f16, adapter):
            modelfile = gotemplate.parse_modelfile(result.modelfile.read_text())
            system = modelfile.get("SYSTEM", [None])[0]
            prompt = gotemplate.render(modelfile["TEMPLATE"][0], [gotemplate.ollama_messages(two_turn, system)])[0]
            assert prompt == wanted
        assert gotemplate.parse_modelfile(adapter.modelfile.read_text())["FROM"] == [str(original.resolve())]
