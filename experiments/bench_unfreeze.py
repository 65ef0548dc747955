"""Train-step time per progressive-unfreezing stage, against Lightning's naive freeze and with
the frozen prefix's activations cached.

    .venv/bin/python experiments/bench_unfreeze.py [--backbone resnet50] [--size 224]
        [--batch 16] [--device cpu|cuda] [--bf16] [--channels-last]
        [--warmup 1] [--steps 3] [--rounds 2] [--stages head,head+cache,...]

Each stage is one short ``trainer.fit`` of the real :class:`CXRClassifier` (multilabel
formulation) with the real :class:`ProgressiveUnfreezing` callback, which freezes the backbone
(``freeze_before_training``), unfreezes the stage's blocks at epoch 0 (explicit schedule
``[(0, "all")]`` with ``until``) and keeps the frozen BatchNorm layers in eval mode at every step,
folded into the convolutions before them (``fold_frozen_bn``, the default).
Stages: ``head`` (backbone frozen), ``+layer4`` (every layer4 block unfrozen: the study's
``+layer4.0`` setting), ``+layer3`` and ``all``. The baseline ``naive-head`` is Lightning's
default freeze, ``BaseFinetuning.freeze(backbone, train_bn=True)``: BatchNorm trains, so backward
runs through the whole trunk. ``head+cache`` and ``+layer4+cache`` are ``head`` and ``+layer4``
trained on the frozen prefix's activations (:mod:`cxr_lightning.callbacks.prefix_cache`): the
batch's activations at the stage's boundary are computed once per fit (timed: the one-off cost
of building the cache, ``build_ms_per_image``), written to a real activation store and read back
before every step (timed apart: ``read_ms``, outside the step); a cached stage's figure is its
step plus its read, and ``cache_speedups`` divides the uncached stage's step by it.

A step is timed from ``on_train_batch_start`` to ``on_train_batch_end`` with the device
synchronised at both ends: forward, loss, backward and optimizer step, the batch already on the
device. After one untimed fully unfrozen fit (it grows the heap, see ``main``), each stage is
fitted ``--rounds`` times, the rounds interleaving the stages, with ``--warmup`` untimed then
``--steps`` timed steps per fit; figures are the best timed step (the median and the minor page
faults per step are printed too). ``--bf16`` trains under ``precision="bf16-mixed"`` (Lightning's
``torch.autocast(device_type, dtype=torch.bfloat16)``); ``--channels-last`` converts the model
and the batch to ``torch.channels_last``. The last printed line is one JSON object with every
figure and ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import tempfile
import time
import warnings
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset

from cxr_lightning.callbacks.baselines import NaiveFreeze
from cxr_lightning.callbacks.unfreeze import ProgressiveUnfreezing
from cxr_lightning.data.activations import ActivationKey, ActivationStore, open_or_build
from cxr_lightning.models.backbones import POOLED, prefix_forward
from cxr_lightning.models.classifier import CXRClassifier
from cxr_lightning.models.formulations import MultilabelFormulation

log = logging.getLogger("bench_unfreeze")




class StepTimer(pl.Callback):
    """Times every training step and counts its minor page faults (fresh memory from the OS).

    On the first step, records what the step computes: trainable parameters, BatchNorm layers in
    train mode, frozen parameters held by the optimizer, the input's layout, and ``graph_from``,
    the lowest block whose output requires grad (where backward stops; ``"head"``: none does).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: list[float] = []
        self.page_faults: list[int] = []
        self.record: dict[str, Any] = {}
        self._started = 0.0
        self._faults = 0
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._requires_grad: dict[str, bool] = {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Probe the first step; synchronise and start the clock."""
        if batch_idx == 0:
            self._probe(trainer, pl_module, batch.get("image", batch.get("activations")))
        self._sync()
        self._faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        self._started = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Synchronise and stop the clock; after the first step, read and remove the probes."""
        self._sync()
        self.seconds.append(time.perf_counter() - self._started)
        self.page_faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self._faults)
        if batch_idx == 0:
            for hook in self._hooks:
                hook.remove()
            bottom_up = [name for name, _ in reversed(pl_module.unfreezable_blocks())]
            self.record["graph_from"] = next(
                (name for name in bottom_up if self._requires_grad.get(name)), "head"
            )

    def _probe(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, images: torch.Tensor
    ) -> None:
        """Record the step's trainable set, BN modes and input layout; hook every block."""
        in_optimizer = [p for g in trainer.optimizers[0].param_groups for p in g["params"]]
        bns = [m for m in pl_module.backbone.modules() if isinstance(m, _BatchNorm)]
        self.record = {
            "trainable_params": sum(p.numel() for p in pl_module.parameters() if p.requires_grad),
            "param_groups": len(trainer.optimizers[0].param_groups),
            "frozen_params_in_optimizer": sum(not p.requires_grad for p in in_optimizer),
            "bn_train_mode": sum(bn.training for bn in bns),
            "bn_layers": len(bns),
            "channels_last_input": images.is_contiguous(memory_format=torch.channels_last),
        }
        for name, block in pl_module.unfreezable_blocks():
            # The stem is a ModuleList (never called): its output is that of its last layer.
            module = block[-1] if isinstance(block, nn.ModuleList) else block
            self._hooks.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str) -> Any:
        def record(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            self._requires_grad[name] = output.requires_grad

        return record


def trainable_blocks(pl_module: pl.LightningModule) -> list[str]:
    """Names of the blocks all of whose parameters require grad, top-down."""
    return [
        name
        for name, block in pl_module.unfreezable_blocks()
        if all(p.requires_grad for p in block.parameters())
    ]


STAGES: dict[str, str | None] = {
    "head": None,
    "+layer4": "layer4.0",
    "+layer3": "layer3.0",
    "all": "stem",
    "naive-head": None,
    "head+cache": None,
    "+layer4+cache": "layer4.0",
}
"""Each stage's last unfrozen block (``None``: none)."""
CACHE_SUFFIX = "+cache"


class CachedBatches(Dataset):
    """The benchmark's batch for every step: the images, or, once :class:`CacheBuilder` has
    built the store, that batch's activations read back from it (timed in :attr:`read_s`)."""

    def __init__(self, batch: dict[str, torch.Tensor], steps: int) -> None:
        self.batch = batch
        self.steps = steps
        self.store: ActivationStore | None = None
        self.read_s: list[float] = []

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        if self.store is None:
            return self.batch
        started = time.perf_counter()
        rows = torch.stack([self.store[row] for row in range(len(self.batch["labels"]))])
        self.read_s.append(time.perf_counter() - started)
        return {"activations": rows, "labels": self.batch["labels"]}


class CacheBuilder(pl.Callback):
    """When the fit's stage begins (after the unfreezing callback's hook), compute the batch's
    activations at the stage's boundary (the prefix in eval mode, under the trainer's
    precision; timed), store them, and have the module train on them."""

    def __init__(self, source: CachedBatches, unfreezing: ProgressiveUnfreezing,
                 directory: str, device: torch.device) -> None:
        self.source = source
        self.unfreezing = unfreezing
        self.directory = directory
        self.device = device
        self.build_s = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        unfrozen = self.unfreezing.unfrozen_block_names
        boundary = unfrozen[-1] if unfrozen else POOLED
        trunk = pl_module.backbone
        trunk.eval()
        StepTimer(self.device)._sync()
        started = time.perf_counter()
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            rows = prefix_forward(trunk, boundary, self.source.batch["image"].to(self.device))
        StepTimer(self.device)._sync()
        self.build_s = time.perf_counter() - started
        trunk.train()
        key = ActivationKey(weights="bench", boundary=boundary, preprocessing={},
                            images=str(len(rows)), dtype=str(rows.dtype).removeprefix("torch."),
                            folded_batchnorm=True)
        self.source.store = open_or_build(self.directory, key, len(rows),
                                          lambda r: rows[r.start:r.stop])
        pl_module.prefix_boundary = boundary


def measure_stage(
    args: argparse.Namespace, device: torch.device, batch: dict[str, torch.Tensor], stage: str
) -> tuple[list[float], list[int], dict[str, Any]]:
    """One ``trainer.fit`` of ``--warmup + --steps`` steps at ``stage``.

    Returns the timed steps' seconds and page faults, and the first step's record.
    """
    torch.manual_seed(0)
    model = CXRClassifier(MultilabelFormulation(), backbone=args.backbone, weights=args.weights)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    timer = StepTimer(device)
    last = STAGES[stage]
    freezer = (
        NaiveFreeze()
        if stage == "naive-head"
        # Stage 0 (head only) for the schedule [] or, from epoch 0, every block down to `last`.
        else ProgressiveUnfreezing(schedule=[] if last is None else [(0, "all")], until=last)
    )
    source = CachedBatches(batch, args.warmup + args.steps)
    callbacks: list[pl.Callback] = [freezer, timer]
    with tempfile.TemporaryDirectory() as directory:
        if stage.endswith(CACHE_SUFFIX):
            callbacks.insert(1, builder := CacheBuilder(source, freezer, directory, device))
        seconds, page_faults, record = _fit(args, device, model, source, callbacks, timer, stage)
    if stage.endswith(CACHE_SUFFIX):
        record["build_ms_per_image"] = round(1e3 * builder.build_s / len(batch["labels"]), 3)
        record["read_ms"] = round(1e3 * min(source.read_s), 3)
    return seconds, page_faults, record


def _fit(args: argparse.Namespace, device: torch.device, model: CXRClassifier,
         source: CachedBatches, callbacks: list[pl.Callback], timer: StepTimer, stage: str
         ) -> tuple[list[float], list[int], dict[str, Any]]:
    """Fit ``model`` on ``source`` with ``callbacks``; check the trainable blocks."""
    last = STAGES[stage]
    trainer = pl.Trainer(
        accelerator=device.type,
        devices=1,
        precision="bf16-mixed" if args.bf16 else "32-true",
        max_epochs=1,
        limit_val_batches=0,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, train_dataloaders=DataLoader(source, batch_size=None))
    names = [name for name, _ in model.unfreezable_blocks()]
    expected = [] if last is None else names[: names.index(last) + 1]
    if trainable_blocks(model) != expected:
        raise RuntimeError(
            f"{stage}: expected trainable blocks {expected}, got {trainable_blocks(model)}"
        )
    timed = slice(args.warmup, None)
    record = {"unfrozen_blocks": len(expected), **timer.record}
    return timer.seconds[timed], timer.page_faults[timed], record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--weights", default="none", help="imagenet, none or a state-dict path")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--bf16", action="store_true", help="precision=bf16-mixed (autocast)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per fit")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per fit")
    parser.add_argument("--rounds", type=int, default=2, help="fits per stage (best-of all)")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated, of {', '.join(STAGES)}")
    args = parser.parse_args()
    if min(args.warmup, args.steps, args.rounds) < 1:
        parser.error("--warmup, --steps and --rounds must be >= 1")
    chosen = args.stages.split(",")
    if unknown := sorted(set(chosen) - set(STAGES)):
        parser.error(f"--stages: unknown {unknown}; known: {', '.join(STAGES)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*but have no `val_dataloader`.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    device = torch.device(args.device)

    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 2, (args.batch, 2)).float()
    batch = {"image": images, "labels": labels}

    load_before = os.getloadavg()[0]
    # An untimed fully unfrozen fit first: it grows the process's heap, which the first fit of a
    # process otherwise pays for in page faults (~0.3 M per step for resnet50@224, batch 16, on
    # CPU), whatever its stage. Every timed fit then finds the heap as a long run would.
    measure_stage(args, device, batch, "all")
    seconds: dict[str, list[float]] = {stage: [] for stage in chosen}
    faults: dict[str, list[int]] = {stage: [] for stage in chosen}
    records: dict[str, dict[str, Any]] = {}
    for _ in range(args.rounds):  # rounds interleave the stages, so load drift hits them all
        for stage in chosen:
            timed, timed_faults, records[stage] = measure_stage(args, device, batch, stage)
            seconds[stage].extend(timed)
            faults[stage].extend(timed_faults)
    stages: dict[str, dict[str, Any]] = {}
    for stage, timed in seconds.items():
        best = min(timed)
        s = stages[stage] = {
            "ms": round(1e3 * best, 2),
            "ms_median": round(1e3 * statistics.median(timed), 2),
            "img_per_s": round(args.batch / best, 2),
            "page_faults_per_step": int(statistics.median(faults[stage])),
            **records[stage],
        }
        log.info(
            "%-10s %9.1f ms (median %9.1f)  %8.1f img/s  blocks %2d  trainable %9d  "
            "BN train %3d/%d  graph from %-8s  page faults/step %d",
            stage,
            s["ms"],
            s["ms_median"],
            s["img_per_s"],
            s["unfrozen_blocks"],
            s["trainable_params"],
            s["bn_train_mode"],
            s["bn_layers"],
            s["graph_from"],
            s["page_faults_per_step"],
        )
    ratios = {
        f"{slower}_over_{faster}".replace("-", "_"): round(
            stages[slower]["ms"] / stages[faster]["ms"], 2)
        for slower, faster in (("all", "head"), ("naive-head", "head"), ("all", "naive-head"))
        if slower in stages and faster in stages
    }
    for name, ratio in ratios.items():
        log.info("%s: %.2fx", name, ratio)
    cache_speedups = {
        stage: round(stages[stage]["ms"] / (cached["ms"] + cached["read_ms"]), 2)
        for stage in ("head", "+layer4")
        if stage in stages and (cached := stages.get(stage + CACHE_SUFFIX))
    }
    for stage, speedup in cache_speedups.items():
        cached = stages[stage + CACHE_SUFFIX]
        log.info("%s with the cache: %.2fx faster (step %.1f ms + read %.2f ms vs %.1f ms; "
                 "building it: %.2f ms per image, once)", stage, speedup, cached["ms"],
                 cached["read_ms"], stages[stage]["ms"], cached["build_ms_per_image"])
    summary = {
        "backbone": args.backbone,
        "weights": args.weights,
        "size": args.size,
        "batch": args.batch,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "bf16": args.bf16,
        "channels_last": args.channels_last,
        "threads": torch.get_num_threads(),
        "warmup": args.warmup,
        "steps": args.steps,
        "rounds": args.rounds,
        "load_avg_1min": [load_before, os.getloadavg()[0]],
        "stages": stages,
        "ratios": ratios,
        "cache_speedups": cache_speedups,
    }
    print(json.dumps(summary))  # noqa: T201


if __name__ == "__main__":
    main()
