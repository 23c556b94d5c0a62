"""Sequence classification trained for real on tiny models (decoders with a score head, BERT with its classifier):
the loss drops, the saved adapter + head reloads with PEFT alone and reproduces the engine's own evaluation, and
the merged model predicts exactly what base + adapter predicts."""

import json
from pathlib import Path

import pytest
import torch

from workbench.core import events as ev
from workbench.core.classification import LABELS_FILE
from workbench.core.config import RunConfig
from workbench.core.errors import DataError
from workbench.core.training import run

# Two classes told apart by their words (all in the tiny tokenizer's corpus); "neutral" mixes both.
TEXTS = {
    "travel": ["Paris is the capital of France.", "capital of France", "Translate to French: Paris",
               "the capital Paris", "France and Paris", "French capital"],
    "animals": ["The quick brown fox jumps.", "the lazy dog", "brown fox and lazy dog", "a quick fox",
                "dog jumps over the fox", "lazy brown dog"],
}
STEPS = 24


def write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def labelled(label_of=lambda name: name) -> list[dict]:
    return [{"sentence": t, "category": label_of(name)} for name, texts in TEXTS.items() for t in texts]


@pytest.fixture
def base_dir(tiny_model_dir, tmp_path_factory):
    """A saved tiny base. "bert-mlm" is a BERT encoder saved without any classification parts (as pretrained
    encoders are): its pooler and classifier are initialised at random when loaded for classification.
    "bert-bare" is the bare encoder (BertModel, how sentence-transformers' MiniLM ships), whose checkpoint names
    lack the ``bert.`` prefix the classifier's modules have."""
    import tiny

    def get(arch: str) -> Path:
        if arch not in ("bert-mlm", "bert-bare"):
            return tiny_model_dir(arch, initializer_range=0.2)
        from transformers import BertForMaskedLM, BertModel

        folder = tmp_path_factory.mktemp(arch)
        torch.manual_seed(0)
        (BertForMaskedLM if arch == "bert-mlm" else BertModel)(
            tiny.make_config("bert", initializer_range=0.2)).save_pretrained(folder)
        tiny.make_tokenizer().save_pretrained(folder)
        return folder

    return get


def make_config(base: Path, tmp_path: Path, rows: list[dict], validation: list[dict] | None = None,
                **model) -> RunConfig:
    data = {"train_files": [write_rows(tmp_path / "train.jsonl", rows)], "max_length": 32,
            "columns": {"text": "sentence", "label": "category"}}
    if validation is not None:
        data["validation_files"] = [write_rows(tmp_path / "validation.jsonl", validation)]
    return RunConfig.from_dict({
        "model": {"source": str(base), "task": "sequence-classification", **model},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "preset": "attention"},
        "data": data,
        "training": {"max_steps": STEPS, "learning_rate": 1e-2, "batch_size": 4, "warmup_ratio": 0.0,
                     "scheduler": "constant", "device": "cpu", "logging_steps": 1, "eval_steps": STEPS},
        "output": {"runs_root": str(tmp_path / "runs")},
    })


def peft_model_from(base: Path, adapter: Path):
    """base + adapter loaded the way a PEFT user would, from the files alone (labels.json gives the classes)."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    labels = json.loads((adapter / LABELS_FILE).read_text())
    id2label = {int(i): n for i, n in labels["id2label"].items()}
    torch.manual_seed(1234)  # a different seed from training's: anything not saved would show up as a mismatch
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=len(id2label), id2label=id2label, label2id=labels["label2id"], ignore_mismatched_sizes=True,
        problem_type={"single-label": "single_label_classification", "multi-label": "multi_label_classification",
                      "regression": "regression"}[labels["problem_type"]])
    return PeftModel.from_pretrained(model, adapter).eval()


def batch(base: Path, texts: list[str]):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base)(texts, padding=True, return_tensors="pt")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "bert", "bert-mlm", "bert-bare"])
def test_classifier_learns_reloads_with_peft_and_merges(arch, base_dir, tmp_path):
    from workbench.core.merge import merge_adapter

    base = base_dir(arch)
    rows = labelled()
    sink = ev.ListSink()
    result = run(make_config(base, tmp_path, rows, validation=rows), sink)
    assert result.status == "finished"
    assert len(sink.of(ev.Step)) == STEPS
    # single steps of 4 examples are noisy (BERT trains with dropout): the validation loss tells learning apart
    before, final = sink.of(ev.Evaluation)[0], sink.of(ev.Evaluation)[-1]
    assert (before.step, final.step) == (0, STEPS)
    assert final.eval_loss < 0.3 * before.eval_loss, (before, final)
    assert final.metrics["eval_accuracy"] == 1.0 and final.metrics["eval_f1"] == 1.0

    adapter = result.adapter_dir
    labels = json.loads((adapter / LABELS_FILE).read_text())
    assert labels["id2label"] == {"0": "animals", "1": "travel"} and labels["counts"] == {"animals": 6, "travel": 6}
    resolved = RunConfig.from_toml(result.run_dir / "run.toml")
    assert resolved.model.labels == ["animals", "travel"] and resolved.model.num_labels == 2
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS"

    # PEFT alone reproduces the engine's final validation loss (the head and any fresh module were saved)
    model = peft_model_from(base, adapter)
    texts = [r["sentence"] for r in rows]
    truth = torch.tensor([labels["label2id"][r["category"]] for r in rows])
    with torch.no_grad():
        logits = model(**batch(base, texts)).logits
    assert torch.nn.functional.cross_entropy(logits, truth).item() == pytest.approx(final.eval_loss, rel=1e-4, abs=1e-6)
    assert (logits.argmax(-1) == truth).all()

    # the streaming merge: one model with the adapter and the head baked in, the same logits
    from transformers import AutoModelForSequenceClassification

    merged_dir = merge_adapter(base, adapter, tmp_path / "merged").output
    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir).eval()
    assert merged.config.id2label == {0: "animals", 1: "travel"}
    with torch.no_grad():
        merged_logits = merged(**batch(merged_dir, texts)).logits
    torch.testing.assert_close(merged_logits, logits, rtol=1e-4, atol=1e-5)
    # and PEFT's own merge agrees
    with torch.no_grad():
        peft_merged = model.merge_and_unload()(**batch(base, texts)).logits
    torch.testing.assert_close(peft_merged, logits, rtol=1e-4, atol=1e-5)


def test_regression_trains_and_reports_mse(base_dir, tmp_path):
    rows = labelled(lambda name: 2.5 if name == "travel" else -1.0)
    sink = ev.ListSink()
    result = run(make_config(base_dir("llama"), tmp_path, rows, validation=rows, problem_type="regression"), sink)
    evaluations = sink.of(ev.Evaluation)
    assert evaluations[-1].metrics["eval_mse"] < 0.25 * evaluations[0].metrics["eval_mse"]
    model = peft_model_from(base_dir("llama"), result.adapter_dir)
    with torch.no_grad():
        out = model(**batch(base_dir("llama"), [r["sentence"] for r in rows])).logits.squeeze(-1)
    truth = torch.tensor([r["category"] for r in rows])
    assert torch.mean((out - truth) ** 2).item() == pytest.approx(evaluations[-1].metrics["eval_mse"], rel=1e-4)


def test_multi_label_trains(base_dir, tmp_path):
    rows = labelled(lambda name: [name, "any"] if name == "travel" else [name])
    sink = ev.ListSink()
    result = run(make_config(base_dir("bert"), tmp_path, rows, validation=rows, problem_type="multi-label"), sink)
    assert json.loads((result.adapter_dir / LABELS_FILE).read_text())["id2label"] == {"0": "animals", "1": "any",
                                                                                         "2": "travel"}
    before, last = sink.of(ev.Evaluation)[0], sink.of(ev.Evaluation)[-1]
    assert last.eval_loss < 0.5 * before.eval_loss, (before, last)
    assert last.metrics["eval_exact_match"] >= 0.8 > before.metrics["eval_exact_match"], (before, last)


def test_validation_label_unknown_to_training_stops_the_run(base_dir, tmp_path):
    rows = labelled()
    sink = ev.ListSink()
    with pytest.raises(DataError, match="validation label 'plants' does not occur in the training data"):
        run(make_config(base_dir("bert"), tmp_path, rows, validation=[{"sentence": "a fox", "category": "plants"}]),
            sink)
    failed = sink.of(ev.Failed)[0]
    assert "plants" in failed.reason and not failed.traceback  # a message for the user, not a traceback


def test_cli_trains_a_classifier_from_a_run_file(base_dir, tmp_path, capsys):
    from workbench.cli import main

    rows = labelled()
    make_config(base_dir("bert"), tmp_path, rows, validation=rows).save(tmp_path / "run.toml")
    code = main(["train", str(tmp_path / "run.toml"), "--set", "training.max_steps=4", "--run-dir", str(tmp_path / "r")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "finished: step 4" in out.out
    assert "2 classes (single-label): animals 6, travel 6" in out.out + out.err
    assert "confusion matrix" in out.out + out.err
    assert (tmp_path / "r" / "adapter" / LABELS_FILE).is_file()

    # a bad label: one line naming the row and what to do, exit code 2, no traceback
    write_rows(tmp_path / "train.jsonl", [*rows, {"sentence": "a fox", "category": 0.5}])
    code = main(["train", str(tmp_path / "run.toml"), "--run-dir", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2 and "line 13: the label 0.5 (column 'category') is a fractional number" in err, err
    assert "Traceback" not in err


def test_a_stopped_classifier_resumes_onto_the_uninterrupted_curve(base_dir, tmp_path):
    """Stopped at step 4 after its checkpoint there, resumed to the end: the same losses as a run never stopped,
    and the same classes (run.toml keeps them, so the head is rebuilt the same)."""
    from workbench.core.control import RunControl
    from workbench.core.training import resume

    rows = labelled()
    config = make_config(base_dir("bert"), tmp_path, rows).copy_with(training={"max_steps": 8, "save_steps": 2})
    control = RunControl()
    stopped = run(config, ev.CallbackSink(lambda e: e.kind == "step" and e.step == 4 and control.request_stop()),
                  control, run_dir=tmp_path / "stopped")
    assert stopped.status == "stopped" and stopped.final_step == 4
    resumed = resume(stopped.run_dir, ev.ListSink())
    straight = run(config, ev.ListSink(), run_dir=tmp_path / "straight")

    def losses(d):
        return [e["loss"] for e in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if e["kind"] == "step"]

    assert resumed.final_step == 8 and len(losses(stopped.run_dir)) == 8
    assert losses(stopped.run_dir) == pytest.approx(losses(straight.run_dir), rel=1e-5)
    assert (resumed.adapter_dir / LABELS_FILE).read_text() == (straight.adapter_dir / LABELS_FILE).read_text()


def test_accuracy_picks_the_best_checkpoint(base_dir, tmp_path):
    rows = labelled()
    config = make_config(base_dir("llama"), tmp_path, rows, validation=rows).copy_with(
        training={"max_steps": 8, "eval_steps": 2, "save_steps": 2}, eval={"best_metric": "accuracy"})
    sink = ev.ListSink()
    run(config, sink)
    chosen = [m.text for m in sink.of(ev.Message) if m.text.startswith("best checkpoint by accuracy")]
    assert chosen, [m.text for m in sink.of(ev.Message)]
    with pytest.raises(Exception, match="without a scorer it is computed for classifiers only"):
        RunConfig.from_dict({"model": {"source": "x"}, "eval": {"best_metric": "accuracy"}})
