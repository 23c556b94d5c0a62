"""Sweeps: one run file plus a grid (or a list) of values for any of its fields, expanded into ordinary runs.

``workbench sweep RUN.toml --grid lora.r=4,8,16 --grid training.learning_rate=1e-4,3e-4`` makes six runs, one per
combination; ``--list`` pairs the values instead (the first value of every field, then the second, …). Every run is
a normal run folder (under the run file's ``runs_root``) whose ``output.group`` names the sweep, so the Runs tab and
``workbench runs`` can show them together, and the queue (``core/run_queue.py``) runs them one after another.

After the runs, ``sweep_table`` reads their folders back: the varied values, trainable parameters, adapter size,
training time, last and best evaluation loss, and the best value of every metric the evaluations recorded (by that
metric's direction, with the step it came from) — and ``pareto_front`` marks the runs no other run beats on both
cost (trainable parameters) and quality (best evaluation loss, else the last training loss): the rank trade-off.

"Best" is over the evaluations after step 0: the evaluation before the first step scores the base model, not
anything the run trained. Retention is the exception to "best by direction": its best is by construction the
evaluation that changed the model least, so a row gives it at the step of the run's best checkpoint (the best
``eval.best_metric``) — what the model you would keep has forgotten.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .config import CLASSIFIER_METRICS, LOWER_IS_BETTER, ConfigError, RunConfig

__all__ = ["SweepPoint", "SweepRow", "Best", "best_metrics", "lower_is_better", "parse_axes", "expand", "sweep_table", "pareto_front", "sweep_groups", "varied_fields",
           "MAX_RUNS"]

MAX_RUNS = 256  # a grid past this is almost surely a typo (4 fields × 5 values is 625 runs)


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: its name, the values it varies (``{"lora.r": "8"}``), and its configuration."""

    name: str
    values: dict[str, str]
    config: RunConfig


def parse_axes(items: Sequence[str]) -> dict[str, list[str]]:
    """``["lora.r=4,8,16"]`` → ``{"lora.r": ["4", "8", "16"]}``. Values are split at commas outside brackets and
    quotes, so ``lora.target_modules=["q_proj","v_proj"],["q_proj"]`` gives two lists. Raises ``ConfigError``."""
    axes: dict[str, list[str]] = {}
    problems = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or "." not in key or not raw.strip():
            problems.append(f"{item!r}: expected section.field=value1,value2,… (e.g. lora.r=4,8,16)")
            continue
        if key in axes:
            problems.append(f"{key} is given twice: put all its values in one --grid")
            continue
        values = _split_values(raw)
        if len(set(values)) != len(values):
            problems.append(f"{key} repeats a value: {raw}")
            continue
        axes[key] = values
    if problems:
        raise ConfigError(problems, "the sweep", "fix the --grid / --list values")
    return axes


def _split_values(raw: str) -> list[str]:
    values, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(raw):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            values.append(raw[start:i].strip())
            start = i + 1
    values.append(raw[start:].strip())
    return [v for v in values if v]


def expand(config: RunConfig, axes: dict[str, list[str]], *, paired: bool = False, name: str | None = None) -> list[SweepPoint]:
    """The runs of a sweep over ``axes``: every combination (a grid), or with ``paired`` the i-th value of every
    field together (a list; all fields need the same number of values). Each configuration is validated as a
    run file would be; the runs are named ``<sweep>-<field><value>-…`` and carry the sweep's name in
    ``output.group``. Raises ``ConfigError`` naming the run and the field when a value is not valid."""
    if not axes:
        raise ConfigError(["a sweep needs at least one --grid or --list field"], "the sweep",
                          "e.g. workbench sweep RUN.toml --grid lora.r=4,8,16")
    keys = list(axes)
    if paired:
        lengths = {len(v) for v in axes.values()}
        if len(lengths) != 1:
            raise ConfigError(["--list fields need the same number of values; got "
                               + ", ".join(f"{k}: {len(v)}" for k, v in axes.items())], "the sweep",
                              "give each --list field one value per run, or use --grid for every combination")
        combos = list(zip(*axes.values()))
    else:
        combos = list(itertools.product(*axes.values()))
    if len(combos) > MAX_RUNS:
        raise ConfigError([f"the sweep would make {len(combos)} runs (at most {MAX_RUNS})"], "the sweep",
                          "sweep fewer fields or values at once")
    sweep_name = name or config.output.group or config.output.name or "sweep"
    points, seen = [], set()
    for combo in combos:
        values = dict(zip(keys, combo))
        run_name = _run_name(sweep_name, values)
        if run_name in seen:  # two values that print the same after cleaning ("1e-4" and "0.0001")
            run_name = f"{run_name}-{len(seen) + 1}"
        seen.add(run_name)
        try:
            point_config = config.with_overrides([f"{k}={v}" for k, v in values.items()])
        except ConfigError as exc:
            raise ConfigError(exc.problems, f"sweep run {run_name}", "fix the --grid / --list values") from None
        # Each run gets a folder of its own under runs_root, named after its values; the group ties them together.
        point_config = point_config.copy_with(output={"name": run_name, "group": sweep_name, "run_dir": None})
        points.append(SweepPoint(run_name, values, point_config))
    return points


def _run_name(sweep: str, values: dict[str, str]) -> str:
    parts = [sweep]
    for key, value in values.items():
        short = key.rsplit(".", 1)[-1]
        short = {"learning_rate": "lr", "lora_alpha": "alpha", "target_modules": "targets"}.get(short, short)
        parts.append(short + re.sub(r"[^A-Za-z0-9.+-]+", "_", value).strip("_")[:24])
    return "-".join(parts)


# ------------------------------------------------------------------------------------------------ results


@dataclass
class SweepRow:
    """One run of a sweep, read back from its folder."""

    name: str
    path: Path
    status: str
    values: dict[str, str]
    trainable_params: int | None
    adapter_bytes: int | None
    duration_s: float | None
    last_loss: float | None
    best_eval_loss: float | None
    on_front: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # the last evaluation's metrics (task scores, retention)
    best: dict[str, "Best"] = field(default_factory=dict)  # each metric's best evaluation (see best_metrics)

    @property
    def quality(self) -> float | None:
        """Lower is better: the best evaluation loss, else the last training loss."""
        value = self.best_eval_loss if self.best_eval_loss is not None else self.last_loss
        return value if value is not None and math.isfinite(value) else None


def sweep_table(run_dirs: Sequence[Path], varied: Sequence[str]) -> list[SweepRow]:
    """A row per run folder: its values of the ``varied`` fields (read from its own run.toml), trainable
    parameters (from its run_started event), adapter size, time and losses, with the Pareto front marked."""
    from .runs import RunFolder, read_events, summarize_run

    rows = []
    for run_dir in run_dirs:
        summary = summarize_run(run_dir)
        folder = RunFolder(run_dir)
        try:
            data = RunConfig.from_toml(folder.run_file).model_dump(mode="json")
        except ConfigError:
            data = {}
        values = {key: _lookup(data, key) for key in varied}
        trainable, last_metrics, best = None, {}, {}
        if folder.metrics_file.is_file():
            events = read_events(run_dir)
            started = [e for e in events if e.kind == "run_started"]
            trainable = started[0].trainable_params if started else None
            evaluations = [e for e in events if e.kind == "evaluation"]
            last_metrics = dict(evaluations[-1].metrics) if evaluations else {}
            best = best_metrics(evaluations, _lookup(data, "eval.best_metric") if data else "eval_loss")
        weights = folder.adapter_dir / "adapter_model.safetensors"
        rows.append(SweepRow(summary.name, Path(run_dir), summary.status.value, values, trainable,
                             weights.stat().st_size if weights.is_file() else None, summary.duration_s,
                             summary.last_loss, summary.best_eval_loss, extra=last_metrics, best=best))
    front = pareto_front([(r.trainable_params, r.quality) for r in rows])
    for i in front:
        rows[i].on_front = True
    return rows


@dataclass(frozen=True)
class Best:
    """A metric's best value over a run's evaluations and the step it came from; ``at_best_checkpoint`` when it is
    not the metric's own best but its value at the step of the best checkpoint (retention)."""

    value: float
    step: int
    at_best_checkpoint: bool = False


RETENTION_METRICS = ("retention_agreement", "retention_ppl_ratio")


def lower_is_better(name: str) -> bool | None:
    """A metric's direction: True when lower is better (losses, perplexity, perplexity ÷ base, mse), False when
    higher is (the scorers, a classifier's accuracy and F1, agreement with the base), None for what is no quality
    measure at all (the evaluation's runtime, samples per second)."""
    from .scorers import SCORERS

    bare = name.removeprefix("eval_")
    if name in LOWER_IS_BETTER or bare in LOWER_IS_BETTER or bare == "retention_ppl_ratio":
        return True
    if bare in SCORERS or bare in CLASSIFIER_METRICS or bare == "retention_agreement":
        return False
    return None


def best_metrics(evaluations: Sequence[Any], best_metric: str = "eval_loss") -> dict[str, Best]:
    """``{metric: Best}`` from a run's evaluation events (``step``, ``eval_loss``, ``metrics``): each quality
    metric's best value after step 0 by its direction, the earliest step on a tie (as the Trainer keeps the first
    best checkpoint); ``eval_loss`` included. Retention is given at the step where ``best_metric`` was best."""
    trained = [e for e in evaluations if e.step > 0]
    series: dict[str, list[tuple[int, float]]] = {}
    for e in trained:
        for name, value in {"eval_loss": e.eval_loss, **e.metrics}.items():
            if isinstance(value, (int, float)) and math.isfinite(value) and lower_is_better(name) is not None:
                series.setdefault(name, []).append((e.step, float(value)))
    best: dict[str, Best] = {}
    for name, points in series.items():
        sign = 1.0 if lower_is_better(name) else -1.0
        step, value = min(points, key=lambda p: (sign * p[1], p[0]))
        best[name] = Best(value, step)
    key = best_metric if best_metric in best else f"eval_{best_metric}"
    if key in best:
        for name in RETENTION_METRICS:
            value = dict(series.get(name, [])).get(best[key].step)
            if value is not None:
                best[name] = Best(value, best[key].step, at_best_checkpoint=True)
            else:
                best.pop(name, None)
    else:
        for name in RETENTION_METRICS:
            best.pop(name, None)
    return best


def _lookup(data: dict[str, Any], key: str) -> str:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return "?"
        node = node[part]
    return str(node)


def pareto_front(points: Sequence[tuple[float | None, float | None]]) -> list[int]:
    """Indices of the points (cost, loss) — both lower-is-better — that no other point beats on both, i.e. is
    no worse on either and better on one. Points with a missing value are never on the front."""
    known = [(i, c, q) for i, (c, q) in enumerate(points) if c is not None and q is not None]
    front = []
    for i, cost, loss in known:
        beaten = any((c <= cost and q <= loss) and (c < cost or q < loss) for j, c, q in known if j != i)
        if not beaten:
            front.append(i)
    return front


# ------------------------------------------------------------------------------------------------ groups

IGNORED_DIFFERENCES = ("output.name", "output.run_dir")  # differ in every run of a sweep by construction


def sweep_groups(run_dirs: Sequence[Path]) -> dict[str, list[Path]]:
    """The run folders of each group (``output.group``, set by ``workbench sweep``), in the order given; runs
    without a group or with an unreadable run file are left out."""
    from .runs import RunFolder

    groups: dict[str, list[Path]] = {}
    for run_dir in run_dirs:
        try:
            group = RunConfig.from_toml(RunFolder(run_dir).run_file).output.group
        except (ConfigError, OSError):
            continue
        if group:
            groups.setdefault(group, []).append(Path(run_dir))
    return groups


def varied_fields(run_dirs: Sequence[Path]) -> list[str]:
    """The dotted fields (``lora.r``) whose value is not the same in every run: what a sweep varied."""
    from .runs import RunFolder

    flat: list[dict[str, Any]] = []
    for run_dir in run_dirs:
        try:
            flat.append(_flatten(RunConfig.from_toml(RunFolder(run_dir).run_file).model_dump(mode="json")))
        except (ConfigError, OSError):
            continue
    keys = sorted(set().union(*flat)) if flat else []
    return [k for k in keys if k not in IGNORED_DIFFERENCES and len({repr(f.get(k)) for f in flat}) > 1]


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
