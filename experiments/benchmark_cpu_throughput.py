"""CPU throughput of a backbone in the two regimes of progressive unfreezing.

    .venv/bin/python experiments/benchmark_cpu_throughput.py [--backbone resnet18] [--size 64]

Prints images/second for (a) the head-only stage, where the frozen trunk only runs forward
without an autograd graph, and (b) a fully unfrozen training step, their ratio, and the implied
seconds per epoch for a given number of training images (default: the sample preset's ~876).
Run it on an otherwise idle machine: on 2 cores a second busy process slows PyTorch's threads
by an order of magnitude.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable

import torch

from cxr_lightning.models.backbones import build_backbone

log = logging.getLogger("benchmark")


def images_per_second(step: Callable[[], None], batch: int, repeats: int) -> float:
    """Best-of-``repeats`` throughput of ``step()`` after two warm-up calls."""
    step()
    step()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
    return batch / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-images", type=int, default=876)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size)
    targets = torch.rand(args.batch, 2)
    trunk, features = build_backbone(args.backbone, "none")
    head = torch.nn.Linear(features, 2)
    optimizer = torch.optim.AdamW([*trunk.parameters(), *head.parameters()], lr=1e-3)
    loss = torch.nn.functional.binary_cross_entropy_with_logits

    def head_only_step() -> None:
        trunk.eval()
        with torch.no_grad():
            pooled = trunk(images)
        optimizer.zero_grad()
        loss(head(pooled), targets).backward()
        optimizer.step()

    def full_step() -> None:
        trunk.train()
        optimizer.zero_grad()
        loss(head(trunk(images)), targets).backward()
        optimizer.step()

    head_only = images_per_second(head_only_step, args.batch, args.repeats)
    full = images_per_second(full_step, args.batch, args.repeats)
    log.info("%s at %dx%d, batch %d, %d threads", args.backbone, args.size, args.size,
             args.batch, torch.get_num_threads())
    for label, rate in (("head-only stage", head_only), ("fully unfrozen", full)):
        log.info("%-16s %8.1f img/s  (%5.1f s per epoch of %d images)", label, rate,
                 args.train_images / rate, args.train_images)
    log.info("head-only / fully unfrozen: x%.1f", head_only / full)


if __name__ == "__main__":
    main()
