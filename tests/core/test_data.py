"""Data loading, format detection, rendering, loss masks, truncation, packing, caching and bad-data reporting.

Expected values are written out by hand (texts, templates) or computed by the model on unpacked rows; the
labelled tokens are decoded and compared with the text that must be trained on.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiny
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from workbench.core import data
from workbench.core.data import formats, packing, rendering
from workbench.core.config import DataConfig
from workbench.core.errors import DataError
from workbench.core.events import ListSink, Message

EOS = "<|endoftext|>"


@pytest.fixture(scope="module")
def tok():
    return tiny.make_tokenizer()


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def config(*files: Path, **kw) -> DataConfig:
    return DataConfig(train_files=[str(f) for f in files], **kw)


def trained_text(tok, row) -> str:
    return tok.decode([t for t in row["labels"] if t != -100])


def trained_runs(tok, row) -> list[str]:
    """Each maximal run of consecutive trained tokens, decoded."""
    runs, current = [], []
    for label in row["labels"] + [-100]:
        if label != -100:
            current.append(label)
        elif current:
            runs.append(tok.decode(current))
            current = []
    return runs


def pc_rows(n: int) -> list[dict]:
    return [{"prompt": f"Question: what is {i} plus two? Answer:", "completion": f" {i + 2}, of course."}
            for i in range(n)]


CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And two plus two?"},
    {"role": "assistant", "content": "Four."},
]


# ------------------------------------------------------------------------------- files and formats


def test_each_file_type_and_format_is_detected_and_loaded(tmp_path, tok):
    pc = write_jsonl(tmp_path / "pc.jsonl", pc_rows(3))
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "Add.", "input": "2 and 2", "output": "4"},
                                  {"instruction": "Say hi.", "output": "hi"}]), encoding="utf-8")
    lines_json = write_jsonl(tmp_path / "lines.json", [{"text": "one"}, {"text": "two"}])
    with open(tmp_path / "qa.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["question", "answer"])
        writer.writerow(["What is\ntwo plus two?", " four"])  # a quoted value spanning two lines
        writer.writerow(["Capital of France?", " Paris"])
    pq.write_table(pa.Table.from_pylist([{"messages": CHAT}, {"messages": CHAT[1:3]}]), tmp_path / "chat.parquet")
    (tmp_path / "notes.txt").write_text("First paragraph,\nstill the first.\n\n\nSecond paragraph.\n", encoding="utf-8")
    sharegpt = [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}] * 2
    datasets.Dataset.from_list(sharegpt).save_to_disk(str(tmp_path / "saved"))

    cases = [
        (config(pc), "prompt-completion", {"prompt": "prompt", "completion": "completion"}, 3),
        (config(alpaca), "alpaca", {"instruction": "instruction", "output": "output", "input": "input"}, 2),
        (config(lines_json), "text", {"text": "text"}, 2),
        (config(tmp_path / "qa.csv", columns={"prompt": "question", "completion": "answer"}),
         "prompt-completion", {"prompt": "question", "completion": "answer"}, 2),
        (config(tmp_path / "chat.parquet"), "chat", {"messages": "messages"}, 2),
        (config(tmp_path / "notes.txt"), "text", {"text": "text"}, 2),
        (config(tmp_path / "saved"), "sharegpt", {"conversations": "conversations"}, 2),
    ]
    for cfg, fmt, mapping, rows in cases:
        info = data.detect(cfg)
        assert (info.format, info.mapping, info.train_rows) == (fmt, mapping, rows), cfg.train_files
        raw = data.load_raw(cfg, cache_dir=tmp_path / "cache")
        assert (raw.format, len(raw.train)) == (fmt, rows)

    first = data.load_raw(cases[3][0], cache_dir=tmp_path / "cache").train[0]
    assert (first["prompt"], first["completion"], first["_row"]) == ("What is\ntwo plus two?", " four", 2)
    notes = data.load_raw(cases[5][0], cache_dir=tmp_path / "cache").train
    assert list(notes["text"]) == ["First paragraph,\nstill the first.", "Second paragraph."]
    assert list(notes["_row"]) == [1, 5]
    assert data.load_raw(cases[6][0], cache_dir=tmp_path / "cache").train[0]["messages"] == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert data.detect(cases[1][0]).samples[1] == {"instruction": "Say hi.", "output": "hi"}


def test_several_files_are_concatenated_and_formats_must_agree(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", pc_rows(2))
    b = write_jsonl(tmp_path / "b.jsonl", pc_rows(3))
    text = write_jsonl(tmp_path / "t.jsonl", [{"text": "hello"}])
    info = data.detect(config(a, b))
    assert [f.rows for f in info.train_files] == [2, 3] and info.train_rows == 5
    raw = data.load_raw(config(a, b), cache_dir=tmp_path / "cache")
    assert list(raw.train["_source"]) == [0, 0, 1, 1, 1]
    with pytest.raises(DataError, match=r"t\.jsonl holds text rows but the first training file holds prompt-"):
        data.load_raw(config(a, text), cache_dir=tmp_path / "cache")


def test_format_override_and_unknown_columns(tmp_path):
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"q": "2+2?", "a": "4"}])
    with pytest.raises(DataError, match=r"qa\.jsonl: cannot tell the data format from the columns: q, a") as err:
        data.detect(config(qa))
    assert "data.columns" in err.value.hint
    info = data.detect(config(qa, format="prompt-completion", columns={"prompt": "q", "completion": "a"}))
    assert info.mapping == {"prompt": "q", "completion": "a"}
    with pytest.raises(DataError, match="unknown role 'question'"):
        data.detect(config(qa, columns={"question": "q"}))
    with pytest.raises(DataError, match="role 'prompt' does not belong to the chat format"):
        data.detect(config(qa, format="chat", columns={"prompt": "q"}))


# ------------------------------------------------------------------------------ rendering and labels


def test_prompt_completion_labels_are_exactly_the_completion_and_eos(tmp_path, tok):
    rows = pc_rows(4)
    prepared = data.prepare(config(write_jsonl(tmp_path / "pc.jsonl", rows), packing=False), tok,
                            cache_dir=tmp_path / "cache")
    assert prepared.format == "prompt-completion" and not prepared.packed
    for row, expected in zip(prepared.train, rows):
        assert tok.decode(row["input_ids"]) == expected["prompt"] + expected["completion"] + EOS
        assert trained_text(tok, row) == expected["completion"] + EOS
        untrained = [t for t, label in zip(row["input_ids"], row["labels"]) if label == -100]
        assert tok.decode(untrained) == expected["prompt"]
        assert row["length"] == len(row["input_ids"])


def test_alpaca_classic_uses_the_standard_template(tmp_path, tok):
    rows = [{"instruction": "Add the numbers.", "input": "2 and 2", "output": "four"},
            {"instruction": "Name the capital of France.", "input": "", "output": "Paris"}]
    prepared = data.prepare(config(write_jsonl(tmp_path / "a.jsonl", rows), packing=False,
                                   alpaca_template="classic"), tok, cache_dir=tmp_path / "cache")
    with_input, without_input = prepared.train
    assert tok.decode(with_input["input_ids"]) == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 2\n\n### Response:\nfour" + EOS)
    assert tok.decode(without_input["input_ids"]) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nName the capital of France.\n\n### Response:\nParis" + EOS)
    assert trained_text(tok, with_input) == "four" + EOS
    assert trained_text(tok, without_input) == "Paris" + EOS


def test_chat_labels_are_exactly_the_assistant_turns(tmp_path, tok):
    prepared = data.prepare(config(write_jsonl(tmp_path / "c.jsonl", [{"messages": CHAT}]), packing=False), tok,
                            cache_dir=tmp_path / "cache")
    row = prepared.train[0]
    assert tok.decode(row["input_ids"]) == tok.apply_chat_template(CHAT, tokenize=False)
    assert trained_runs(tok, row) == ["Paris.<|im_end|>\n", "Four.<|im_end|>\n"]


def test_sharegpt_renders_like_the_same_chat(tmp_path, tok):
    speakers = {"system": "system", "user": "human", "assistant": "gpt"}
    conversations = [{"from": speakers[m["role"]], "value": m["content"]} for m in CHAT]
    chat = data.prepare(config(write_jsonl(tmp_path / "c.jsonl", [{"messages": CHAT}]), packing=False), tok,
                        cache_dir=tmp_path / "cache")
    share = data.prepare(config(write_jsonl(tmp_path / "s.jsonl", [{"conversations": conversations}]),
                                packing=False), tok, cache_dir=tmp_path / "cache")
    assert share.format == "sharegpt"
    assert share.train[0] == chat.train[0]


def test_chat_template_fallback_and_override(tmp_path, tok):
    plain = tiny.make_tokenizer()
    plain.chat_template = None
    file = write_jsonl(tmp_path / "c.jsonl", [{"messages": CHAT}])
    fallback = data.prepare(config(file, packing=False), plain, cache_dir=tmp_path / "cache").train[0]
    assert tok.decode(fallback["input_ids"]) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\nParis.<|im_end|>\n<|im_start|>user\nAnd two plus two?<|im_end|>\n"
        "<|im_start|>assistant\nFour.<|im_end|>\n")
    assert trained_runs(tok, fallback) == ["Paris.<|im_end|>\n", "Four.<|im_end|>\n"]

    template = ("{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}### assistant: {% endif %}")
    custom = data.prepare(config(file, packing=False, chat_template=template), tok, cache_dir=tmp_path / "cache")
    row = custom.train[0]
    assert tok.decode(row["input_ids"]).startswith("### system: Be brief.\n### user: What is")
    assert trained_runs(tok, row) == ["Paris.\n", "Four.\n"]
    with pytest.raises(DataError, match="data.chat_template: not a valid Jinja template"):
        data.prepare(config(file, chat_template="{% for m in messages %}"), tok, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("variant", ["adds-bos", "trims-offsets"])
def test_labels_stay_exact_with_bos_and_trimmed_offsets(variant, tmp_path):
    """Llama-style tokenizers add a BOS with no text; GPT-2-style ones may trim whitespace out of offsets,
    leaving whitespace tokens with an empty range. Neither may change what is trained."""
    from tokenizers import processors

    tok = tiny.make_tokenizer()
    bos = "<|im_start|>"
    if variant == "adds-bos":
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, tok.convert_tokens_to_ids(bos))])
    else:
        tok.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    prefix = bos if variant == "adds-bos" else ""
    row = {"prompt": "Question: what is two plus two? Answer:", "completion": " four,  and  not five. "}
    file = write_jsonl(tmp_path / "pc.jsonl", [row])
    prepared = data.prepare(config(file, packing=False), tok, cache_dir=tmp_path / "cache").train[0]
    assert tok.decode(prepared["input_ids"]) == prefix + row["prompt"] + row["completion"] + EOS
    assert trained_text(tok, prepared) == row["completion"] + EOS
    assert data.preview(config(file), tok)[0].segments == [
        (prefix + row["prompt"], False), (row["completion"] + EOS, True)]

    chat = write_jsonl(tmp_path / "c.jsonl", [{"messages": CHAT}])
    prepared = data.prepare(config(chat, packing=False), tok, cache_dir=tmp_path / "cache").train[0]
    assert trained_runs(tok, prepared) == ["Paris.<|im_end|>\n", "Four.<|im_end|>\n"]


def test_train_on_all_trains_every_token_but_the_first(tmp_path, tok):
    for rows in (pc_rows(2), [{"messages": CHAT}]):
        file = write_jsonl(tmp_path / f"{len(rows)}.jsonl", rows)
        for row in data.prepare(config(file, packing=False, train_on="all"), tok, cache_dir=tmp_path / "c").train:
            assert row["labels"] == [-100] + row["input_ids"][1:]


def test_text_format_trains_on_the_whole_text(tmp_path, tok):
    (tmp_path / "t.txt").write_text("Paris is the capital of France.\n\nThe quick brown fox.\n", encoding="utf-8")
    prepared = data.prepare(config(tmp_path / "t.txt", packing=False), tok, cache_dir=tmp_path / "cache")
    for row, text in zip(prepared.train, ["Paris is the capital of France.", "The quick brown fox."]):
        assert tok.decode(row["input_ids"]) == text + EOS
        assert tok.decode(row["input_ids"][0]) + trained_text(tok, row) == text + EOS


# --------------------------------------------------------------------------------- truncation, stats


def test_truncation_is_counted_and_examples_without_loss_are_dropped(tmp_path, tok):
    short = {"prompt": "Hi", "completion": " there"}
    long = {"prompt": "Question: " + "the quick brown fox " * 3,
            "completion": " jumps over the lazy dog and runs far away into the deep dark forest"}
    no_room = {"prompt": "Question: " + "the quick brown fox " * 10, "completion": " four"}
    sink = ListSink()
    lengths = [len(tok(r["prompt"] + r["completion"])["input_ids"]) + 1 for r in (short, long, no_room)]
    max_length = lengths[1] - 20  # cuts the long example inside its completion, the other one in its prompt
    prepared = data.prepare(config(write_jsonl(tmp_path / "d.jsonl", [short, long, no_room]), max_length=max_length,
                                   packing=False), tok, sink=sink, cache_dir=tmp_path / "cache")
    stats = prepared.stats
    assert (stats.examples, stats.rows, stats.truncated, stats.without_loss) == (2, 2, 1, 1)
    assert stats.truncated_share == 0.5
    kept_short, kept_long = prepared.train
    assert kept_long["length"] == max_length and EOS not in trained_text(tok, kept_long)
    assert long["completion"].startswith(trained_text(tok, kept_long))
    assert stats.tokens == lengths[0] + max_length
    assert stats.loss_tokens == sum(sum(t != -100 for t in r["labels"]) for r in prepared.train)
    assert stats.loss_share == stats.loss_tokens / stats.tokens
    histogram = stats.length_histogram  # of the lengths before truncation, of the examples kept

    def count_in_bin_of(n: int) -> int:
        return histogram.counts[max(i for i, low in enumerate(histogram.edges[:-1]) if low <= n)]

    assert histogram.edges[0] == 0 and histogram.edges[-1] >= lengths[1] and sum(histogram.counts) == 2
    assert count_in_bin_of(lengths[0]) == count_in_bin_of(lengths[1]) == 1
    assert any("1 train examples were dropped" in e.text for e in sink.of(Message))


# ------------------------------------------------------------------------------------------- packing


@pytest.fixture(scope="module")
def packed_and_padded(tmp_path_factory):
    """The same 12 examples of varied lengths, packed into rows of ≤ 64 tokens and unpacked."""
    tmp = tmp_path_factory.mktemp("pack")
    rows = [{"prompt": f"Question {i}: " + "what is two plus two? " * (i % 4), "completion": f" Answer {i}: four."}
            for i in range(12)]
    file = write_jsonl(tmp / "d.jsonl", rows)
    tok = tiny.make_tokenizer()
    packed = data.prepare(config(file, max_length=64), tok, model_type="llama", cache_dir=tmp / "cache")
    padded = data.prepare(config(file, max_length=64, packing=False), tok, cache_dir=tmp / "cache")
    return packed, padded


def examples_in(rows) -> dict[tuple, list[int]]:
    """{input ids of an example: its labels}, from packed rows (split where position_ids restart) or plain rows."""
    found = {}
    for row in rows:
        starts = [i for i, p in enumerate(row.get("position_ids", [0])) if p == 0] + [len(row["input_ids"])]
        for a, b in zip(starts, starts[1:]):
            found[tuple(row["input_ids"][a:b])] = row["labels"][a:b]
    return found


def test_packed_rows_hold_the_same_examples_with_restarting_positions(packed_and_padded):
    packed, padded = packed_and_padded
    assert packed.packed and packed.stats.rows < packed.stats.examples == padded.stats.examples == 12
    assert packed.stats.tokens == padded.stats.tokens and packed.stats.loss_tokens == padded.stats.loss_tokens
    for row in packed.train:
        assert row["length"] == len(row["input_ids"]) == len(row["labels"]) == len(row["position_ids"]) <= 64
    assert examples_in(packed.train) == examples_in(padded.train)
    assert len(examples_in(padded.train)) == 12


def token_losses(logits, labels) -> torch.Tensor:
    """Per-position next-token loss (0 where the next label is -100), same shape as labels minus one column."""
    flat = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                             ignore_index=-100, reduction="none")
    return flat.view(labels.shape[0], -1)


def per_example_losses(batch, logits) -> dict[tuple, torch.Tensor]:
    """{input ids of an example: the losses of its tokens} for a packed or padded batch."""
    losses = token_losses(logits, batch["labels"])
    found = {}
    for r in range(batch["input_ids"].shape[0]):
        if "position_ids" in batch:
            starts = (batch["position_ids"][r] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
        else:
            starts = [0, int(batch["attention_mask"][r].sum())]
        for a, b in zip(starts, starts[1:]):
            if batch["labels"][r, a:b].ne(-100).any():  # padding segments carry no labels
                found[tuple(batch["input_ids"][r, a:b].tolist())] = losses[r, a:b - 1]
    return found


def assert_same_loss(model, packed, padded, model_type):
    tok = tiny.make_tokenizer()
    packed_batch = data.make_collator(tok, packing=True, model_type=model_type)(list(packed.train))
    padded_batch = data.make_collator(tok, packing=False)(list(padded.train))
    assert packed_batch["input_ids"].shape[0] < padded_batch["input_ids"].shape[0]
    with torch.no_grad():
        packed_out = model(**packed_batch)
        padded_out = model(**padded_batch)
    packed_losses = per_example_losses(packed_batch, packed_out.logits)
    padded_losses = per_example_losses(padded_batch, padded_out.logits)
    assert packed_losses.keys() == padded_losses.keys() and len(packed_losses) == 12
    for key, losses in padded_losses.items():
        torch.testing.assert_close(packed_losses[key], losses, atol=1e-5, rtol=0)
    count = int(packed_batch["labels"][:, 1:].ne(-100).sum())
    assert count == int(padded_batch["labels"][:, 1:].ne(-100).sum()) == packed.stats.loss_tokens
    assert abs(packed_out.loss.item() - padded_out.loss.item()) <= 1e-5


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_packed_and_unpacked_batches_give_the_same_loss(arch, attn, packed_and_padded):
    model = tiny.make_model(arch, attn_implementation=attn)
    assert model.config._attn_implementation == attn
    assert_same_loss(model, *packed_and_padded, model_type=arch)


# Small sizes for any architecture; keys a config does not know are ignored. The MoE and head sizes override
# defaults (60 experts, 256-wide heads) that would make the tiny models slow to build.
GENERIC = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               head_dim=16, num_experts=4, num_local_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
               shared_expert_intermediate_size=32)


@pytest.mark.parametrize("model_type", sorted(data.PADDING_FREE_MODEL_TYPES))
def test_every_padding_free_model_type_keeps_packed_examples_apart(model_type, packed_and_padded):
    tok = tiny.make_tokenizer()
    kw = dict(GENERIC, vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
              bos_token_id=tok.eos_token_id)
    tested = []
    for attn in ("sdpa", "eager"):
        torch.manual_seed(0)
        try:
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **kw), attn_implementation=attn)
        except ValueError as exc:  # e.g. gemma2 has no sdpa implementation
            assert "does not support" in str(exc)
            continue
        assert_same_loss(model.eval(), *packed_and_padded, model_type=model_type)
        tested.append(attn)
    assert tested


def test_architectures_that_ignore_boundaries_train_unpacked(tmp_path, tok, packed_and_padded):
    # OPT takes positions and masks from the attention mask, so a packed batch leaks across examples ...
    packed, padded = packed_and_padded
    model = tiny.make_model("opt")
    packed_batch = data.make_collator(tok, packing=True)(list(packed.train))
    padded_batch = data.make_collator(tok, packing=False)(list(padded.train))
    with torch.no_grad():
        assert abs(model(**packed_batch).loss.item() - model(**padded_batch).loss.item()) > 1e-3
    # ... so prepare does not pack for it, says so, and the collator refuses packed rows for it.
    sink = ListSink()
    file = write_jsonl(tmp_path / "d.jsonl", pc_rows(4))
    prepared = data.prepare(config(file), tok, model_type="opt", sink=sink, cache_dir=tmp_path / "cache")
    assert not prepared.packed and "position_ids" not in prepared.train.column_names
    assert any("Packing is off: opt" in e.text and e.level == "warning" for e in sink.of(Message))
    with pytest.raises(ValueError, match="opt models attend across packed example boundaries"):
        data.make_collator(tok, packing=True, model_type="opt")


def test_padded_collator_pads_each_batch_to_its_longest_row():
    collate = data.PaddedCollator(pad_token_id=3)
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [-100]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 3, 3]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_best_fit_decreasing_fills_rows():
    rows = packing._best_fit_decreasing([5, 3, 7, 2, 4, 1, 8], capacity=10)
    assert sorted(i for row in rows for i in row) == list(range(7))
    sizes = [sum([5, 3, 7, 2, 4, 1, 8][i] for i in row) for row in rows]
    assert all(s <= 10 for s in sizes) and len(rows) == 3  # 30 tokens need at least 3 rows of 10


# -------------------------------------------------------------------------------------------- caching


def test_second_prepare_is_served_from_the_cache(tmp_path, tok, monkeypatch):
    calls = {"read": 0, "render": 0}
    normalize, render = formats._normalize, rendering._render

    def counting(name, fn):
        def wrapper(*args, **kw):
            calls[name] += 1
            return fn(*args, **kw)
        return wrapper

    monkeypatch.setattr(formats, "_normalize", counting("read", normalize))
    monkeypatch.setattr(rendering, "_render", counting("render", render))
    file = write_jsonl(tmp_path / "d.jsonl", pc_rows(6))
    cfg = config(file, validation_split=0.5)
    first = data.prepare(cfg, tok, cache_dir=tmp_path / "cache")
    assert calls == {"read": 6, "render": 6}
    second = data.prepare(cfg, tok, cache_dir=tmp_path / "cache")
    assert calls == {"read": 6, "render": 6}  # nothing read or tokenized again
    assert second.train.cache_files == first.train.cache_files
    assert second.train[:] == first.train[:] and second.validation[:] == first.validation[:]

    data.prepare(config(file, validation_split=0.5, max_length=32), tok, cache_dir=tmp_path / "cache")
    assert calls == {"read": 6, "render": 12}  # a new setting re-tokenizes, the rows are still cached
    write_jsonl(file, pc_rows(7))
    data.prepare(cfg, tok, cache_dir=tmp_path / "cache")
    assert calls == {"read": 13, "render": 19}  # a changed file is read again


# ------------------------------------------------------------------------------------------ bad data


def bad_file(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def good(i: int) -> bytes:
    return json.dumps({"prompt": f"p{i}", "completion": f" c{i}"}).encode() + b"\n"


@pytest.mark.parametrize("name, content, expected", [
    ("malformed.jsonl", good(1) + b'{"prompt": "p2", "completion": \n' + good(3),
     [r"malformed\.jsonl: line 2: not valid JSON"]),
    ("missing.jsonl", good(1) + good(2) + b'{"prompt": "p3", "answer": "c3"}\n',
     [r"missing\.jsonl: line 3: field 'completion': is missing"]),
    ("empty_completion.jsonl", good(1) + b'{"prompt": "p2", "completion": "  "}\n',
     [r"empty_completion\.jsonl: line 2: field 'completion': is empty"]),
    ("latin1.jsonl", good(1) + '{"prompt": "p2", "completion": " caf\u00e9"}\n'.encode("latin-1"),
     [r"latin1\.jsonl: line 2: field 'completion': is not valid UTF-8 \(byte 0xE9\)"]),
    ("number.jsonl", good(1) + b'{"prompt": "p2", "completion": 4}\n',
     [r"number\.jsonl: line 2: field 'completion': expected text, found a number"]),
    ("array.jsonl", good(1) + b'[1, 2]\n', [r"array\.jsonl: line 2: expected a JSON object, found a list"]),
    ("values.csv", b"prompt,completion\np1, c1\np2, c2,extra\n",
     [r"values\.csv: line 3: has 3 values but the header has 2 columns"]),
    ("nocol.csv", b"prompt,answer\np1, c1\n", [r"nocol\.csv: line 1: the header has no column 'completion'"]),
    ("bad.json", b'[{"prompt": "p1", "completion": " c1"},\n {"prompt": "p2" "completion": " c2"}]',
     [r"bad\.json: line 2: not valid JSON"]),
    ("array.json", b'[{"prompt": "p1", "completion": " c1"}, {"prompt": "p2", "completion": ""}]',
     [r"array\.json: row 2: field 'completion': is empty"]),
    ("latin1.csv", b"prompt,completion\np1, c1\np2, caf\xe9\n",
     [r"latin1\.csv: line 3: field 'completion': is not valid UTF-8 \(byte 0xE9\)"]),
    ("empty.jsonl", b"", [r"empty\.jsonl: the file is empty"]),
    ("blank.jsonl", b"\n  \n", [r"blank\.jsonl: the file is empty"]),
    ("header.csv", b"prompt,completion\n", [r"header\.csv: the file has no rows"]),
])
def test_bad_input_names_file_line_and_field(tmp_path, tok, name, content, expected):
    cfg = config(bad_file(tmp_path, name, content), format="prompt-completion")
    with pytest.raises(DataError) as err:
        data.prepare(cfg, tok, cache_dir=tmp_path / "cache")
    for pattern in expected:
        assert err.match(pattern)


def test_rows_of_tables_are_numbered_by_row(tmp_path, tok):
    pq.write_table(pa.Table.from_pylist([{"prompt": "p1", "completion": " c1"}, {"prompt": "p2", "completion": " "}]),
                   tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"d\.parquet: row 2: field 'completion': is empty"):
        data.prepare(config(tmp_path / "d.parquet"), tok, cache_dir=tmp_path / "cache")
    datasets.Dataset.from_list([{"prompt": "p1", "answer": " c1"}]).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DataError, match=r"saved: the data has no column 'completion' \(columns: prompt, answer\)"):
        data.detect(config(tmp_path / "saved", format="prompt-completion"))
    text = bad_file(tmp_path, "t.txt", b"good paragraph\n\nbad caf\xe9\n")
    with pytest.raises(DataError, match=r"t\.txt: line 3: field 'text': is not valid UTF-8"):
        data.prepare(config(text), tok, cache_dir=tmp_path / "cache")


def test_chat_rows_are_checked(tmp_path, tok):
    rows = [{"messages": CHAT},
            {"messages": [{"role": "user", "content": "hi"}]},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]},
            {"messages": [{"role": "assistant", "content": "I start."}, {"role": "user", "content": "ok"}]}]
    file = write_jsonl(tmp_path / "c.jsonl", rows)
    # Rows are checked when read; the template (row 5) only when tokenized, so the first error counts 3 rows.
    with pytest.raises(DataError, match=r"c\.jsonl: line 2: field 'messages': has no assistant message"
                                        r".*\(and 2 more bad rows\)"):
        data.prepare(config(file), tok, cache_dir=tmp_path / "cache")
    prepared = data.prepare(config(file, skip_bad_rows=True), tok, cache_dir=tmp_path / "cache")
    assert [(b.row, b.field) for b in prepared.skipped] == [
        (2, "messages"), (3, "messages[1].role"), (4, "messages[1].content"), (5, "messages[0]")]
    assert "unknown role 'bot'" in prepared.skipped[1].reason
    assert "starts with an assistant message" in prepared.skipped[3].reason
    assert prepared.stats.skipped == 4 and prepared.stats.examples == 1


def test_a_template_that_rejects_a_conversation_names_the_row(tmp_path, tok):
    template = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}"
                "{% endif %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}assistant: {% endif %}")
    file = write_jsonl(tmp_path / "c.jsonl", [{"dialog": CHAT[1:3]}, {"dialog": CHAT}])
    cfg = config(file, columns={"messages": "dialog"}, chat_template=template)
    with pytest.raises(DataError, match=r"c\.jsonl: line 2: field 'dialog': the chat template cannot render it: "
                                        r"no system role"):
        data.prepare(cfg, tok, cache_dir=tmp_path / "cache")


def test_missing_and_unsupported_files(tmp_path, tok):
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found") as err:
        data.detect(config(tmp_path / "nope.jsonl"))
    assert "data.train_files" in err.value.hint
    with pytest.raises(DataError, match=r"gone\.jsonl: file not found") as err:
        data.prepare(DataConfig(train_files=[str(write_jsonl(tmp_path / "d.jsonl", pc_rows(2)))],
                                validation_files=[str(tmp_path / "gone.jsonl")]), tok, cache_dir=tmp_path / "c")
    assert "data.validation_files" in err.value.hint
    with pytest.raises(DataError, match=r"d\.xlsx: unsupported file type"):
        data.detect(config(bad_file(tmp_path, "d.xlsx", b"PK")))
    with pytest.raises(DataError, match="No training files"):
        data.detect(DataConfig())


def test_skip_bad_rows_counts_reports_and_keeps_the_good_ones(tmp_path, tok):
    train = bad_file(tmp_path, "train.jsonl", good(1) + b"{oops\n" + good(3) + b'{"prompt": "p4", "completion": ""}\n'
                     + '{"prompt": "p5", "completion": " \u00e9"}\n'.encode("latin-1") + good(6))
    validation = bad_file(tmp_path, "val.jsonl", good(7) + b'{"prompt": "p8"}\n')
    sink = ListSink()
    cfg = DataConfig(train_files=[str(train)], validation_files=[str(validation)], skip_bad_rows=True, packing=False)
    prepared = data.prepare(cfg, tok, sink=sink, cache_dir=tmp_path / "cache")
    assert [tok.decode(r["input_ids"]) for r in prepared.train] == [f"p{i} c{i}{EOS}" for i in (1, 3, 6)]
    assert (prepared.stats.skipped, prepared.validation_stats.skipped) == (3, 1)
    assert [(Path(b.file).name, b.unit, b.row, b.field) for b in prepared.skipped] == [
        ("train.jsonl", "line", 2, None), ("train.jsonl", "line", 4, "completion"),
        ("train.jsonl", "line", 5, "completion"), ("val.jsonl", "line", 2, "completion")]
    warnings = [e for e in sink.of(Message) if e.level == "warning"]
    assert len(warnings) == 1 and warnings[0].text.startswith("Skipped 4 bad rows:")
    assert "train.jsonl: line 4: field 'completion': is empty" in warnings[0].text

    all_bad = bad_file(tmp_path, "all_bad.jsonl", b"{oops\n[1]\n")
    with pytest.raises(DataError, match="no row can be read"):
        data.prepare(config(all_bad, skip_bad_rows=True), tok, cache_dir=tmp_path / "cache")


# ------------------------------------------------------------------------------------------ validation


def test_validation_split_is_seeded_and_disjoint(tmp_path, tok):
    file = write_jsonl(tmp_path / "d.jsonl", pc_rows(20))
    cfg = config(file, validation_split=0.25)
    info = data.detect(cfg)
    assert (info.train_rows, info.validation_rows) == (15, 5)
    a = data.load_raw(cfg, seed=1, cache_dir=tmp_path / "cache")
    b = data.load_raw(cfg, seed=1, cache_dir=tmp_path / "cache")
    c = data.load_raw(cfg, seed=2, cache_dir=tmp_path / "cache")
    assert (len(a.train), len(a.validation)) == (15, 5)
    assert sorted(list(a.train["_row"]) + list(a.validation["_row"])) == list(range(1, 21))
    assert list(a.validation["_row"]) == list(b.validation["_row"]) != list(c.validation["_row"])
    prepared = data.prepare(cfg, tok, seed=1, cache_dir=tmp_path / "cache")
    assert (prepared.stats.examples, prepared.validation_stats.examples) == (15, 5)
    with pytest.raises(DataError, match="leaves none of the 1 rows for training"):
        data.load_raw(config(write_jsonl(tmp_path / "one.jsonl", pc_rows(1)), validation_split=0.5),
                      cache_dir=tmp_path / "cache")


def test_separate_validation_file(tmp_path, tok):
    train = write_jsonl(tmp_path / "train.jsonl", pc_rows(6))
    validation = write_jsonl(tmp_path / "val.jsonl", pc_rows(2))
    cfg = DataConfig(train_files=[str(train)], validation_files=[str(validation)], validation_split=0.5)
    info = data.detect(cfg)
    assert (info.train_rows, info.validation_rows) == (6, 2)  # a validation file wins over the split
    prepared = data.prepare(cfg, tok, cache_dir=tmp_path / "cache")
    assert (prepared.stats.examples, prepared.validation_stats.examples) == (6, 2)
    assert examples_in(prepared.validation).keys() <= examples_in(prepared.train).keys()


# ---------------------------------------------------------------------------------------------- preview


def test_preview_marks_the_trained_text(tmp_path, tok):
    rows = pc_rows(3)
    file = bad_file(tmp_path, "d.jsonl", b"{oops\n" + b"".join(json.dumps(r).encode() + b"\n" for r in rows))
    with pytest.raises(DataError, match=r"d\.jsonl: line 1: not valid JSON"):
        data.preview(config(file), tok)
    examples = data.preview(config(file, skip_bad_rows=True), tok, n=2)
    assert len(examples) == 2 and examples[0].source.endswith("d.jsonl: line 2")
    assert examples[0].segments == [(rows[0]["prompt"], False), (rows[0]["completion"] + EOS, True)]
    assert not examples[0].truncated
    assert examples[0].tokens == len(tok(rows[0]["prompt"] + rows[0]["completion"])["input_ids"]) + 1

    chat = write_jsonl(tmp_path / "c.jsonl", [{"messages": CHAT}])
    rendered = tok.apply_chat_template(CHAT, tokenize=False)
    cut = len(tok(tok.apply_chat_template(CHAT[:3], tokenize=False))["input_ids"]) + 3  # inside the next user turn
    (example,) = data.preview(config(chat, max_length=cut), tok)
    assert example.truncated and example.tokens == len(tok(rendered)["input_ids"])
    assert [text for text, trained in example.segments if trained] == ["Paris.<|im_end|>\n"]
    assert "".join(text for text, _ in example.segments) == tok.decode(tok(rendered)["input_ids"][:cut])


# --------------------------------------------------------------------------- the input-path policy and its hints


def test_a_fifo_as_training_data_is_refused_at_once(tmp_path):
    """open() on a FIFO blocks until a writer comes: the reader must refuse it before opening (the test
    would hang, and the timeout fail it, otherwise)."""
    import os

    fifo = tmp_path / "train.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match=r"train\.jsonl is a FIFO \(named pipe\), not a regular file"):
        data.detect(config(fifo))


def test_a_symbolic_link_loop_as_training_data_is_named(tmp_path):
    loop = tmp_path / "train.jsonl"
    loop.symlink_to(tmp_path / "train.jsonl")
    with pytest.raises(DataError, match=r"train\.jsonl cannot be read: Too many levels of symbolic links"):
        data.detect(config(loop))


def test_deeply_nested_json_rows_are_bad_rows_not_a_recursion_error(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(pc_rows(1)[0]) + "\n" + '{"prompt": ' + deep + ', "completion": "x"}\n')
    with pytest.raises(DataError, match=r"line 2: the JSON is nested too deeply"):
        data.detect(config(path))
    array = tmp_path / "train.json"
    array.write_text(deep)
    with pytest.raises(DataError, match=r"train\.json: the JSON is nested too deeply"):
        data.detect(config(array))


@pytest.mark.parametrize("delimiter", [";", "\t", "|", ","])
def test_csv_files_with_other_delimiters_train_the_right_columns(tmp_path, delimiter, tok):
    rows = pc_rows(4)
    path = tmp_path / "train.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(["prompt", "completion"])
        writer.writerows([[r["prompt"], r["completion"] + ", with a comma; and a semicolon"] for r in rows])
    info = data.detect(config(path))
    assert info.format == "prompt-completion" and info.columns == ["prompt", "completion"]
    assert info.samples[0] == {"prompt": rows[0]["prompt"], "completion": rows[0]["completion"] + ", with a comma; and a semicolon"}


def test_a_file_mixing_formats_is_named_at_the_first_row_that_differs(tmp_path):
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    path = write_jsonl(tmp_path / "mixed.jsonl", [chat] * 6 + pc_rows(1) + [chat])
    with pytest.raises(DataError, match=r"mixed\.jsonl: line 7 holds a prompt-completion row, but line 1 holds a "
                                        r"chat row") as err:
        data.detect(config(path))
    assert "one format" in err.value.hint


@pytest.mark.timeout(30)  # the guard against a hang: opening a FIFO without a writer never returns
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".txt", ".parquet"])
@pytest.mark.parametrize("setting", ["train_files", "validation_files"])
def test_a_fifo_is_refused_before_it_is_opened_for_every_format(tmp_path, suffix, setting):
    import os

    fifo = tmp_path / f"data{suffix}"
    os.mkfifo(fifo)
    good = write_jsonl(tmp_path / "good.jsonl", pc_rows(4))
    cfg = config(fifo) if setting == "train_files" else config(good, validation_files=[str(fifo)])
    with pytest.raises(DataError, match=rf"data\{suffix} is a FIFO \(named pipe\), not a regular file") as err:
        data.load_raw(cfg, cache_dir=tmp_path / "cache")
    assert f"data.{setting}" in err.value.hint


def test_validation_rows_shared_with_training_are_counted_in_a_warning(tmp_path, tok):
    rows = pc_rows(10)
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    # 3 of the 5 validation rows are training rows, one of them written as CSV (rows compare by content)
    validation = write_jsonl(tmp_path / "val.jsonl", rows[:2] + pc_rows(13)[10:])
    shared_csv = tmp_path / "more-val.csv"
    with open(shared_csv, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["prompt", "completion"], [rows[5]["prompt"], rows[5]["completion"]]])
    sink = ListSink()
    data.prepare(config(train, validation_files=[str(validation), str(shared_csv)]), tok, sink=sink,
                 cache_dir=tmp_path / "cache")
    warnings = [e.text for e in sink.of(Message) if e.level == "warning"]
    assert any(w.startswith("3 of the 6 validation rows are also training rows") for w in warnings), warnings
    assert not any("both a training and a validation file" in w for w in warnings)


def test_the_same_file_as_training_and_validation_data_is_warned(tmp_path, tok):
    train = write_jsonl(tmp_path / "train.jsonl", pc_rows(6))
    sink = ListSink()
    data.prepare(config(train, validation_files=[str(tmp_path / "." / "train.jsonl")]), tok, sink=sink,
                 cache_dir=tmp_path / "cache")
    warnings = [e.text for e in sink.of(Message) if e.level == "warning"]
    assert any(f"{train} is both a training and a validation file" in w for w in warnings), warnings
    assert any(w.startswith("6 of the 6 validation rows are also training rows") for w in warnings), warnings


def test_separate_validation_rows_and_a_split_give_no_overlap_warning(tmp_path, tok):
    rows = pc_rows(12)
    train, validation = write_jsonl(tmp_path / "t.jsonl", rows[:8]), write_jsonl(tmp_path / "v.jsonl", rows[8:])
    for cfg in (config(train, validation_files=[str(validation)]), config(train, validation_split=0.25)):
        sink = ListSink()
        data.prepare(cfg, tok, sink=sink, cache_dir=tmp_path / "cache")
        assert not [e.text for e in sink.of(Message) if "validation" in e.text and e.level == "warning"]


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_a_semicolon_or_tab_csv_trains_its_completion_column(tmp_path, delimiter, tok):
    """The sniffed delimiter reaches training: the trained (label) tokens are the completion cell, nothing of the
    prompt and no delimiter."""
    rows = [{"prompt": f"Question {i}; part {i}?", "completion": f" Answer {i}, done."} for i in range(3)]
    path = tmp_path / "train.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(["prompt", "completion"])
        writer.writerows([[r["prompt"], r["completion"]] for r in rows])
    prepared = data.prepare(config(path, packing=False), tok, cache_dir=tmp_path / "cache")
    assert len(prepared.train) == 3
    trained = sorted(trained_text(tok, row).removesuffix(EOS) for row in prepared.train)
    assert trained == sorted(r["completion"] for r in rows)
    full = sorted(tok.decode(row["input_ids"]) for row in prepared.train)
    assert full == sorted(r["prompt"] + r["completion"] + EOS for r in rows)
