"""The demo task (resources/demo), its run file (resources/examples/demo.toml) and ``workbench demo``.

The data checks re-derive every answer from its sentence with logic written here, independently of
make_data.py: a row whose JSON does not say what its sentence says fails.
"""

from __future__ import annotations

import calendar
import datetime
import importlib.util
import json
import re
from pathlib import Path

import pytest

from workbench.core import builtin, cache, demo
from workbench.core.config import RunConfig

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "resources" / "demo"
RUN_FILE = ROOT / "resources" / "examples" / "demo.toml"
KEYS = ["name", "date", "amount", "currency"]
CURRENCY_WORDS = {"USD": ("$", "dollars", "USD "), "EUR": ("€", "euros", "EUR "), "GBP": ("£", "pounds", "GBP ")}



def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DEMO / name).read_text(encoding="utf-8").splitlines()]


def demo_config() -> RunConfig:
    return RunConfig.from_toml(RUN_FILE)


# -------------------------------------------------------------------------------------------- the data


def test_make_data_writes_exactly_the_committed_files(capsys):
    spec = importlib.util.spec_from_file_location("make_demo_data", DEMO / "make_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = module.build()
    assert set(built) == {"train.jsonl", "validation.jsonl"}
    for name, text in built.items():
        assert (DEMO / name).read_text(encoding="utf-8") == text, f"{name} is stale: run resources/demo/make_data.py"
    assert module.main(["--check"]) == 0


def _check_row(row: dict) -> tuple[str, str]:
    """Assert the answer is what the sentence says; return (first name, last name)."""
    user, assistant = row["messages"]
    assert (user["role"], assistant["role"]) == ("user", "assistant")
    instruction, sentence = user["content"].split(": ", 1)
    assert instruction == "Extract name, date, amount and currency as JSON"
    answer = assistant["content"]
    assert "\n" not in answer
    record = json.loads(answer)
    assert list(record) == KEYS

    assert record["name"] in sentence
    date = datetime.date.fromisoformat(record["date"])
    month = calendar.month_name[date.month]
    written = {f"{month} {date.day}, {date.year}", f"{date.day} {month} {date.year}", record["date"]}
    assert any(w in sentence for w in written), (sentence, record["date"])

    amount = re.search(r'"amount": ([0-9.]+),', answer).group(1)  # the number exactly as the JSON writes it
    assert isinstance(record["amount"], (int, float)) and record["amount"] > 0
    without_separators = re.sub(r"(\d),(\d)", r"\1\2", sentence)  # 1,200 → 1200; "2024, Ana" stays
    assert re.search(rf"(?<![\d.]){re.escape(amount)}(?![\d])", without_separators), (sentence, amount)
    symbol, word, code = CURRENCY_WORDS[record["currency"]]
    assert f"{symbol}{amount[:1]}" in sentence or f" {word}" in sentence or code in sentence, sentence
    first, last = record["name"].split(" ")
    return first, last


def test_every_answer_is_one_line_of_json_that_matches_its_sentence():
    train = [_check_row(r) for r in rows("train.jsonl")]
    validation = [_check_row(r) for r in rows("validation.jsonl")]
    assert len(train) == 1000 and len(validation) == 32
    # validation people are new people: the loss on them measures extraction, not memory
    assert not {f for f, _ in train} & {f for f, _ in validation}
    assert not {last for _, last in train} & {last for _, last in validation}
    dates = [json.loads(r["messages"][1]["content"])["date"] for r in rows("train.jsonl")]
    assert len({d[5:7] for d in dates}) == 12 and any(d.endswith(("-01", "-02", "-09")) for d in dates)


def test_demo_run_file_is_valid_and_its_samples_are_unseen():
    config = demo_config()
    assert config.model.source == builtin.DEFAULT_SOURCE
    for f in [*config.data.train_files, *config.data.validation_files]:
        assert (ROOT / f).is_file(), f
    assert config.data.format == "chat" and config.data.validation_files
    t = config.training
    assert t.max_steps and t.eval_steps and t.sample_steps and len(t.sample_prompts) >= 2
    assert t.max_steps % t.sample_steps == 0 and t.max_steps % t.eval_steps == 0, "samples and eval at the last step"
    seen = {r["messages"][0]["content"] for r in rows("train.jsonl") + rows("validation.jsonl")}
    train_names = {json.loads(r["messages"][1]["content"])["name"] for r in rows("train.jsonl")}
    for prompt in t.sample_prompts:
        assert prompt.startswith("Extract name, date, amount and currency as JSON: ")
        assert prompt not in seen
        assert not any(name in prompt for name in train_names), prompt


def test_demo_config_runs_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = demo.demo_config(["training.max_steps=3"])
    assert demo.demo_run_file() == RUN_FILE
    assert config.training.max_steps == 3 and config.model.source == builtin.DEFAULT_SOURCE
    for f in [*config.data.train_files, *config.data.validation_files]:
        assert Path(f).is_absolute() and Path(f).is_file(), f


def test_demo_data_fits_max_length_and_answers_fit_the_sample_budget(smollm2):
    from transformers import AutoTokenizer

    from workbench.core.data import prepare

    config = demo_config()
    data = config.data.model_copy(update={
        "train_files": [str(ROOT / f) for f in config.data.train_files],
        "validation_files": [str(ROOT / f) for f in config.data.validation_files],
    })
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    prepared = prepare(data, tokenizer, model_type="llama")
    assert prepared.stats.examples == 1000 and prepared.stats.truncated == 0 and prepared.stats.without_loss == 0
    assert prepared.validation_stats.examples == 32 and prepared.validation_stats.truncated == 0
    assert prepared.packed
    # the longest answer, with its end-of-turn token, fits in the tokens generated for a sample
    longest = max(len(tokenizer(r["messages"][1]["content"] + "<|im_end|>")["input_ids"])
                  for r in rows("train.jsonl") + rows("validation.jsonl"))
    assert longest <= config.training.sample_max_new_tokens


# --------------------------------------------------------------------------------------- the command


def test_workbench_demo_reports_the_model_and_the_task(smollm2, tmp_path_factory, monkeypatch, capsys):
    from workbench.cli import main

    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path_factory.getbasetemp() / "workbench-cache"))
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))  # works from any folder
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert str(smollm2) in out and "already converted" in out
    assert str(DEMO / "train.jsonl") in out and "(1000 rows)" in out and "(32 rows)" in out
    assert "workbench demo --train" in out


@pytest.mark.slow
def test_workbench_demo_train_runs_the_demo_headless(smollm2, tmp_path, tmp_path_factory, monkeypatch, capsys):
    """One real step of the demo run through the CLI, from another folder. Needs models.resolve_source to
    resolve ``builtin:`` sources (through models.resolve_builtin)."""
    from workbench.cli import main

    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path_factory.getbasetemp() / "workbench-cache"))
    monkeypatch.chdir(tmp_path)
    code = main(["demo", "--train", "--quiet", "--run-dir", str(tmp_path / "run"),
                 "--set", "training.max_steps=1", "--set", "data.max_length=128", "--set", "data.validation_files=[]",
                 "--set", "training.sample_max_new_tokens=3"])
    assert code == 0
    run_toml = RunConfig.from_toml(tmp_path / "run" / "run.toml")
    assert run_toml.model.source == builtin.DEFAULT_SOURCE, "the run records the portable built-in name"
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(e["kind"] == "sample" for e in events) == 2 and events[-1]["kind"] == "finished"
