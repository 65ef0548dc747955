"""DataLoader workers that run OpenCV on one thread each, without a deadlock.

The workers are the parallelism: OpenCV decoding, resizing or augmenting on every core in each
of them oversubscribes the cores. Calling ``cv2.setNumThreads(1)`` *in* a worker (a
``worker_init_fn``) deadlocks when the worker was forked after the parent had used OpenCV's
pthreads pool: the child inherits the pool's state but not its threads, and reconfiguring it
waits for threads that do not exist. Starting the workers from a forkserver instead made the
killed-and-resumed training run time out.

So the parent sets OpenCV to one thread just while it forks the workers, and restores its own
count at once: setting one thread in the parent stops its pool's threads (in the parent, where
they exist), a forked child inherits the count of one and so never touches the pool (OpenCV runs
a loop serially on one thread), and the parent gets its threads back for its own work.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import cv2
from torch.utils.data import DataLoader


@contextmanager
def opencv_threads(count: int) -> Iterator[None]:
    """OpenCV on ``count`` threads inside the block, its previous count restored after."""
    previous = cv2.getNumThreads()
    cv2.setNumThreads(count)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


class OneOpenCVThreadLoader(DataLoader):
    """A DataLoader whose worker processes run OpenCV on one thread (module doc).

    Workers start when an iterator is made (``iter``: every epoch, or once with
    ``persistent_workers``); the parent's OpenCV count is one only during that call.
    """

    def __iter__(self) -> Any:
        if self.num_workers == 0:
            return super().__iter__()
        with opencv_threads(1):
            return super().__iter__()
