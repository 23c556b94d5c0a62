"""The data people bring from other tools: LLaMA-Factory v1 messages (content parts, per-message loss_weight),
OpenAI content parts, LLaMA-Factory dataset_info.json column mappings, Alpaca rows rendered with the model's chat
template or the classic prompt, and plain text split into paragraphs, chunks or one whole-file example.

Every loss-mask check decodes the trained tokens and compares them with text written out here by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny

from workbench.core import data
from workbench.core.config import DataConfig
from workbench.core.errors import DataError

EOS = "<|endoftext|>"


@pytest.fixture(scope="module")
def tok():
    return tiny.make_tokenizer()


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def prepared_rows(tok, tmp_path, *files: Path, **kw):
    cfg = DataConfig(train_files=[str(f) for f in files], packing=False, **kw)
    return data.prepare(cfg, tok, cache_dir=tmp_path / "cache").train


def trained_runs(tok, row) -> list[str]:
    """Each maximal run of consecutive trained tokens, decoded."""
    runs, current = [], []
    for label in list(row["labels"]) + [-100]:
        if label != -100:
            current.append(label)
        elif current:
            runs.append(tok.decode(current))
            current = []
    return runs


def lf_message(role: str, text: str, weight: float) -> dict:
    """A message as LLaMA-Factory's v1 SFT format writes it (data/v1_sft_demo.jsonl)."""
    return {"role": role, "content": [{"type": "text", "value": text}], "loss_weight": weight}


def test_llamafactory_v1_messages_train_only_the_assistant_turns_with_weight_one(tmp_path, tok):
    row = {"messages": [lf_message("user", "hi", 0.0), lf_message("assistant", "Hello there.", 0.0),
                        lf_message("user", "Who are you?", 0.0), lf_message("assistant", "An assistant.", 1.0)]}
    (prepared,) = prepared_rows(tok, tmp_path, write_jsonl(tmp_path / "v1.jsonl", [row]))
    assert tok.decode(prepared["input_ids"]) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nHello there.<|im_end|>\n"
        "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\nAn assistant.<|im_end|>\n")
    assert trained_runs(tok, prepared) == ["An assistant.<|im_end|>\n"], "the weight-0 assistant turn is not trained"

    without_weights = {"messages": [{k: v for k, v in m.items() if k != "loss_weight"} for m in row["messages"]]}
    (both,) = prepared_rows(tok, tmp_path, write_jsonl(tmp_path / "no_weights.jsonl", [without_weights]))
    assert trained_runs(tok, both) == ["Hello there.<|im_end|>\n", "An assistant.<|im_end|>\n"]


def test_openai_content_parts_render_as_their_joined_text(tmp_path, tok):
    parts = {"messages": [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Capital of "}, {"type": "text", "text": "France?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Paris."}]}]}
    plain = {"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "Capital of France?"},
                          {"role": "assistant", "content": "Paris."}]}
    (with_parts,) = prepared_rows(tok, tmp_path, write_jsonl(tmp_path / "parts.jsonl", [parts]))
    (with_text,) = prepared_rows(tok, tmp_path, write_jsonl(tmp_path / "text.jsonl", [plain]))
    assert with_parts["input_ids"] == with_text["input_ids"] and with_parts["labels"] == with_text["labels"]
    assert trained_runs(tok, with_parts) == ["Paris.<|im_end|>\n"]


@pytest.mark.parametrize(("message", "field", "reason"), [
    ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]},
     "messages[0].content[0]", "'image_url' part"),
    ({"role": "user", "content": [{"type": "text"}]}, "messages[0].content[0]", "'text' (OpenAI) or 'value'"),
    ({"role": "assistant", "content": "x", "loss_weight": 0.5}, "messages[0].loss_weight",
     "only 0 (not trained) and 1"),
    ({"role": "user", "content": "x", "loss_weight": 1.0}, "messages[0].loss_weight", "only assistant messages"),
])
def test_content_parts_and_weights_that_cannot_be_trained_name_the_field(tmp_path, message, field, reason):
    row = {"messages": [message, {"role": "assistant", "content": "fine"}]}
    with pytest.raises(DataError, match="skip_bad_rows") as failed:
        data.detect(DataConfig(train_files=[str(write_jsonl(tmp_path / "bad.jsonl", [row]))]))
    assert f"line 1: field '{field}'" in failed.value.message and reason in failed.value.message


def test_a_conversation_whose_assistant_turns_all_weigh_zero_is_refused(tmp_path):
    row = {"messages": [lf_message("user", "hi", 0.0), lf_message("assistant", "hello", 0.0)]}
    with pytest.raises(DataError, match="every assistant message has loss_weight 0"):
        data.detect(DataConfig(train_files=[str(write_jsonl(tmp_path / "zero.jsonl", [row]))]))


def write_dataset_info(folder: Path, entries: dict) -> Path:
    path = folder / "dataset_info.json"
    path.write_text(json.dumps(entries, indent=2), encoding="utf-8")
    return path


def test_a_llamafactory_dataset_info_maps_sharegpt_columns_and_tags(tmp_path, tok):
    rows = [{"dialog": [{"speaker": "client", "text": "What is 2+2?"}, {"speaker": "agent", "text": "Four."}]}]
    file = write_jsonl(tmp_path / "support.json", rows)
    write_dataset_info(tmp_path, {"support": {
        "file_name": "support.json", "formatting": "sharegpt", "columns": {"messages": "dialog"},
        "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "client", "assistant_tag": "agent"}}})
    info = data.detect(DataConfig(train_files=[str(file)]))
    assert (info.format, info.mapping["conversations"]) == ("sharegpt", "dialog")
    assert info.mapping_file == str(tmp_path / "dataset_info.json")
    (row,) = prepared_rows(tok, tmp_path, file)
    assert tok.decode(row["input_ids"]) == (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\nFour.<|im_end|>\n")
    assert trained_runs(tok, row) == ["Four.<|im_end|>\n"]


def test_a_llamafactory_dataset_info_maps_alpaca_columns(tmp_path, tok):
    file = tmp_path / "qa.json"
    file.write_text(json.dumps([{"question": "Capital of France?", "context": "", "answer": "Paris"}]))
    write_dataset_info(tmp_path, {"qa": {"file_name": "qa.json",
                                         "columns": {"prompt": "question", "query": "context", "response": "answer"}}})
    (row,) = prepared_rows(tok, tmp_path, file, alpaca_template="classic")
    assert tok.decode(row["input_ids"]).endswith("### Instruction:\nCapital of France?\n\n### Response:\nParis" + EOS)
    assert trained_runs(tok, row) == ["Paris" + EOS]


def test_a_dataset_info_entry_with_columns_this_format_cannot_hold_is_refused(tmp_path):
    file = write_jsonl(tmp_path / "tools.jsonl", [{"conversations": [{"from": "human", "value": "x"},
                                                                       {"from": "gpt", "value": "y"}], "tools": "[]"}])
    write_dataset_info(tmp_path, {"glaive": {"file_name": "tools.jsonl", "formatting": "sharegpt",
                                             "columns": {"messages": "conversations", "tools": "tools"}}})
    with pytest.raises(DataError, match="the column 'tools'") as failed:
        data.detect(DataConfig(train_files=[str(file)]))
    assert "dataset 'glaive'" in failed.value.message and "messages" in failed.value.hint
    # Setting the format yourself takes the list out of the decision.
    assert data.detect(DataConfig(train_files=[str(file)], format="sharegpt")).format == "sharegpt"


def test_picking_the_dataset_info_itself_names_the_files_it_lists(tmp_path):
    listing = write_dataset_info(tmp_path, {"a": {"file_name": "a.json"}, "b": {"file_name": "b.jsonl"}})
    with pytest.raises(DataError, match="a LLaMA-Factory dataset list, not training data") as failed:
        data.detect(DataConfig(train_files=[str(listing)]))
    assert "a.json, b.jsonl" in failed.value.hint


ALPACA = [{"instruction": "Add the numbers.", "input": "2 and 2", "output": "four"},
          {"instruction": "Name the capital of France.", "input": "", "output": "Paris"}]


def test_alpaca_rows_use_the_models_chat_template_by_default(tmp_path, tok):
    file = write_jsonl(tmp_path / "a.jsonl", ALPACA)
    with_input, without_input = prepared_rows(tok, tmp_path, file)
    assert tok.decode(with_input["input_ids"]) == (
        "<|im_start|>user\nAdd the numbers.\n\n2 and 2<|im_end|>\n<|im_start|>assistant\nfour<|im_end|>\n")
    assert trained_runs(tok, with_input) == ["four<|im_end|>\n"]
    assert tok.decode(without_input["input_ids"]) == (
        "<|im_start|>user\nName the capital of France.<|im_end|>\n<|im_start|>assistant\nParis<|im_end|>\n")
    assert trained_runs(tok, without_input) == ["Paris<|im_end|>\n"]
    preview = data.preview(DataConfig(train_files=[str(file)]), tok, n=1)[0]
    assert "".join(text for text, trained in preview.segments if trained) == "four<|im_end|>\n"


def test_alpaca_on_a_model_without_a_chat_template_keeps_the_classic_prompt(tmp_path):
    base = tiny.make_tokenizer()
    base.chat_template = None
    (row, _) = prepared_rows(base, tmp_path, write_jsonl(tmp_path / "a.jsonl", ALPACA))
    assert base.decode(row["input_ids"]).startswith("Below is an instruction")
    assert trained_runs(base, row) == ["four" + EOS]


PLAIN = "First paragraph,\nstill the first.\n\nSecond paragraph.\n"


@pytest.mark.parametrize("split", ["paragraphs", "whole"])
def test_plain_text_in_paragraphs_or_whole(split, tmp_path, tok):
    file = tmp_path / "notes.txt"
    file.write_text(PLAIN)
    rows = prepared_rows(tok, tmp_path, file, text_split=split)
    expected = (["First paragraph,\nstill the first." + EOS, "Second paragraph." + EOS] if split == "paragraphs"
                else [PLAIN + EOS])
    assert [tok.decode(r["input_ids"]) for r in rows] == expected
    # Everything is trained but the first token, which nothing precedes.
    assert [tok.decode(r["labels"][1:]) for r in rows] == [tok.decode(r["input_ids"][1:]) for r in rows]
    assert all(r["labels"][0] == -100 for r in rows)


def test_plain_text_in_chunks_covers_the_file_once_in_max_length_pieces(tmp_path, tok):
    text = "".join(f"Line {i} of the play, spoken slowly.\n" for i in range(40))
    file = tmp_path / "play.txt"
    file.write_text(text)
    cfg = DataConfig(train_files=[str(file)], text_split="chunks", max_length=32, packing=False)
    prepared = data.prepare(cfg, tok, cache_dir=tmp_path / "cache")
    pieces = [list(r["input_ids"]) for r in prepared.train]
    whole = tok(text)["input_ids"] + [tok.eos_token_id]
    assert len(pieces) == -(-len(whole) // 32) > 3
    assert all(len(p) == 32 for p in pieces[:-1])
    assert sum(pieces, []) == whole, "the chunks are the whole file, in order, with one EOS at the end"
    for row in prepared.train:
        assert row["labels"][0] == -100 and row["labels"][1:] == row["input_ids"][1:]
    assert prepared.stats.truncated == 0 and prepared.stats.examples == len(pieces)
    previews = data.preview(cfg, tok, n=3)
    assert [p.source.rsplit(": ", 1)[1] for p in previews][0] == "line 1 (chunk 1)"
    assert "".join(t for t, _ in previews[0].segments) + "".join(t for t, _ in previews[1].segments) \
        == tok.decode(pieces[0] + pieces[1])


def test_alpaca_evaluation_prompts_are_rendered_as_training_renders_them(tmp_path, tok):
    from workbench.core.evaluation import eval_references

    file = write_jsonl(tmp_path / "a.jsonl", ALPACA)
    cfg = DataConfig(train_files=[str(file)], validation_files=[str(file)])
    (ref, _) = eval_references(cfg, tok, seed=0, limit=2)
    assert (ref.prompt, ref.answer) == (
        "<|im_start|>user\nAdd the numbers.\n\n2 and 2<|im_end|>\n<|im_start|>assistant\n", "four")
    classic = eval_references(cfg.model_copy(update={"alpaca_template": "classic"}), tok, seed=0, limit=1)[0]
    assert classic.prompt.startswith("Below is an instruction") and classic.prompt.endswith("### Response:\n")


def test_a_hold_out_fraction_of_whole_text_files_says_to_give_a_validation_file(tmp_path):
    file = tmp_path / "play.txt"
    file.write_text(PLAIN)
    with pytest.raises(DataError, match="leaves none of the 1 rows") as failed:
        data.detect(DataConfig(train_files=[str(file)], text_split="chunks", validation_split=0.1))
    assert "data.validation_files" in failed.value.hint


@pytest.mark.slow
@pytest.mark.real_model
def test_llamafactory_v1_rows_with_the_real_smollm2_template(tmp_path, smollm2):
    """SmolLM2's template adds a default system turn of its own; the weight-0 assistant turn still trains
    nothing and the weight-1 turn trains exactly its text and the end of its turn."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    row = {"messages": [lf_message("user", "hi", 0.0), lf_message("assistant", "Hello there.", 0.0),
                        lf_message("user", "Who are you?", 0.0), lf_message("assistant", "An assistant.", 1.0)]}
    (prepared,) = prepared_rows(tokenizer, tmp_path, write_jsonl(tmp_path / "v1.jsonl", [row]))
    assert "<|im_start|>system\n" in tokenizer.decode(prepared["input_ids"])
    assert trained_runs(tokenizer, prepared) == ["An assistant.<|im_end|>\n"]


def test_the_preview_of_a_long_text_in_chunks_reads_only_its_start_and_shows_the_trained_chunks(tmp_path, tok):
    text = "".join(f"Line {i} of a long play.\n" for i in range(400))  # far more than the preview reads
    file = tmp_path / "long.txt"
    file.write_text(text)
    cfg = DataConfig(train_files=[str(file)], text_split="chunks", max_length=8, packing=False)
    trained = [list(r["input_ids"]) for r in data.prepare(cfg, tok, cache_dir=tmp_path / "cache").train]
    previews = data.preview(cfg, tok, n=3)
    assert len(previews) == 3
    for shown, ids in zip(previews, trained):
        assert "".join(t for t, _ in shown.segments) == tok.decode(ids)
        assert (shown.tokens, shown.trained_tokens) == (8, 7)


def test_the_preview_cuts_the_same_text_where_tokens_begin(tmp_path, tok):
    file = write_jsonl(tmp_path / "a.jsonl", ALPACA)
    (example,) = data.preview(DataConfig(train_files=[str(file)]), tok, n=1)
    assert "".join(t for t, _ in example.token_pieces) == "".join(t for t, _ in example.segments)
    assert len(example.token_pieces) == example.tokens  # one piece per token: each spells text of its own
    ids = tok(tok.apply_chat_template(_alpaca_chat(ALPACA[0]), tokenize=False), add_special_tokens=False)["input_ids"]
    assert [t for t, _ in example.token_pieces] == [tok.decode([i]) for i in ids]
    trained = "".join(t for t, flag in example.token_pieces if flag)
    assert trained == "four<|im_end|>\n"


def _alpaca_chat(row):
    return [{"role": "user", "content": f"{row['instruction']}\n\n{row['input']}"},
            {"role": "assistant", "content": row["output"]}]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llamafactory-v1", "text-chunks"])
def test_the_engine_trains_on_the_brought_formats(kind, tmp_path, tiny_model_dir):
    """Three real optimizer steps on a tiny model: the new columns (untrained turns) and the rows a chunked text
    becomes go through the collator and the Trainer like any other."""
    from workbench.core.config import RunConfig
    from workbench.core.training import run

    if kind == "llamafactory-v1":
        rows = [{"messages": [lf_message("user", f"Question {i}?", 0.0), lf_message("assistant", "Skip.", 0.0),
                              lf_message("user", "Again?", 0.0), lf_message("assistant", f"Answer {i}.", 1.0)]}
                for i in range(8)]
        file, extra = write_jsonl(tmp_path / "v1.jsonl", rows), {}
    else:
        file = tmp_path / "play.txt"
        file.write_text("".join(f"Line {i} of the play, spoken slowly.\n" for i in range(60)))
        extra = {"text_split": "chunks"}
    config = RunConfig.from_dict({
        "model": {"source": str(tiny_model_dir("llama"))},
        "lora": {"r": 4, "alpha": 8, "preset": "all-linear"},
        "data": {"train_files": [str(file)], "max_length": 128 if kind == "llamafactory-v1" else 32, **extra},
        "training": {"max_steps": 3, "batch_size": 2, "device": "cpu", "logging_steps": 1},
        "output": {"runs_root": str(tmp_path / "runs")},
    })
    result = run(config)
    assert (result.status, result.final_step) == ("finished", 3)
    steps = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in steps if e["kind"] == "step"]
    assert len(losses) == 3 and all(loss == loss and loss > 0 for loss in losses)
    assert (result.adapter_dir / "adapter_model.safetensors").exists()
