"""DataLoader workers run OpenCV on one thread, forked after the parent ran OpenCV's pool.

Run in a subprocess with a timeout: the design this replaces (``cv2.setNumThreads(1)`` in a
``worker_init_fn``) deadlocked exactly there, and a hang must fail the test, not stall the suite.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import cv2, numpy as np, torch
from torch.utils.data import Dataset
from cxr_lightning.data.workers import OneOpenCVThreadLoader

class OpenCVWork(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        image = np.random.default_rng(index).random((1500, 1500)).astype(np.float32)
        cv2.resize(cv2.GaussianBlur(image, (0, 0), 3), (512, 512))
        return torch.tensor(cv2.getNumThreads())

image = np.random.default_rng(0).random((3000, 3000)).astype(np.float32)
for _ in range(3):
    cv2.GaussianBlur(image, (0, 0), 5)  # the parent's pthreads pool has run
before = cv2.getNumThreads()
loader = OneOpenCVThreadLoader(OpenCVWork(), batch_size=2, num_workers=2,
                               persistent_workers={persistent})
epochs = [[n for batch in loader for n in batch.tolist()] for _ in range(2)]
print(before, cv2.getNumThreads(), epochs)
"""


@pytest.mark.parametrize("persistent", [False, True])
def test_workers_run_opencv_on_one_thread_without_hanging(persistent):
    if cv2.getNumThreads() <= 1:
        pytest.skip("OpenCV runs one thread here already: the test could not fail")
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(persistent=persistent)],
                          capture_output=True, text=True, timeout=120, env=environment,
                          cwd=ROOT, check=True)
    before, after, epochs = done.stdout.split(" ", 2)
    assert ast.literal_eval(epochs) == [[1, 1, 1, 1]] * 2  # every item of both epochs, in a worker
    assert int(before) > 1 and after == before  # the parent keeps its own threads
