"""Soak: 10,000 optimizer steps through the engine with the window's event path attached; resident memory
at the start and the end, and the event throughput.

    .venv/bin/python bench/soak.py                  # 10,000 steps, a few minutes on 2 CPU cores
    .venv/bin/python bench/soak.py --steps 2000     # a quick look

The model is as small as a real one gets (llama, hidden 16, one block, sequences of ≤ 16 tokens, batch
1, CPU), so the time goes into what a long run repeats around each step — the Trainer's loop, the
engine's callback and events, the run folder (``metrics.jsonl``, ``status.json``, heartbeat and
control-file thread, a checkpoint every 1,000 steps) and the window's side of the events — which is
where a leak would be.

The window's side is mimicked, not run: ``workbench.gui.workers.TrainWorker.emit`` re-emits each event as
one queued Qt signal, and the training panel appends what arrives to a pending list that a 50 ms timer
drains — steps into growable numpy series (``plots.Series``) for the five plots plus the incremental
smoothed loss, other events into the log. ``WindowSink`` below does the same with a lock-protected
queue and a drain thread on the same 50 ms period, keeping the same data (it calls ``gc.freeze()`` on
``RunStarted`` as the worker does). Real Qt would add a QApplication, pyqtgraph and a display to a
measurement about the engine; the GUI's own memory and frame times are covered by
``bench/gui_responsiveness.py``.

Resident memory (psutil RSS) is read at step 100 (after warm-up: model, data, optimizer state, first
checkpoint paths all allocated), every 1,000 steps, and at the last step. Target: growth from step 100
to the end under 5 %. (``--trim`` returns the heap glibc keeps after it was freed before each reading,
which separates memory still in use from allocator retention.) Events/s is the number of events that reached the drain thread divided by the
training wall time (first to last step); per-step events are a ``Step`` each (logging every step).
"""

from __future__ import annotations

import os
import sys

# bench/inspect.py would shadow the stdlib's inspect module (which dataclasses imports) for every script here.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import psutil  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "tests"))  # tiny.py: tiny models and tokenizer built offline

DRAIN_INTERVAL_S = 0.050  # the training panel's FLUSH_INTERVAL_MS
SAMPLE_EVERY = 1000
WARM_STEP = 100


class Series:
    """x/y in numpy buffers that double when full (as ``workbench.gui.widgets.plots.Series``)."""

    def __init__(self, capacity: int = 1024):
        self._x, self._y, self.n = np.empty(capacity), np.empty(capacity), 0

    def append(self, x: float, y: float) -> None:
        if self.n == len(self._x):
            self._x = np.concatenate([self._x, np.empty(len(self._x))])
            self._y = np.concatenate([self._y, np.empty(len(self._y))])
        self._x[self.n], self._y[self.n] = x, y
        self.n += 1


class WindowSink:
    """The engine-to-window event path without Qt: emit() on the engine thread queues the event (a
    queued signal); a drain thread takes the queue every 50 ms and folds it into plot series and a log."""

    def __init__(self, trim=None) -> None:
        self.trim = trim  # glibc's malloc_trim, to tell freed-but-kept heap from memory still in use
        self.pending: list = []
        self.lock = threading.Lock()
        self.series = {name: Series() for name in ("loss", "smoothed", "learning_rate", "grad_norm", "tokens_per_second", "memory")}
        self.log: list[str] = []
        self.received = 0
        self.drains = 0
        self.largest_batch = 0
        self.lag_s: list[float] = []  # per drain: age of its oldest event
        self.rss: dict[int, int] = {}  # step -> resident bytes (read on the engine thread)
        self.first_step_at = self.last_step_at = 0.0
        self._ema, self._debias = 0.0, 1.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain_loop, name="window", daemon=True)
        self._thread.start()

    # engine thread -----------------------------------------------------------------------------------
    def emit(self, event) -> None:
        if event.kind == "run_started":
            gc.freeze()  # as TrainWorker.emit does
        if event.kind == "step":
            now = time.perf_counter()
            self.first_step_at = self.first_step_at or now
            self.last_step_at = now
            if event.step == WARM_STEP or event.step % SAMPLE_EVERY == 0 or event.step == event.total_steps:
                if self.trim is not None:
                    self.trim(0)
                self.rss[event.step] = psutil.Process().memory_info().rss
        with self.lock:
            self.pending.append((time.perf_counter(), event))

    # window thread -----------------------------------------------------------------------------------
    def _drain_loop(self) -> None:
        while not self._stop.wait(DRAIN_INTERVAL_S):
            self.drain()

    def drain(self) -> None:
        with self.lock:
            batch, self.pending = self.pending, []
        if not batch:
            return
        self.drains += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        self.lag_s.append(time.perf_counter() - batch[0][0])
        for _, e in batch:
            self.received += 1
            if e.kind == "step":
                s = self.series
                s["loss"].append(e.step, e.loss)
                self._ema = self._ema * 0.9 + 0.1 * e.loss
                self._debias *= 0.9
                s["smoothed"].append(e.step, self._ema / (1 - self._debias))
                s["learning_rate"].append(e.step, e.learning_rate)
                s["grad_norm"].append(e.step, e.grad_norm if e.grad_norm is not None else np.nan)
                s["tokens_per_second"].append(e.step, e.tokens_per_second or np.nan)
                s["memory"].append(e.step, e.memory_bytes or np.nan)
            else:
                self.log.append(f"{e.kind}: {getattr(e, 'step', '')}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.drain()


def build(work: Path):
    import tiny

    from workbench.core.config import RunConfig

    model = tiny.save_model("llama", work / "model", initializer_range=0.3, hidden_size=16, intermediate_size=32,
                            num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    words = tiny.CORPUS.split()
    rows = [{"text": " ".join(words[(i + k) % len(words)] for k in range(6))} for i in range(0, 64 * 3, 3)]
    data = work / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return model, data, RunConfig


def event_path_capacity(config, n: int = 20_000) -> float:
    """Step events per second that the run folder's recorder and the window sink take, with no training."""
    from workbench.core.events import MultiSink, Step
    from workbench.core.runs import RunRecorder, create_run

    folder = create_run(config)
    sink = WindowSink()
    with RunRecorder(folder) as recorder:
        both = MultiSink([recorder, sink])
        started = time.perf_counter()
        for i in range(1, n + 1):
            both.emit(Step(step=i, total_steps=n, epoch=0.0, loss=1.0, learning_rate=1e-3, grad_norm=0.5,
                           tokens_per_second=1000.0, tokens_seen=i, memory_bytes=1, elapsed_s=0.0))
        took = time.perf_counter() - started
    sink.close()
    assert sink.received == n
    return n / took


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--save-steps", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1,
                   help="torch compute threads (default 1: for a model this small more threads only add "
                        "synchronisation, and on a shared machine waiting for a core — 8 instead of 50 steps/s here)")
    p.add_argument("--trim", action="store_true",
                   help="diagnostic: call glibc's malloc_trim(0) before each memory reading, so that heap the "
                        "allocator keeps after it was freed does not count (Linux only)")
    p.add_argument("--work", help="keep the run here (default: a temporary folder, removed afterwards)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="soak-"))
    try:
        import torch

        from workbench.core.training import run

        torch.set_num_threads(args.threads)
        model, data, RunConfig = build(work)
        config = RunConfig.from_dict({
            "model": {"source": str(model)},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "preset": "all-linear"},
            "data": {"train_files": [str(data)], "max_length": 16, "packing": False, "train_on": "all"},
            "training": {"max_steps": args.steps, "batch_size": 1, "logging_steps": 1, "save_steps": args.save_steps,
                         "save_total_limit": 2, "learning_rate": 1e-3, "scheduler": "constant", "warmup_ratio": 0.0,
                         "device": "cpu"},
            "output": {"runs_root": str(work / "runs")},
        })
        trim = None
        if args.trim:
            import ctypes

            trim = ctypes.CDLL("libc.so.6").malloc_trim
        sink = WindowSink(trim)
        started = time.perf_counter()
        result = run(config, sink)
        wall = time.perf_counter() - started
        sink.close()

        train_s = sink.last_step_at - sink.first_step_at
        steps = sorted(sink.rss)
        start, end = sink.rss[WARM_STEP], sink.rss[steps[-1]]
        growth = (end - start) / start
        metrics = (result.run_dir / "metrics.jsonl").stat().st_size
        lag = np.array(sink.lag_s)
        print(f"{result.final_step} steps ({result.status}) in {train_s:.0f} s of training, {wall:.0f} s in all: "
              f"{result.final_step / train_s:.0f} steps/s")
        print(f"events: {sink.received} reached the window thread in {sink.drains} drains "
              f"({sink.received / train_s:.0f} events/s; largest batch {sink.largest_batch}; "
              f"oldest event per drain waited median {np.median(lag) * 1000:.0f} ms, max {lag.max() * 1000:.0f} ms)")
        print("resident memory (MiB) by step: " + ", ".join(f"{s}: {sink.rss[s] / 2**20:.1f}" for s in steps))
        print(f"RSS step {WARM_STEP} → step {steps[-1]}: {start / 2**20:.1f} → {end / 2**20:.1f} MiB, "
              f"growth {growth * 100:+.2f} % (target < 5 %)")
        print(f"metrics.jsonl: {metrics / 2**20:.1f} MiB; plot points kept: {sink.series['loss'].n} per series")
        capacity = event_path_capacity(config.copy_with(output={"run_dir": str(work / "capacity")}))
        print(f"the event path alone (RunRecorder → metrics.jsonl and status.json, plus the window sink), "
              f"without training: {capacity:,.0f} events/s")
        ok = growth < 0.05 and sink.series["loss"].n == result.final_step
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
