"""Several trainer processes of one run (``torchrun`` / ``accelerate launch``), over torch.distributed.

    torchrun --nproc-per-node 2 -m grpo_math train --max-steps 10
    accelerate launch --num-processes 2 -m grpo_math train --max-steps 10

How the ranks share a step:

- **Rank 0 samples, every rank trains.** Rank 0 alone talks to the generator servers: it takes the
  step's batch (sampled now, or ahead by the producer with ``--max-staleness``) and broadcasts it;
  it alone pushes the adapter, evaluates, writes metrics, trackio and checkpoints. One sampler
  keeps one adapter version per step, and the pool, retries, staleness and ``--max-sampler-gap``
  exactly as they are with one process; the servers scale out on their own (``--server-url A B``).
- **Sequences shared by tokens.** Every rank scores the batch (pure and cheap) and computes the
  same partition of the sequences to train: longest first, each to the rank with the fewest
  tokens so far (``share``). Each rank runs forward + backward on its share.
- **Gradients summed once per step.** The loss is normalised by the whole batch's counts, so the
  ranks' gradients add up to the one-process gradient: one ``all_reduce`` (sum) of the flattened
  LoRA gradients after the last micro-batch, then every rank takes the same optimizer step. This
  is what DDP does at its last micro-batch, without DDP's need for every rank to run the same
  number of backward passes (shares differ in length).
- ``--resume``: every rank loads the newest checkpoint (a shared disk). A rank that dies ends the
  run: the launcher stops the others, and ``--resume`` continues from the last checkpoint.

Left out: sharding the base model (FSDP); with LoRA every rank holds the whole 4-bit base.
"""

import os
from dataclasses import dataclass, fields
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls) -> "Ranks":
        """One process unless a launcher set ``WORLD_SIZE`` > 1; then the process group (gloo on
        CPU, NCCL on GPU) from the launcher's ``MASTER_ADDR`` / ``MASTER_PORT`` / ``RANK``."""
        if int(os.environ.get("WORLD_SIZE", "1")) == 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return cls(dist.get_rank(), dist.get_world_size())

    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")

    def from_main(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (any picklable object; the others pass None)."""
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def share(self, sequences: list) -> list:
        """This rank's share of ``sequences`` (each with ``prompt_token_ids`` and
        ``completion_token_ids``), balanced by tokens; every rank computes the same partition.

        >>> from types import SimpleNamespace as S
        >>> items = [S(prompt_token_ids=[0] * 10, completion_token_ids=[0] * n) for n in (50, 40, 30, 5)]
        >>> [[len(s.completion_token_ids) for s in Ranks(rank, 2).share(items)] for rank in (0, 1)]
        [[50, 5], [40, 30]]
        """
        if self.world_size == 1:
            return list(sequences)

        def tokens(sequence) -> int:
            return len(sequence.prompt_token_ids) + len(sequence.completion_token_ids)

        loads, mine = [0] * self.world_size, []
        for sequence in sorted(sequences, key=tokens, reverse=True):  # stable: ties keep their order
            rank = loads.index(min(loads))
            loads[rank] += tokens(sequence)
            if rank == self.rank:
                mine.append(sequence)
        return mine

    def sum_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Every rank's gradients summed, on every rank (a parameter a rank did not reach counts 0)."""
        if self.world_size == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([grad.flatten().float() for grad in grads])
        dist.all_reduce(flat)
        offset = 0
        for parameter, grad in zip(parameters, grads):
            parameter.grad = flat[offset : offset + grad.numel()].view_as(grad).to(grad.dtype)
            offset += grad.numel()

    def sum_stats(self, stats: T) -> T:
        """A dataclass of numbers summed over the ranks (``LossStats``)."""
        if self.world_size == 1:
            return stats
        values = torch.tensor([float(getattr(stats, f.name)) for f in fields(stats)], dtype=torch.float64)
        dist.all_reduce(values)
        return type(stats)(*(type(getattr(stats, f.name))(v) for f, v in zip(fields(stats), values.tolist())))

    def copy_from_main(self, parameters: list[torch.nn.Parameter]) -> None:
        """Rank 0's values of ``parameters`` on every rank (the LoRA weights at the start)."""
        if self.world_size == 1:
            return
        with torch.no_grad():
            for parameter in parameters:
                dist.broadcast(parameter.data, src=0)

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()
