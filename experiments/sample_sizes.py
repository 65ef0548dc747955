"""Which sample sizes a multiclass model can train on: per seed, the sizes whose default reading
lacks an (edema, effusion) combination in training or leaves a split empty.

    python experiments/sample_sizes.py [--sizes 10-80] [--seeds 10]

Plans samples without rendering them (:func:`~cxr_lightning.data.sample.generate.plan_sample`)
and checks each with :func:`~cxr_lightning.data.sample.generate.multiclass_gap` (the split CSV
and ``random_patient`` with ``split_seed=0``). Prints one line per seed (the failing sizes and
the size :func:`~cxr_lightning.data.sample.generate.trainable_plan` grows the smallest one to),
then one JSON object: per size, the seeds that fail.
"""

from __future__ import annotations

import argparse
import json
import logging

from cxr_lightning.data.sample.generate import multiclass_gap, plan_sample

log = logging.getLogger("sample_sizes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10-80", help="first-last subjects, inclusive")
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    first, last = (int(v) for v in args.sizes.split("-"))
    failing: dict[int, list[int]] = {n: [] for n in range(first, last + 1)}
    for seed in range(args.seeds):
        bad = [n for n in failing if multiclass_gap(plan_sample(n, seed)) is not None]
        for n in bad:
            failing[n].append(seed)
        grown = next(n for n in range(first, last + 1) if n not in bad) if bad else first
        log.info("seed %d: fails at %s; %d subjects grow to %d", seed, bad, first, grown)
    print(json.dumps({str(n): seeds for n, seeds in failing.items()}))  # noqa: T201


if __name__ == "__main__":
    main()
