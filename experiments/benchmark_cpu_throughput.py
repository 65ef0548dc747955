"""CPU throughput of the sample preset's model, and what flushing denormal floats buys.

    .venv/bin/python experiments/benchmark_cpu_throughput.py [--size 64] [--batch 32]

Prints images/second for (a) a frozen random-init ResNet18 trunk's forward pass, the head-only
stage of progressive unfreezing, and (b) a full training step, each with and without
``torch.set_flush_denormal(True)`` (which ``cxr_lightning.train`` turns on), and their ratios.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
import torchvision

log = logging.getLogger("benchmark")


def images_per_second(step, batch: int, repeats: int) -> float:
    """Best-of-``repeats`` throughput of ``step()`` after two warm-up calls."""
    step()
    step()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
    return batch / best


def measure(size: int, batch: int, repeats: int, flush: bool) -> tuple[float, float]:
    """(frozen forward img/s, training step img/s) with denormal flushing on or off."""
    torch.set_flush_denormal(flush)
    torch.manual_seed(0)
    images = torch.randn(batch, 3, size, size)
    targets = torch.rand(batch, 2)
    trunk = torchvision.models.resnet18(num_classes=2).eval()

    def frozen_forward() -> None:
        with torch.no_grad():
            trunk(images)

    model = torchvision.models.resnet18(num_classes=2).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def training_step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(images), targets).backward()
        optimizer.step()

    return (images_per_second(frozen_forward, batch, repeats),
            images_per_second(training_step, batch, repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("ResNet18, %dx%d, batch %d, %d threads", args.size, args.size, args.batch,
             torch.get_num_threads())
    plain = measure(args.size, args.batch, args.repeats, flush=False)
    flushed = measure(args.size, args.batch, args.repeats, flush=True)
    for label, before, after in zip(("frozen forward", "training step"), plain, flushed,
                                    strict=True):
        log.info("%-15s %8.1f img/s -> %8.1f img/s with flush_denormal (x%.1f)",
                 label, before, after, after / before)


if __name__ == "__main__":
    main()
