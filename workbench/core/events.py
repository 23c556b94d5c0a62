"""Events: the only channel out of the engine.

Every long job (training, merging, exporting, converting) reports through a *sink*: any object with an
``emit(event)`` method, or a plain callable. Events are small frozen dataclasses that turn into one JSON
object each (``to_json``), so the same stream can be

* appended to ``metrics.jsonl`` in a run folder (``JsonlSink``) and read back by another process,
* printed by the CLI (the CLI's own sink), or
* re-emitted as one Qt signal by a GUI worker (the GUI's sink) and drawn on the GUI thread.

``event_from_dict`` reverses ``to_dict``, so a reader of ``metrics.jsonl`` gets the same objects back.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Protocol, runtime_checkable

__all__ = [
    "Event",
    "RunStarted",
    "Step",
    "Evaluation",
    "CheckpointSaved",
    "Sample",
    "Paused",
    "Resumed",
    "Finished",
    "Failed",
    "Progress",
    "Message",
    "Sink",
    "JsonlSink",
    "ListSink",
    "MultiSink",
    "CallbackSink",
    "NullSink",
    "event_from_dict",
    "as_sink",
]


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str] = "event"
    time: float = field(default_factory=time.time, kw_only=True)
    world_size: int = field(default=1, kw_only=True)  # processes training the run (torchrun); stamped by the engine

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), default=_json_default, allow_nan=True)


@dataclass(frozen=True)
class RunStarted(Event):
    kind: ClassVar[str] = "run_started"
    run_dir: str
    config: dict[str, Any]
    device: str
    device_name: str
    precision: str
    trainable_params: int
    total_params: int
    total_steps: int
    global_batch: int = 1
    resumed_from_step: int = 0
    train_examples: int = 0
    validation_examples: int = 0


@dataclass(frozen=True)
class Step(Event):
    kind: ClassVar[str] = "step"
    step: int
    total_steps: int
    epoch: float
    loss: float
    learning_rate: float
    grad_norm: float | None = None
    tokens_per_second: float | None = None  # real (non-padding) tokens, template and prompt tokens included
    tokens_seen: int = 0
    memory_bytes: int | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None
    # What users compare across tools: tokens that carry loss, and examples trained on (core/loss.LossCounts).
    trained_tokens_per_second: float | None = None
    examples_per_second: float | None = None
    trained_tokens_seen: int = 0
    # The training method's own numbers for the step (preference training: rewards/margins, rewards/chosen, …).
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluation(Event):
    kind: ClassVar[str] = "evaluation"
    step: int
    eval_loss: float
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckpointSaved(Event):
    kind: ClassVar[str] = "checkpoint"
    step: int
    path: str


@dataclass(frozen=True)
class Sample(Event):
    kind: ClassVar[str] = "sample"
    step: int
    prompt: str
    completion: str


@dataclass(frozen=True)
class Paused(Event):
    kind: ClassVar[str] = "paused"
    step: int


@dataclass(frozen=True)
class Resumed(Event):
    kind: ClassVar[str] = "resumed"
    step: int


@dataclass(frozen=True)
class Finished(Event):
    kind: ClassVar[str] = "finished"
    status: str  # "finished" | "stopped"
    adapter_path: str
    step: int
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Failed(Event):
    kind: ClassVar[str] = "failed"
    reason: str
    step: int | None = None
    traceback: str = ""
    hint: str = ""


@dataclass(frozen=True)
class Progress(Event):
    """Progress of a non-training job (merge, export, conversion): ``done``/``total`` in ``unit``."""

    kind: ClassVar[str] = "progress"
    task: str
    done: int
    total: int
    unit: str = "bytes"
    detail: str = ""


@dataclass(frozen=True)
class Message(Event):
    """Free-form information or warning for the log panel / console."""

    kind: ClassVar[str] = "message"
    text: str
    level: str = "info"  # "info" | "warning"


_EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (RunStarted, Step, Evaluation, CheckpointSaved, Sample, Paused, Resumed, Finished, Failed, Progress, Message)
}


_FIELD_NAMES: dict[str, frozenset[str]] = {kind: frozenset(f.name for f in fields(cls)) for kind, cls in _EVENT_TYPES.items()}


def event_from_dict(d: dict[str, Any]) -> Event | None:
    """Rebuild an event from ``to_dict`` output; unknown kinds or fields (from newer versions) → None / ignored."""
    kind = d.get("kind", "")
    cls = _EVENT_TYPES.get(kind)
    if cls is None:
        return None
    names = _FIELD_NAMES[kind]
    try:
        return cls(**{k: v for k, v in d.items() if k in names})
    except TypeError:
        return None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    return str(obj)


# ---------------------------------------------------------------------------------------------- sinks


@runtime_checkable
class Sink(Protocol):
    """What a long job reports to; job internals take a ``Sink`` (``as_sink`` has already run)."""

    def emit(self, event: Event) -> None: ...


# What the engine's entry points accept as ``sink=``: a sink, a plain callable, or None (events dropped).
SinkLike = Sink | Callable[[Event], None] | None


class NullSink:
    def emit(self, event: Event) -> None:
        pass


class ListSink:
    """Keeps every event (tests, and short jobs whose caller wants the events afterwards)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, cls: type[Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]


class CallbackSink:
    def __init__(self, fn: Callable[[Event], None]):
        self.fn = fn

    def emit(self, event: Event) -> None:
        self.fn(event)


class MultiSink:
    """Forwards to several sinks; one failing sink (a closed console, say) does not stop the others."""

    def __init__(self, sinks: Iterable[SinkLike]):
        self.sinks = [as_sink(s) for s in sinks]

    def emit(self, event: Event) -> None:
        for s in self.sinks:
            try:
                s.emit(event)
            except Exception as exc:  # a display problem must never kill a training run
                print(f"workbench: event sink {type(s).__name__} failed: {exc}", file=sys.stderr)


class JsonlSink:
    """Appends one JSON line per event and flushes it, so another process can tail the file live.

    Each line is written with a single ``write`` call on a file opened in append mode, so concurrent
    readers see whole lines except, at worst, a torn last line after a crash (readers skip it).
    """

    def __init__(self, path: str | Path, fsync: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")
        self._fsync = fsync
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        line = event.to_json() + "\n"
        with self._lock:
            if self._fh.closed:
                return
            self._fh.write(line)
            self._fh.flush()
            if self._fsync or isinstance(event, (Finished, Failed, CheckpointSaved)):
                os.fsync(self._fh.fileno())

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.close()

    def __enter__(self) -> "JsonlSink":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def as_sink(obj: SinkLike) -> Sink:
    if obj is None:
        return NullSink()
    if hasattr(obj, "emit"):
        return obj
    if callable(obj):
        return CallbackSink(obj)
    raise TypeError(f"not an event sink: {obj!r}")
