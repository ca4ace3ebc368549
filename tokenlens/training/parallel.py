"""Data-parallel training: this process's place in a run launched with more than one process.

Under ``accelerate launch`` or ``torchrun`` with ``WORLD_SIZE > 1`` the trainer runs data-parallel through
``accelerate.Accelerator``; a single process gets a context with no accelerator and never touches
``torch.distributed``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from tokenlens.errors import TokenlensError


@dataclass(frozen=True)
class Parallel:
    """This process's place in a data-parallel run; ``accelerator`` is None in a single process."""

    accelerator: Any
    rank: int
    processes: int

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def total(self, value: float) -> float:
        """``value`` summed over all processes."""
        if self.accelerator is None:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.accelerator.device)
        return float(self.accelerator.reduce(tensor, reduction="sum").item())

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any process (so all stop after the same step)."""
        return self.total(float(flag)) > 0 if self.accelerator is not None else flag


def parallel_context() -> Parallel:
    """The data-parallel context: an ``accelerate.Accelerator`` when launched with more than one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Parallel(None, 0, 1)
    from accelerate import Accelerator

    # precision is the trainer's own (bf16 autocast on CUDA); without CUDA, accelerate needs cpu=True to see
    # torchrun's processes (gloo)
    accelerator = Accelerator(mixed_precision="no", cpu=not torch.cuda.is_available())
    if accelerator.num_processes != int(os.environ["WORLD_SIZE"]):
        raise TokenlensError(
            f"launched with WORLD_SIZE={os.environ['WORLD_SIZE']} but accelerate sees "
            f"{accelerator.num_processes} process(es); check the launcher's settings"
        )
    return Parallel(accelerator, accelerator.process_index, accelerator.num_processes)
