"""Data-parallel sweeps over contexts, one process per device.

Every process loads its own copy of the model and works on every N-th item
of a sweep. The per-item results are then gathered, in item order, on all
processes. Only Python objects travel between processes, over the ``gloo``
backend, so the same code runs on CPUs and GPUs.

Launch a script that uses this module with either launcher::

    torchrun --nproc-per-node 2 benchmarks/scaling.py ...
    accelerate launch --num_processes 2 benchmarks/scaling.py ...

Run without a launcher, it is one process and nothing is initialised.

Examples
--------
>>> workers = start_workers()
>>> mine = workers.shard(["a", "b", "c"])
>>> workers.gather([(index, item.upper()) for index, item in mine])
['A', 'B', 'C']
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from steercontrol.exceptions import ConfigurationError

__all__ = ["Workers", "start_workers", "stop_workers"]

T = TypeVar("T")


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigurationError(
            f"Environment variable {name}={text!r} is not an integer; unset it or start the "
            "script with torchrun or accelerate launch, which set it."
        ) from None


@dataclass(frozen=True)
class Workers:
    """The process group of a data-parallel run.

    Attributes
    ----------
    rank : int
        Index of this process, ``0..world_size-1``.
    world_size : int
        Number of processes.
    local_rank : int
        Index of this process on its machine, which selects its GPU.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and prints results."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """This process's GPU when there is one, otherwise the CPU."""
        # NOTE: the GPU branch has not been run; the tests cover CPU processes only.
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return torch.device("cpu")

    def shard(self, items: Sequence[T]) -> list[tuple[int, T]]:
        """Return this process's share of ``items`` as ``(index, item)`` pairs.

        Process ``r`` takes items ``r, r + N, r + 2N, ...``, which balances
        sweeps whose cost grows along the list.
        """
        return [(index, items[index]) for index in range(self.rank, len(items), self.world_size)]

    def gather(self, results: Sequence[tuple[int, Any]]) -> list[Any]:
        """Collect every process's ``(index, result)`` pairs; return the results in index order.

        Every process must call it, with the pairs for the items
        :meth:`shard` gave it. Every process receives the full list.

        Raises
        ------
        ConfigurationError
            If two processes returned the same index, or an index is missing.
        """
        pairs = list(results)
        if self.world_size > 1:
            gathered: list[Any] = [None] * self.world_size
            torch.distributed.all_gather_object(gathered, pairs)
            pairs = [pair for part in gathered for pair in part]
        indices = sorted(index for index, _ in pairs)
        if indices != list(range(len(indices))):
            shown = str(indices[:10])
            if len(indices) > 10:
                shown += "..."
            raise ConfigurationError(
                f"Gathered results have indices {shown}, "
                "not 0..n-1 once each; every process must call gather with the pairs from shard."
            )
        return [result for _, result in sorted(pairs, key=lambda pair: pair[0])]

    def barrier(self) -> None:
        """Wait until every process reaches this point."""
        if self.world_size > 1:
            torch.distributed.barrier()


def start_workers() -> Workers:
    """Join the process group that a launcher set up, or describe a single process.

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (set by ``torchrun`` and
    ``accelerate launch``) and, for more than one process, initialises
    ``torch.distributed`` with the ``gloo`` backend.

    Raises
    ------
    ConfigurationError
        If the variables are not integers or the rank is out of range.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigurationError(
            f"RANK={rank} and WORLD_SIZE={world_size} do not describe a process group "
            "(need 0 <= RANK < WORLD_SIZE); start the script with torchrun or accelerate launch."
        )
    if world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="gloo", rank=rank, world_size=world_size)
    return Workers(rank=rank, world_size=world_size, local_rank=local_rank)


def stop_workers() -> None:
    """Leave the process group, if one was initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
