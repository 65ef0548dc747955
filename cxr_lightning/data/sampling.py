"""Seeded, resumable training order: which image comes when, as a function of (seed, epoch).

:class:`EpochSampler` shuffles epoch ``e`` with a generator seeded by ``seed + e`` (torch's
:class:`~torch.utils.data.DistributedSampler`, so it also splits the order between DDP ranks and
Lightning keeps it as it is), never the global generator, and yields ``(index, epoch)`` so the
dataset can seed each image's augmentation by its epoch too, inside any worker process.

:class:`ResumableDataLoader` has the ``state_dict`` / ``load_state_dict`` pair Lightning looks
for (its ``_Stateful`` protocol): a checkpoint records the epoch and how many batches the epoch
has yielded, and a run resumed from it goes on with the next batch of the same order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import Dataset, DistributedSampler

from cxr_lightning.data.workers import OneOpenCVThreadLoader


class EpochSampler(DistributedSampler):
    """The shuffled indices of one epoch (of one rank), as ``(index, epoch)`` pairs.

    ``skip`` items are left out of the next iteration only (a resumed epoch); ``len`` stays the
    whole epoch's, so Lightning counts the epoch's batches as before the interruption.
    """

    def __init__(self, dataset: Dataset, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.skip = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        skip, self.skip = self.skip, 0
        for position, index in enumerate(super().__iter__()):
            if position >= skip:
                yield index, self.epoch


class ResumableDataLoader(OneOpenCVThreadLoader):
    """A DataLoader over an :class:`EpochSampler` whose position Lightning checkpoints (its
    workers run OpenCV on one thread each).

    The position is the number of batches this loader has handed out in the current epoch:
    Lightning does not prefetch from a loader with a length, so at a checkpoint that is the
    number of batches trained on (workers may have loaded more; those are not counted).
    """

    sampler: EpochSampler

    def __init__(self, dataset: Dataset, sampler: EpochSampler, **kwargs: Any) -> None:
        super().__init__(dataset, sampler=sampler, **kwargs)
        self.batches_yielded = 0

    def __iter__(self) -> Iterator[Any]:
        self.batches_yielded = self.sampler.skip // self.batch_size  # a resumed epoch
        for batch in super().__iter__():
            self.batches_yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """The epoch and the number of its batches handed out so far."""
        return {"epoch": self.sampler.epoch, "batches": self.batches_yielded}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Continue the checkpointed epoch after its last batch handed out (Lightning calls this
        before it starts iterating)."""
        self.sampler.set_epoch(state_dict["epoch"])
        self.sampler.skip = state_dict["batches"] * self.batch_size
        self.batches_yielded = state_dict["batches"]
