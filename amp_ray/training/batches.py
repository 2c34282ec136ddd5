"""One global order of training items that every worker derives on its own.

Each worker reads the whole (unsplit) encoded dataset in its stored order and shuffles it in
windows with a seed shared by all workers, so all of them see the same sequence of global
batches. A global batch of G = micro_batch_size · accumulation · workers items is cut the same
way whatever the layout: worker r takes its contiguous share and splits it into micro-batches.
So 1 worker × 2 accumulation steps, 2 workers × 1, and micro-batch 8 × 1 against 4 × 2 train on
the same items per optimizer step (tests/test_preference_training.py), and a resumed run skips the
global batches it has already trained on and continues the same trajectory.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def shuffled_epochs(
    read_epoch: Callable[[], Iterator[list[T]]], seed: int, window: int
) -> Iterator[T]:
    """Items of endless epochs; `read_epoch()` yields lists of items in a fixed order, which are
    gathered into windows of `window` items and each window shuffled by (seed, epoch, window)."""
    epoch = 0
    while True:
        buffer: list[T] = []
        count = 0
        for chunk in read_epoch():
            buffer += chunk
            while len(buffer) >= window:
                yield from shuffled(buffer[:window], seed, epoch, count)
                buffer, count = buffer[window:], count + 1
        if not buffer and count == 0:
            raise ValueError("the training dataset is empty")
        yield from shuffled(buffer, seed, epoch, count)
        epoch += 1


def shuffled(items: list[T], *key: int) -> list[T]:
    rng = random.Random("-".join(map(str, key)))
    items = list(items)
    rng.shuffle(items)
    return items


def worker_micro_batches(
    items: Iterator[T],
    micro_batch_size: int,
    accumulation: int,
    world_size: int,
    rank: int,
    skip_steps: int = 0,
) -> Iterator[list[list[T]]]:
    """Per optimizer step, this worker's `accumulation` micro-batches; the first `skip_steps`
    global batches are read and passed over (resume)."""
    share = micro_batch_size * accumulation
    step = 0
    while True:
        batch = [next(items) for _ in range(share * world_size)]
        step += 1
        if step <= skip_steps:
            continue
        mine = batch[rank * share : (rank + 1) * share]
        yield [mine[i : i + micro_batch_size] for i in range(0, share, micro_batch_size)]


def dataset_chunks(dataset: Any, chunk_rows: int, decode: Callable[[Any], list[T]]) -> Callable:
    """`read_epoch` over a Ray Data iterator (or dataset): decoded lists of `chunk_rows` rows."""

    def read_epoch() -> Iterator[list[T]]:
        for batch in dataset.iter_batches(batch_size=chunk_rows, batch_format="pyarrow"):
            yield decode(batch)

    return read_epoch
