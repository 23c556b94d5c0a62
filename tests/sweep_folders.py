"""Run folders of a sweep written by the engine's own writers (``RunConfig.save``, ``JsonlSink``) with evaluation
events whose best steps are known by construction: the sweep table's "best" numbers are read off them in
tests/core/test_sweep_best.py and tests/gui/test_judge_views.py."""

from __future__ import annotations

from workbench.core.config import RunConfig
from workbench.core.events import Evaluation, Finished, JsonlSink, RunStarted

# json_exact peaks at step 20 and falls back; eval_loss keeps falling; perplexity is lowest at 30; json_fields ties
# at 20 and 40 (the earlier step wins, as the Trainer keeps the first best checkpoint). The base model (step 0) has
# the best retention and a json_valid no trained step reaches: neither may count as what the run achieved.
EVALUATIONS = [
    Evaluation(step=0, eval_loss=0.40, metrics={"json_exact": 0.0, "json_fields": 0.2, "json_valid": 0.9,
                                                "retention_agreement": 1.0, "retention_ppl_ratio": 1.0,
                                                "eval_runtime": 0.5}),
    Evaluation(step=10, eval_loss=0.10, metrics={"json_exact": 0.50, "json_fields": 0.80, "json_valid": 0.6,
                                                 "perplexity": 1.4, "retention_agreement": 0.95,
                                                 "retention_ppl_ratio": 1.02, "eval_runtime": 9.0}),
    Evaluation(step=20, eval_loss=0.05, metrics={"json_exact": 0.75, "json_fields": 0.90, "json_valid": 0.7,
                                                 "perplexity": 1.3, "retention_agreement": 0.90,
                                                 "retention_ppl_ratio": 1.05, "eval_runtime": 1.0}),
    Evaluation(step=30, eval_loss=0.04, metrics={"json_exact": 0.70, "json_fields": 0.85, "json_valid": 0.8,
                                                 "perplexity": 1.1, "retention_agreement": 0.80,
                                                 "retention_ppl_ratio": 1.10, "eval_runtime": 2.0}),
    Evaluation(step=40, eval_loss=0.03, metrics={"json_exact": 0.65, "json_fields": 0.90, "json_valid": 0.8,
                                                 "perplexity": 1.2, "retention_agreement": 0.70,
                                                 "retention_ppl_ratio": 1.20, "eval_runtime": 1.5}),
]


def write_run_folder(root, name, r, evaluations):
    config = RunConfig.from_dict({
        "model": {"source": str(root / "no-model")},
        "lora": {"r": r, "alpha": 2 * r},
        "data": {"train_files": [str(root / "train.jsonl")], "validation_files": [str(root / "train.jsonl")]},
        "eval": {"scorers": ["json_valid", "json_exact", "json_fields", "perplexity"], "best_metric": "json_exact",
                 "retention": True},
        "output": {"runs_root": str(root), "name": name, "group": "ranks"},
    })
    run_dir = root / name
    run_dir.mkdir(parents=True)
    config.save(run_dir / "run.toml")
    sink = JsonlSink(run_dir / "metrics.jsonl")
    sink.emit(RunStarted(run_dir=str(run_dir), config=config.model_dump(mode="json"), device="cpu", device_name="CPU",
                         precision="fp32", trainable_params=1000 * r, total_params=10**6, total_steps=40))
    for e in evaluations:
        sink.emit(e)
    sink.emit(Finished(status="finished", adapter_path=str(run_dir / "adapter"), step=40))
    sink.close()
    return run_dir
