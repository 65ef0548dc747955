"""PrefixCache: compute the frozen prefix once per study, train the rest on its activations.

While :class:`~cxr_lightning.callbacks.unfreeze.ProgressiveUnfreezing` keeps the bottom of the
backbone frozen, that part is a fixed function of each image (frozen weights, BatchNorm in eval
mode, no augmentation, no stochastic layer). So when a stage begins this callback opens the store
of the activations at the stage's boundary (:mod:`cxr_lightning.data.activations`; the pooled
features for the head-only stage, else the input of the lowest unfrozen block), building it in
one pass under the run's precision when it is missing, and the datamodule serves those rows of
the training and validation splits instead of images: the stage's epochs and validations run only
the unfrozen blocks and the head (:meth:`CXRClassifier.batch_logits`). Prediction, testing and
export run the whole network on images, as without the cache.

Stores are keyed by the prefix's weights, the boundary, the preprocessing, the image ids and the
dtype, so formulations, seeds of the same initial weights, the jobs of a multirun and reruns
share them. Under DDP the ranks split the building of a store between them (shared local disk).
The callback must come after the unfreezing callback (it reads the stage that one begins).
"""

from __future__ import annotations

import logging
import time

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch import nn

from cxr_lightning.callbacks.unfreeze import ProgressiveUnfreezing
from cxr_lightning.data.activations import (
    ActivationKey,
    ActivationSource,
    ActivationStore,
    ids_digest,
    is_complete,
    open_or_build,
    row_bytes,
    weights_digest,
)
from cxr_lightning.models.backbones import POOLED, prefix_forward, prefix_modules, resnet_steps

log = logging.getLogger(__name__)
_info = rank_zero_only(log.info)

SPLITS = ("train", "val")
"""The splits a stage trains and validates on: the rows of every store, in this order."""
STOCHASTIC = (nn.Dropout, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


class PrefixCache(pl.Callback):
    """Serve each unfreezing stage the cached activations of its frozen prefix.

    ``unfreezing`` is the run's unfreezing callback, listed before this one. The cache applies
    when it is exact: no augmentation, frozen BatchNorm in eval mode (``train_bn=False``), no
    stochastic layer in the backbone, a torchvision ResNet that is not compiled, and a datamodule
    with an image cache; otherwise the run goes on without it, with one log line saying why.
    :attr:`build_seconds` records the time of every store built, by boundary (also logged, with
    its rate, which ``make rehearse`` reads).
    """

    def __init__(self, unfreezing: ProgressiveUnfreezing) -> None:
        self.unfreezing = unfreezing
        self.source: ActivationSource | None = None
        self.boundary: str | None = None
        self.build_seconds: dict[str, float] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Decide whether the cache applies; serve the current stage (resumed or first)."""
        datamodule = trainer.datamodule
        why = self._why_not(datamodule, pl_module)
        if why is not None:
            _info(f"The frozen-prefix activation cache is off: {why}")
            return
        lengths = tuple(len(datamodule.split_manifest(split)) for split in SPLITS)
        self.source = datamodule.activations = ActivationSource(SPLITS, lengths)
        self._serve(trainer, pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Serve the stage the unfreezing callback has just begun (if it changed)."""
        if self.source is not None:
            self._serve(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Hand back images: whatever runs the module next runs the whole network."""
        self._stop(trainer, pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        self._stop(trainer, pl_module)

    def _stop(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.source is not None:
            trainer.datamodule.activations = self.source = None
            pl_module.prefix_boundary = self.boundary = None

    def _why_not(self, datamodule: object, pl_module: pl.LightningModule) -> str | None:
        """Why the cache would not be exact here (``None``: it would be)."""
        if getattr(datamodule, "cache", None) is None or not hasattr(datamodule, "activations"):
            return "the datamodule has no image cache to compute activations from"
        if datamodule.augment:
            return "data.augment=true (each epoch sees other images)"
        if self.unfreezing.train_bn:
            return "unfreeze.train_bn=true (frozen BatchNorm layers train)"
        if getattr(pl_module, "compiled", False):
            return "the backbone is compiled (its fused kernels may round otherwise)"
        try:
            resnet_steps(pl_module.backbone)
        except TypeError:
            return (f"the backbone is not a torchvision ResNet "
                    f"({type(pl_module.backbone).__name__})")
        if any(isinstance(m, STOCHASTIC) for m in pl_module.backbone.modules()):
            return "the backbone has a stochastic layer (dropout)"
        return None

    def _stage_boundary(self) -> str | None:
        """The current stage's boundary: pooled features, the input of the lowest unfrozen
        block, or ``None`` when nothing below it is frozen (the stem is unfrozen)."""
        unfrozen = self.unfreezing.unfrozen_block_names
        if not unfrozen:
            return POOLED
        return None if unfrozen[-1] == "stem" else unfrozen[-1]

    def _serve(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        boundary = self._stage_boundary()
        if boundary == self.boundary and self.source.store is not None:
            return
        self.source.store = None if boundary is None else self._store(trainer, pl_module,
                                                                      boundary)
        pl_module.prefix_boundary = self.boundary = boundary

    def _store(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
               boundary: str) -> ActivationStore:
        """The store of ``boundary``, opened, or built first."""
        datamodule = trainer.datamodule
        trunk = pl_module.backbone
        ids = [i for split in SPLITS for i in datamodule.split_manifest(split)["image_id"]]
        dtype = _activation_dtype(trainer)
        key = ActivationKey(
            weights=weights_digest(prefix_modules(trunk, boundary)), boundary=boundary,
            preprocessing=datamodule.preprocessing.record(), images=ids_digest(ids),
            dtype=str(dtype).removeprefix("torch."),
            folded_batchnorm=self.unfreezing.fold_frozen_bn)
        root = datamodule.cache_dir / "activations"
        device = pl_module.device

        def compute(rows: range) -> torch.Tensor:
            return _prefix_rows(trainer, trunk, boundary, datamodule, [ids[r] for r in rows],
                                device).to(dtype)

        complete = is_complete(root, key, len(ids))
        if complete:
            _info(f"Activation cache at {boundary}: reusing {key.directory(root)}")
        else:
            shape = tuple(compute(range(1)).shape[1:])
            size = row_bytes(shape, dtype)
            _info(f"Activation cache at {boundary}: building {len(ids)} rows of {shape} "
                  f"{key.dtype} ({_human(size)} per image, {_human(size * len(ids))} in all) "
                  f"in {key.directory(root)}")
        started = time.perf_counter()
        store = open_or_build(root, key, len(ids), compute, trainer.global_rank,
                              trainer.world_size, trainer.strategy.barrier)
        seconds = time.perf_counter() - started
        if not complete:
            self.build_seconds[boundary] = seconds
            _info(f"Activation cache at {boundary}: built in {seconds:.1f} s "
                  f"({len(ids) / seconds:.1f} img/s)")
        return store


def _prefix_rows(trainer: pl.Trainer, trunk: nn.Module, boundary: str, datamodule: object,
                 image_ids: list[str], device: torch.device) -> torch.Tensor:
    """The activations at ``boundary`` of the cached images ``image_ids``, computed in batches
    of the training batch size under the run's precision, the prefix in eval mode. A short last
    batch is padded to that size with its last image (then dropped): a convolution library may
    take another path for another batch size (oneDNN does for one image), and the live forward
    sees full batches but for a split's last one."""
    modules = prefix_modules(trunk, boundary)
    modes = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    batches = []
    try:
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            for start in range(0, len(image_ids), datamodule.batch_size):
                chunk = image_ids[start:start + datamodule.batch_size]
                padded = chunk + chunk[-1:] * (datamodule.batch_size - len(chunk))
                images = torch.stack([torch.from_numpy(datamodule.cache.get(i).copy())
                                      for i in padded]).to(device)
                rows = prefix_forward(trunk, boundary, datamodule.preprocessing.normalise(images))
                batches.append(rows[:len(chunk)].cpu())
    finally:
        for module, training in modes:
            module.train(training)
    return torch.cat(batches)


def _activation_dtype(trainer: pl.Trainer) -> torch.dtype:
    """The dtype the prefix computes in under the trainer's precision."""
    precision = str(trainer.precision)
    if precision.startswith("bf16"):
        return torch.bfloat16
    return torch.float16 if precision.startswith("16") else torch.float32


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
