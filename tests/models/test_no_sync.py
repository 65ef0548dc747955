"""The training step never waits for the device: no host-device synchronisation on its path.

On a GPU each of these calls blocks the host until the device has caught up (or copies host data
to it), which stalls the launch queue every step. On a CPU nothing blocks, so the test counts the
calls that *would* synchronise: ``.item()``, ``.cpu()``, ``.tolist()``, ``.numpy()``,
``bool(tensor)`` (an ``if`` on a tensor), ``.nonzero()``, boolean-mask indexing (a nonzero and a
data-dependent shape inside), indexing with a Python list (an index tensor copied over), and
``torch.tensor(...)`` (host data copied to the device) while the real :class:`CXRClassifier`
trains through a Lightning Trainer with the real :class:`CXRDataModule` normalisation, for
every formulation, labels partly masked.
"""

from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from cxr_lightning.data.datamodule import CXRDataModule
from cxr_lightning.models.classifier import CXRClassifier
from cxr_lightning.models.formulations import (
    BinaryFormulation,
    Formulation,
    MulticlassFormulation,
    MultilabelFormulation,
)

NAN = float("nan")
SYNC_METHODS = ("item", "cpu", "tolist", "numpy", "nonzero", "__bool__")


class SyncCounter:
    """Counts synchronising calls while :attr:`active`, with the stack of the first of each."""

    def __init__(self) -> None:
        self.active = False
        self.counts: Counter[str] = Counter()
        self.where: dict[str, str] = {}

    def record(self, name: str) -> None:
        if self.active:
            self.counts[name] += 1
            self.where.setdefault(name, "".join(traceback.format_stack(limit=6)[:-2]))

    def wrap(self, name: str, original: Callable) -> Callable:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.record(name)
            return original(*args, **kwargs)
        return counted

    def wrap_getitem(self, original: Callable) -> Callable:
        def getitem(tensor: torch.Tensor, index: Any) -> Any:
            parts = index if isinstance(index, tuple) else (index,)
            if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
                self.record("boolean indexing")
            if any(isinstance(p, list) for p in parts):  # a host index copied to the device
                self.record("list indexing")
            return original(tensor, index)
        return getitem


@contextmanager
def counting_syncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[SyncCounter]:
    counter = SyncCounter()
    for name in SYNC_METHODS:
        monkeypatch.setattr(torch.Tensor, name, counter.wrap(name, getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch.Tensor, "__getitem__",
                        counter.wrap_getitem(torch.Tensor.__getitem__))
    monkeypatch.setattr(torch, "tensor", counter.wrap("torch.tensor", torch.tensor))
    yield counter


def counted_method(counter: SyncCounter, method: Callable, warm: Callable[[], bool]) -> Callable:
    """``method`` with the counter active while it runs, once ``warm()``."""
    def run(*args: Any, **kwargs: Any) -> Any:
        counter.active = warm()
        try:
            return method(*args, **kwargs)
        finally:
            counter.active = False
    return run


class Radiographs(Dataset):
    """uint8 grey images, labels with masked (NaN) entries in every column, as the cache yields."""

    LABELS = ((0, 0), (0, 1), (1, 0), (1, 1), (NAN, 1), (0, NAN), (NAN, NAN), (1, 1))

    def __len__(self) -> int:
        return 16

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(index)
        image = torch.randint(0, 256, (32, 32), dtype=torch.uint8, generator=generator)
        labels = torch.as_tensor(self.LABELS[index % len(self.LABELS)], dtype=torch.float32)
        return {"image": image, "labels": labels, "index": torch.as_tensor(index)}


FORMULATIONS: dict[str, Callable[[], Formulation]] = {
    "binary": lambda: BinaryFormulation("edema"),
    "multilabel": MultilabelFormulation,
    "multiclass": MulticlassFormulation,
}


@pytest.mark.parametrize("name", sorted(FORMULATIONS))
def test_the_training_step_never_synchronises(name, monkeypatch, tmp_path):
    formulation = FORMULATIONS[name]()
    data = Radiographs()
    formulation.fit_to_training_labels(torch.stack([data[i]["labels"] for i in range(len(data))]))
    model = CXRClassifier(formulation, backbone="resnet18", weights=None)
    datamodule = CXRDataModule(root=str(tmp_path))
    datamodule.prepare_data = datamodule.setup = lambda *args, **kwargs: None
    datamodule.train_dataloader = lambda: DataLoader(data, batch_size=4)
    steps = []
    # the first step is a warm-up: it creates the per-device normalisation constants, and
    # Lightning the logged metric's state
    warm = lambda: bool(steps)  # noqa: E731
    with counting_syncs(monkeypatch) as counter:
        monkeypatch.setattr(model, "training_step",
                            counted_method(counter, model.training_step, warm))
        monkeypatch.setattr(datamodule, "on_after_batch_transfer",
                            counted_method(counter, datamodule.on_after_batch_transfer, warm))
        monkeypatch.setattr(model, "on_train_batch_end",
                            lambda outputs, batch, batch_idx: steps.append(batch_idx))
        trainer = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False,
                             enable_checkpointing=False, enable_model_summary=False,
                             limit_val_batches=0, default_root_dir=tmp_path)
        trainer.fit(model, datamodule=datamodule)
    assert len(steps) == 8  # every step after the first ran under the counter
    # the progress bar converts its metrics to Python numbers at every refresh
    assert not [key for key in trainer.progress_bar_metrics if key.startswith("train/")]
    assert not counter.counts, (
        f"{name}: synchronising calls on the training step's path: {dict(counter.counts)}\n"
        + "\n".join(f"--- first {k}:\n{v}" for k, v in counter.where.items()))


def test_the_counter_sees_each_kind_of_sync(monkeypatch):
    """The counter is not blind: each synchronising call it claims to see is counted once."""
    x = torch.arange(4.0)
    with counting_syncs(monkeypatch) as counter:
        counter.active = True
        x.sum().item()
        x.cpu()
        x.tolist()
        bool(x.any())
        x.nonzero()
        x[x > 1]
        x[[0, 2]]
        torch.tensor([1.0])
        counter.active = False
    assert dict(counter.counts) == {"item": 1, "cpu": 1, "tolist": 1, "__bool__": 1,
                                    "nonzero": 1, "boolean indexing": 1, "list indexing": 1,
                                    "torch.tensor": 1}
