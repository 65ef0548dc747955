"""ResumeState: what a Lightning checkpoint lacks for an exact resume, saved and restored.

Lightning checkpoints weights, optimizers, loops and callbacks, but not

- the global random generators: a resumed run would draw different dropout masks (or anything
  else drawn from Python's ``random``, NumPy's or torch's global generators);
- which modules are in training mode: Lightning keeps the modes across validation and never
  resets them, so a callback that switches BatchNorm layers to eval mode (progressive
  unfreezing) leaves modes that a freshly built model in a resumed process does not have.

The training
order and augmentation need nothing here: they are functions of the seed, the epoch and the
image (:mod:`cxr_lightning.data.sampling`), and the position in the epoch is the training
loader's own checkpointed state.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


def rng_states() -> dict[str, Any]:
    """The state of Python's, NumPy's, torch's CPU and every CUDA device's global generator,
    as tensors and plain values (a checkpoint loads with ``weights_only=True``)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                  "position": int(position), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Put the generators back in the states :func:`rng_states` returned."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = states["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32),
                         numpy["position"], numpy["has_gauss"], numpy["gauss"]))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        visible = torch.cuda.device_count()
        if visible != len(states["cuda"]):
            log.warning("The checkpoint holds the random states of %d CUDA devices, %d are "
                        "visible: the first %d are restored, so the resumed run's random draws "
                        "on the GPU differ from the original's", len(states["cuda"]), visible,
                        min(visible, len(states["cuda"])))
        for device, state in enumerate(states["cuda"][:visible]):
            torch.cuda.set_rng_state(state, device)


class ResumeState(pl.Callback):
    """Saves the global generators' states and the modules' training modes with every
    checkpoint; a run resumed from one gets them back at ``on_train_start``, the last hook before
    its first training batch (whatever setup did in between is overridden). Under DDP the
    checkpoint holds rank zero's generators, which every rank gets back: gathering every rank's
    would put a collective inside checkpointing. Nothing in training draws from them per rank
    (the sampler, augmentation and dropout-free ResNets), so a resumed DDP run differs from an
    uninterrupted one only in what a model draws from the global generators on ranks above zero.

    The modes are those of the last training batch: at an epoch-end checkpoint the model is in
    eval mode for validation, and Lightning puts those modes back after it.
    """

    def __init__(self) -> None:
        self._training_modules: list[str] = []
        self._restore: dict[str, Any] | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           *args: Any) -> None:
        self._training_modules = [name for name, module in pl_module.named_modules()
                                  if module.training]

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states(), "training_modules": list(self._training_modules)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restore = state_dict
        # a checkpoint saved before this process trains a batch keeps the loaded modes
        self._training_modules = list(state_dict["training_modules"])

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._restore is None:
            return
        training = set(self._restore["training_modules"])
        if training:  # a checkpoint taken before any training batch keeps the modes as built
            for name, module in pl_module.named_modules():
                module.training = name in training
        set_rng_states(self._restore["rng"])
        self._restore = None
