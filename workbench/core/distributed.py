"""Data-parallel runs under ``torchrun`` / ``accelerate launch``: who writes, and how control reaches every rank.

No home-made distribution: PyTorch's launcher starts the processes and the HF Trainer (through
accelerate) does the data parallelism. This module only adds what a *run* needs on top of that:

* the process group is initialised before the run folder exists, so that rank 0 alone creates it and
  tells the other ranks its path (``share``);
* only rank 0 writes the run folder (run.toml, metrics.jsonl, status, adapter); the Trainer itself
  already saves checkpoints from the main process;
* stop / pause / checkpoint requests arrive at rank 0 (in-process flags or the run folder's control
  file) and are broadcast to every rank after each step (``sync``), so all ranks stop, pause or save at
  the same step — a rank that stopped alone would hang the others in their next collective.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Iterator

from .control import RunControl


def launched_world_size() -> int:
    """Processes started by torchrun / accelerate launch (1 for a plain process)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


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

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a small picklable object, e.g. the run folder's path)."""
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sync(self, control: RunControl) -> None:
        """Make every rank's control flags equal to rank 0's. Cheap: three integers, once per step."""
        if self.world_size == 1:
            return
        import torch
        import torch.distributed as dist

        flags = torch.zeros(3, dtype=torch.int64)
        if self.is_main:
            flags[0] = int(control.stop_requested)
            flags[1] = int(control.pause_requested)
            flags[2] = int(control.take_checkpoint_request())
        if dist.get_backend() == "nccl":
            flags = flags.cuda()
        dist.broadcast(flags, src=0)
        stop, pause, checkpoint = (bool(x) for x in flags.tolist())
        if self.is_main:
            if checkpoint:  # rank 0 consumed the request above; keep it for the engine's own check
                control.request_checkpoint()
            return
        if stop:
            control.request_stop()
        elif pause:
            control.request_pause()
        else:
            control.request_resume()
        if checkpoint:
            control.request_checkpoint()

    def wait_while_paused(self, control: RunControl, timeout: float = 0.5) -> None:
        """One round of a pause: rank 0 waits for its flags to change, then every rank learns the new state."""
        if self.is_main:
            control.wait_while_paused(timeout)
        self.sync(control)

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. tokenising into the datasets cache); the others then reuse its work."""
        if self.world_size == 1:
            with nullcontext():
                yield
            return
        from accelerate import PartialState

        with PartialState().main_process_first():
            yield
