"""Data-parallel runs under ``torchrun`` / ``accelerate launch``: who writes, and how control reaches every rank.

No home-made distribution: PyTorch's launcher starts the processes and the HF Trainer (through
accelerate) does the data parallelism. This module only adds what a *run* needs on top of that:

* the process group is initialised before the run folder exists, so that rank 0 alone creates it and
  tells the other ranks its path (``share``);
* only rank 0 writes the run folder (run.toml, metrics.jsonl, status, adapter); the Trainer itself
  already saves checkpoints from the main process;
* stop / pause / checkpoint requests arrive at rank 0 (in-process flags or the run folder's control
  file) and one snapshot of them is broadcast to every rank after each step (``requests``), so all ranks
  stop, pause or save at the same step — a rank that stopped alone would hang the others in their next
  collective;
* a step only rank 0 performs (creating the folder, preparing a resume, tokenising first) reports its
  failure to every rank (``on_main``), so no rank is left waiting for a partner that gave up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Literal, TypeVar, overload

from .control import Control
from .errors import TrainingError

T = TypeVar("T")


def launched_world_size() -> int:
    """Processes started by torchrun / accelerate launch (1 for a plain process)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def launched_rank() -> int:
    """This process's global rank as torchrun / accelerate launch set it (0 for a plain process), known before the
    process group is set up."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


@dataclass
class Distributed:
    world_size: int = 1
    rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def setup(cls, device: str) -> "Distributed":
        """Initialise the process group when launched with several processes (gloo on CPU, NCCL on GPU)."""
        if launched_world_size() <= 1:
            return cls()
        from accelerate import PartialState

        state = PartialState(cpu=device == "cpu", backend="gloo" if device == "cpu" else None)
        return cls(world_size=state.num_processes, rank=state.process_index)

    def close(self) -> None:
        """Tear the process group down at the end of a run, on every rank, success or error. A rank whose gloo
        group was left to the interpreter's exit sometimes aborted there ("terminate called without an active
        exception", SIGABRT), and torchrun then reported a stopped or finished run as a crashed worker."""
        if self.world_size == 1:
            return
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a small picklable object, e.g. the run folder's path)."""
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @overload
    def on_main(self, fn: Callable[[], T], *, share_result: Literal[True] = True) -> T: ...

    @overload
    def on_main(self, fn: Callable[[], T], *, share_result: bool) -> T | None: ...

    def on_main(self, fn: Callable[[], T], *, share_result: bool = True) -> T | None:
        """Run ``fn`` on rank 0 only. Every rank gets its result (``share_result``) — or its error.

        A rank-0-only step that fails (the run folder exists, the run is already running…) must fail on
        every rank: the others would otherwise wait in their next collective until the timeout.
        """
        if self.world_size == 1:
            return fn()
        outcome: tuple[str, Any] = ("ok", None)
        result = None
        if self.is_main:
            try:
                result = fn()
                outcome = ("ok", result if share_result else None)
            except BaseException as exc:
                outcome = ("error", f"{type(exc).__name__}: {exc}")
                self.share(outcome)
                raise
        status, value = self.share(outcome)
        if status == "error":
            raise TrainingError(f"rank 0 failed: {value}")
        return result if self.is_main else value

    def main_first(self, fn: Callable[[], T]) -> T:
        """Rank 0 runs ``fn`` first (e.g. tokenising into the datasets cache), then the others reuse its work.
        An error on rank 0 is raised on every rank instead of leaving them waiting."""
        result = self.on_main(fn, share_result=False)
        return result if self.is_main else fn()

    def requests(self, control: Control) -> Requests:
        """One snapshot of the control flags, taken on rank 0 and agreed by every rank.

        Every decision of a step (pause, save, stop) is made on this snapshot, never on the live flags,
        which another thread may change at any moment: ranks acting on different values would issue
        mismatched collectives and hang. Requests made on other ranks are ignored; they reach a run only
        through rank 0 (its RunControl, or the run folder's control file it watches).
        """
        if self.is_main:
            snap = Requests(control.stop_requested, control.pause_requested, control.take_checkpoint_request())
            if self.world_size == 1:
                return snap
        import torch
        import torch.distributed as dist

        flags = torch.zeros(3, dtype=torch.int64)
        if self.is_main:
            flags[:] = torch.tensor([snap.stop, snap.pause, snap.checkpoint], dtype=torch.int64)
        if dist.get_backend() == "nccl":
            flags = flags.cuda()
        dist.broadcast(flags, src=0)
        stop, pause, checkpoint = (bool(x) for x in flags.tolist())
        return Requests(stop, pause, checkpoint)

    def await_resume(self, control: Control, timeout: float = 0.5) -> Requests:
        """One round of a pause: rank 0 waits (up to ``timeout``) for resume or stop; every rank gets the new snapshot."""
        if self.is_main:
            control.wait_while_paused(timeout)
        return self.requests(control)


@dataclass(frozen=True)
class Requests:
    stop: bool
    pause: bool
    checkpoint: bool
