"""Several processes under ``torchrun``: PyTorch's own torch.distributed (NCCL on GPUs, gloo on CPUs).

``session(device, timeout_s)`` starts the process group when torchrun started this process as one of several
(``WORLD_SIZE`` > 1) and gives the ``Ranks`` every distributed step asks; started any other way (or with one
process) it starts nothing, and the callers run exactly as a single process does. Every collective waits at most
``timeout_s``: a rank that stops answering ends the job with ``lost_message``'s one line instead of a hang (a rank
that exits is noticed sooner: torchrun stops the others).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
from collections.abc import Iterator

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 600.0
"""How long a collective waits for the other ranks. Long work one rank does alone (the audio encoder's fine-tuning,
validation pictures, a straggler's last render chunk) must fit in it."""


class Ranks:
    """This process's place in the job: ``rank`` of ``world``, ``local`` on its machine (its GPU's index)."""

    def __init__(self, rank: int = 0, world: int = 1, local: int = 0, device: torch.device | None = None):
        self.rank, self.world, self.local = rank, world, local
        self.device = device
        """Where the collectives' tensors live (the rank's GPU under NCCL, the CPU under gloo)."""

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes files and logs."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one process: the collectives below talk to the others (with one, each is the identity)."""
        return self.world > 1

    def share(self, obj):
        """Rank 0's ``obj`` on every rank (any picklable value; the others' ``obj`` is ignored)."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def max(self, values: list[float]) -> list[float]:
        """The largest of every rank's ``values``, element by element."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()


def world_size() -> int:
    """How many processes torchrun started for this job (1 when it did not start this one)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def launched_rank() -> int:
    """This process's rank as torchrun told it (0 when torchrun did not start it), for messages printed once."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """The device of this rank: its own GPU (``LOCAL_RANK``) when the run is on CUDA and several ranks share a
    machine, else ``device`` itself."""
    if device.type == "cuda" and ranks.active:
        return torch.device("cuda", ranks.local)
    return device


@contextlib.contextmanager
def session(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Ranks]:
    """The process group of this torchrun job for the block (NCCL when ``device`` is a GPU, else gloo), or a
    one-process ``Ranks`` when there is no job. Destroyed on the way out, errors included."""
    world = world_size()
    if world == 1:
        yield Ranks()
        return
    if timeout_s <= 0:
        raise ValueError(f"the ranks' timeout must be positive, not {timeout_s}")
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ValueError(f"rank {rank}: this machine has {torch.cuda.device_count()} GPU(s) and torchrun started "
                             f"more processes on it; give --nproc_per_node {torch.cuda.device_count()} or fewer")
        torch.cuda.set_device(local)
        backend, where = "nccl", torch.device("cuda", local)
    else:
        backend, where = "gloo", torch.device("cpu")
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"rank {rank}: the {world} ranks could not start their {backend} group: "
                         f"{_first_line(e)}") from None
    try:
        yield Ranks(rank, world, local, where)
    finally:
        dist.destroy_process_group()


_COLLECTIVE_WORDS = ("gloo", "nccl", "timed out", "connection closed", "connection reset", "processgroup")


def is_lost_rank(ranks: Ranks, error: BaseException) -> bool:
    """Whether ``error`` is a collective's failure: torch.distributed's own errors, or the RuntimeError a backward
    pass raises when DistributedDataParallel's gradient all-reduce times out or loses a peer."""
    if not ranks.active:
        return False
    if isinstance(error, dist.DistError):
        return True
    return isinstance(error, RuntimeError) and any(w in str(error).lower() for w in _COLLECTIVE_WORDS)


def lost_message(ranks: Ranks, error: BaseException, timeout_s: float) -> str:
    """One line for a collective that failed: which rank saw it, and what the cause likely is."""
    return (f"rank {ranks.rank} of {ranks.world}: another rank stopped answering (it failed, was killed, or hangs "
            f"longer than the {timeout_s:.0f} s timeout): {_first_line(error)}")


def _first_line(error: BaseException) -> str:
    """An error's first sentence without gloo's "[source file:line]" prefix."""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    first = re.sub(r"^\[[^\]]*\]\s*", "", first)
    return first.split(". ")[0][:200]
