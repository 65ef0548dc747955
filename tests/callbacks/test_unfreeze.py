"""ProgressiveUnfreezing on a tiny resnet18 with real ``trainer.fit`` runs on CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F  # noqa: N812
from hydra.utils import instantiate
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import EarlyStopping
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cxr_lightning.callbacks.early_stopping import StagedEarlyStopping
from cxr_lightning.callbacks.unfreeze import ProgressiveUnfreezing
from cxr_lightning.models.backbones import build_backbone, unfreezable_blocks

HEAD = {"head.weight", "head.bias"}


class TinyModule(pl.LightningModule):
    """resnet18 trunk + linear head that records what is trainable and in which mode."""

    def __init__(self, lr: float = 0.05, scheduler: bool = False, all_params: bool = False):
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)
        self.backbone, num_features = build_backbone("resnet18", None)
        self.head = nn.Linear(num_features, 1)
        self.epochs: list[dict[str, Any]] = []
        self.bn_modes: list[tuple[int, dict[str, bool]]] = []

    def unfreezable_blocks(self) -> list[tuple[str, nn.Module]]:
        return unfreezable_blocks(self.backbone)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images)).squeeze(1)

    def on_train_epoch_start(self) -> None:
        # Runs after the callbacks' hook. The .train() mimics user code / older Lightning
        # versions resetting every module's mode; frozen BatchNorms must still be in eval.
        self.train()
        self.epochs.append({
            "trainable": {n for n, p in self.named_parameters() if p.requires_grad},
            "groups": len(self.trainer.optimizers[0].param_groups),
        })

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        self.bn_modes.append((self.current_epoch, {
            name: module.training
            for name, module in self.backbone.named_modules()
            if isinstance(module, nn.BatchNorm2d)
        }))
        images, labels = batch
        return F.binary_cross_entropy_with_logits(self(images), labels)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        self.log("val/loss", F.binary_cross_entropy_with_logits(self(images), labels))

    def configure_optimizers(self) -> Any:
        params = self.parameters() if self.hparams.all_params else (
            p for p in self.parameters() if p.requires_grad
        )
        optimizer = torch.optim.SGD(params, lr=self.hparams.lr, momentum=0.9)
        if not self.hparams.scheduler:
            return optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.5**epoch)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def _loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(16, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 2, (16,), generator=generator).float()
    return DataLoader(TensorDataset(images, labels), batch_size=8)


def _fit(
    module: TinyModule, callback: ProgressiveUnfreezing, epochs: int, ckpt_path: Path | None = None
) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=epochs, callbacks=[callback], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=1, num_sanity_val_steps=0,
    )
    trainer.fit(module, _loader(), _loader(), ckpt_path=ckpt_path, weights_only=True)
    return trainer


def _names(module: TinyModule, *blocks: str) -> set[str]:
    return {n for n, _ in module.named_parameters() if n.startswith(("backbone.", "head."))
            and any(n.startswith(f"backbone.{b}.") for b in blocks)}


def _clone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


@pytest.fixture(scope="module")
def schedule_run() -> tuple[TinyModule, ProgressiveUnfreezing, pl.Trainer, dict]:
    """interval=1, max_blocks=2, 4 epochs: head; +layer4.1; +layer4.0; unchanged."""
    module = TinyModule()
    before = _clone_state(module)
    callback = ProgressiveUnfreezing(interval=1, max_blocks=2, lr_factor=0.5)
    trainer = _fit(module, callback, epochs=4)
    return module, callback, trainer, before


def test_schedule_unfreezes_top_down(schedule_run) -> None:
    module, callback, trainer, _ = schedule_run
    trainable = [epoch["trainable"] for epoch in module.epochs]
    assert trainable[0] == HEAD
    assert trainable[1] == HEAD | _names(module, "layer4.1")
    assert trainable[2] == HEAD | _names(module, "layer4.1", "layer4.0")
    assert trainable[3] == trainable[2]
    assert [epoch["groups"] for epoch in module.epochs] == [1, 2, 3, 3]
    assert callback.stage == 2
    assert callback.unfrozen_block_names == ["layer4.1", "layer4.0"]
    groups = trainer.optimizers[0].param_groups
    assert [group.get("name") for group in groups] == [None, "backbone.layer4.1",
                                                       "backbone.layer4.0"]
    assert groups[1]["lr"] == pytest.approx(0.5 * groups[0]["lr"])
    assert trainer.callback_metrics["unfreeze/stage"] == 2
    expected = sum(p.numel() for n, p in module.named_parameters() if n in trainable[3])
    assert trainer.callback_metrics["unfreeze/trainable_params"] == expected


def test_frozen_weights_and_bn_stats_bit_for_bit(schedule_run) -> None:
    module, _, _, before = schedule_run
    after = module.state_dict()
    unfrozen = ("backbone.layer4.1.", "backbone.layer4.0.")
    frozen = [k for k in before if k.startswith("backbone.") and not k.startswith(unfrozen)]
    assert any(k.endswith("running_var") for k in frozen)
    assert any(k.endswith("num_batches_tracked") for k in frozen)
    changed = [k for k in frozen if not torch.equal(before[k], after[k])]
    assert changed == []
    for key in ("backbone.layer4.1.conv1.weight", "backbone.layer4.0.conv2.weight",
                "backbone.layer4.1.bn1.running_mean", "head.weight"):
        assert not torch.equal(before[key], after[key]), key


def test_frozen_bn_in_eval_mode_during_training_step(schedule_run) -> None:
    module, _, _, _ = schedule_run
    order = ["layer4.1", "layer4.0"]
    assert {epoch for epoch, _ in module.bn_modes} == {0, 1, 2, 3}
    for epoch, modes in module.bn_modes:
        unfrozen = tuple(f"{b}." for b in order[: min(epoch, 2)])
        for name, training in modes.items():
            assert training == name.startswith(unfrozen), (epoch, name)
    assert all(m.training for m in module.modules()), "train mode not restored after fit"


class NoModeResetModule(TinyModule):
    """TinyModule without its per-epoch ``.train()``: Lightning 2.x itself keeps module modes
    across epochs and validation, so nothing but the callback puts a block back in train mode."""

    def on_train_epoch_start(self) -> None:
        self.epochs.append({"trainable": {n for n, p in self.named_parameters()
                                          if p.requires_grad}})


def test_an_unfrozen_block_s_batchnorm_trains_without_help() -> None:
    module = NoModeResetModule()
    callback = ProgressiveUnfreezing(interval=1, max_blocks=2)
    running_mean = module.backbone.layer4[1].bn1.running_mean.clone()
    _fit(module, callback, epochs=3)
    for epoch, modes in module.bn_modes:
        unfrozen = tuple(f"{b}." for b in ["layer4.1", "layer4.0"][: min(epoch, 2)])
        for name, training in modes.items():
            assert training == name.startswith(unfrozen), (epoch, name)
    assert not torch.equal(module.backbone.layer4[1].bn1.running_mean, running_mean)


class SyncBatchNormAfterSetup(pl.Callback):
    """Converts BatchNorm to SyncBatchNorm after the unfreezing callback's ``setup``, as
    ``trainer=ddp``'s ``sync_batchnorm`` does (the strategy's setup runs after the callbacks');
    records the stem's live BatchNorm mode at every training step."""

    def __init__(self) -> None:
        self.stem_bn_training: list[tuple[int, bool]] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        nn.SyncBatchNorm.convert_sync_batchnorm(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        bn = pl_module.backbone.bn1
        assert isinstance(bn, nn.SyncBatchNorm)
        self.stem_bn_training.append((trainer.current_epoch, bn.training))


def test_batchnorm_swapped_after_setup_is_the_one_unfrozen() -> None:
    """The stem is a container of the trunk's conv1 and bn1 built when the blocks are resolved;
    resolved before the swap, it held the old bn1 and the live one stayed frozen in eval mode
    while its affine parameters trained."""
    module = TinyModule()
    swap = SyncBatchNormAfterSetup()
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=[ProgressiveUnfreezing(interval=None, schedule=[[1, "all"]]), swap])
    trainer.fit(module, _loader(), _loader())
    assert swap.stem_bn_training == [(0, False), (0, False), (1, True), (1, True)]


def test_train_bn_lets_frozen_bn_statistics_train() -> None:
    module = TinyModule()
    before = _clone_state(module)
    _fit(module, ProgressiveUnfreezing(interval=5, train_bn=True), epochs=1)
    after = module.state_dict()
    assert not torch.equal(before["backbone.layer1.0.bn1.running_mean"],
                           after["backbone.layer1.0.bn1.running_mean"])
    assert torch.equal(before["backbone.layer1.0.conv1.weight"],
                       after["backbone.layer1.0.conv1.weight"])
    assert all(modes["layer1.0.bn1"] for _, modes in module.bn_modes)


def test_max_blocks_none_unfreezes_everything_once() -> None:
    module = TinyModule()
    callback = ProgressiveUnfreezing(interval=2)
    callback.freeze_before_training(module)
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.1)
    for epoch in range(24):
        callback.finetune_function(module, epoch, optimizer)
        assert callback.stage == min(epoch // 2, 9)
    assert callback.unfrozen_block_names[-1] == "stem"
    assert all(p.requires_grad for p in module.parameters())
    in_optimizer = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(in_optimizer) == sorted(id(p) for p in module.parameters())


def test_resume_from_checkpoint_restores_stage(tmp_path: Path) -> None:
    module = TinyModule()
    trainer = _fit(module, ProgressiveUnfreezing(interval=1, max_blocks=3), epochs=2)
    checkpoint = tmp_path / "last.ckpt"
    trainer.save_checkpoint(checkpoint)
    saved = _clone_state(module)

    resumed = TinyModule()
    callback = ProgressiveUnfreezing(interval=1, max_blocks=3)
    trainer = _fit(resumed, callback, epochs=3, ckpt_path=checkpoint)
    assert len(resumed.epochs) == 1, "resumed at epoch 2"
    assert callback.unfrozen_block_names == ["layer4.1", "layer4.0"]
    assert resumed.epochs[0]["groups"] == 3
    assert resumed.epochs[0]["trainable"] == HEAD | _names(resumed, "layer4.1", "layer4.0")
    after = resumed.state_dict()
    # layer4.1 was unfrozen before the checkpoint: it must train again after the resume.
    for key in ("backbone.layer4.1.conv1.weight", "backbone.layer4.0.conv1.weight"):
        assert not torch.equal(saved[key], after[key]), f"{key} did not train after resume"
    assert torch.equal(saved["backbone.layer3.1.conv1.weight"],
                       after["backbone.layer3.1.conv1.weight"])


def test_lambda_scheduler_scales_new_groups_like_the_head() -> None:
    module = TinyModule(scheduler=True)
    trainer = _fit(module, ProgressiveUnfreezing(interval=1, max_blocks=2, lr_factor=0.1),
                   epochs=3)
    head, *blocks = trainer.optimizers[0].param_groups
    assert head["lr"] == pytest.approx(0.05 * 0.5**3)
    for group in blocks:
        assert group["lr"] == pytest.approx(0.1 * head["lr"])


def test_optimizer_with_frozen_params_is_rejected() -> None:
    with pytest.raises(MisconfigurationException, match="requires_grad"):
        _fit(TinyModule(all_params=True), ProgressiveUnfreezing(), epochs=1)


def test_module_without_blocks_is_rejected() -> None:
    class NoBlocks(TinyModule):
        unfreezable_blocks = None

    with pytest.raises(MisconfigurationException, match="unfreezable_blocks"):
        _fit(NoBlocks(), ProgressiveUnfreezing(), epochs=1)


@pytest.mark.parametrize(
    "kwargs", [{"interval": 0}, {"max_blocks": -1}, {"lr_factor": 0.0}]
)
def test_invalid_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ProgressiveUnfreezing(**kwargs)


# --- schedules, plateau trigger, staged early stopping --------------------------------------

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
RESNET152_BLOCKS = (
    ["layer4.2", "layer4.1", "layer4.0"] + [f"layer3.{i}" for i in range(35, -1, -1)]
    + [f"layer2.{i}" for i in range(7, -1, -1)] + ["layer1.2", "layer1.1", "layer1.0", "stem"]
)


class Resnet152Module(pl.LightningModule):
    """The real ResNet152 structure on the meta device: parameter shapes, no memory, no fit."""

    def __init__(self) -> None:
        super().__init__()
        with torch.device("meta"):
            self.backbone, num_features = build_backbone("resnet152", None)
            self.head = nn.Linear(num_features, 2)

    def unfreezable_blocks(self) -> list[tuple[str, nn.Module]]:
        return unfreezable_blocks(self.backbone)


@pytest.fixture(scope="module")
def resnet152() -> Resnet152Module:
    return Resnet152Module()


def _block_prefixes(block: str) -> tuple[str, ...]:
    return ("backbone.conv1.", "backbone.bn1.") if block == "stem" else (f"backbone.{block}.",)


def _expected_trainable(module: nn.Module, blocks: list[str]) -> int:
    """Head + ``blocks`` parameter count, from ``named_parameters`` by name prefix."""
    prefixes = ("head.", *(p for block in blocks for p in _block_prefixes(block)))
    return sum(p.numel() for n, p in module.named_parameters() if n.startswith(prefixes))


def _drive(
    module: nn.Module, callback: ProgressiveUnfreezing, epochs: int,
    scores: list[float] | None = None,
) -> tuple[torch.optim.Optimizer, list[tuple[int, int]]]:
    """Run ``finetune_function`` (and the plateau trigger on ``scores``) epoch by epoch, as the
    trainer would; return the optimizer and ``(stage, trainable parameters)`` per epoch."""
    callback.freeze_before_training(module)
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.1)
    per_epoch = []
    for epoch in range(epochs):
        callback.finetune_function(module, epoch, optimizer)
        per_epoch.append((callback.stage,
                          sum(p.numel() for p in module.parameters() if p.requires_grad)))
        if scores is not None and not callback.finished:
            callback.plateaued(scores[epoch])
    return optimizer, per_epoch


def _instantiate(name: str, **overrides: Any) -> ProgressiveUnfreezing:
    config = OmegaConf.merge(OmegaConf.load(CONF_DIR / "unfreeze" / f"{name}.yaml"), overrides)
    return instantiate(config)


def test_resnet152_block_order_is_the_contract(resnet152) -> None:
    assert [name for name, _ in resnet152.unfreezable_blocks()] == RESNET152_BLOCKS
    total = sum(p.numel() for p in resnet152.parameters())
    assert _expected_trainable(resnet152, RESNET152_BLOCKS) == total


def test_resnet152_interval_schedule_exact_counts(resnet152) -> None:
    callback = _instantiate("interval", interval=2)
    optimizer, per_epoch = _drive(resnet152, callback, epochs=2 * len(RESNET152_BLOCKS) + 4)
    for epoch, (stage, trainable) in enumerate(per_epoch):
        blocks = min(epoch // 2, len(RESNET152_BLOCKS))
        assert stage == blocks
        assert trainable == _expected_trainable(resnet152, RESNET152_BLOCKS[:blocks]), epoch
    assert callback.finished and callback.unfrozen_block_names == RESNET152_BLOCKS
    in_optimizer = sorted(id(p) for group in optimizer.param_groups for p in group["params"])
    assert in_optimizer == sorted(id(p) for p in resnet152.parameters())


def test_resnet152_table1_schedule_exact_counts(resnet152) -> None:
    callback = _instantiate("table1")
    _, per_epoch = _drive(resnet152, callback, epochs=80)
    stages = [(0, []), (35, ["layer4.2"]), (50, ["layer4.2", "layer4.1", "layer4.0"]),
              (70, ["layer4.2", "layer4.1", "layer4.0", "layer3.35", "layer3.34", "layer3.33"])]
    for epoch, (stage, trainable) in enumerate(per_epoch):
        expected_stage = max(i for i, (start, _) in enumerate(stages) if epoch >= start)
        assert stage == expected_stage, epoch
        assert trainable == _expected_trainable(resnet152, stages[stage][1]), epoch
    assert callback.finished
    assert callback.history == [
        {"epoch": 0, "blocks": []}, {"epoch": 35, "blocks": ["layer4.2"]},
        {"epoch": 50, "blocks": ["layer4.1", "layer4.0"]},
        {"epoch": 70, "blocks": ["layer3.35", "layer3.34", "layer3.33"]},
    ]
    assert callback.state_dict()["history"] == callback.history


def test_none_and_all_configs() -> None:
    module = TinyModule()
    none = _instantiate("none", interval=1)  # an overlay's interval must not unfreeze anything
    _, per_epoch = _drive(module, none, epochs=12)
    assert none.finished and per_epoch[-1] == (0, _expected_trainable(module, []))
    every = _instantiate("all")
    _, per_epoch = _drive(TinyModule(), every, epochs=2)
    assert every.finished and every.history[1]["epoch"] == 0
    assert per_epoch == [(1, sum(p.numel() for p in module.parameters()))] * 2


def test_blocks_per_step_and_until() -> None:
    module = TinyModule()
    callback = ProgressiveUnfreezing(interval=2, blocks_per_step=4)
    _, per_epoch = _drive(module, callback, epochs=8)
    assert [len(h["blocks"]) for h in callback.history] == [0, 4, 4, 1]
    assert [h["epoch"] for h in callback.history] == [0, 2, 4, 6]
    assert [stage for stage, _ in per_epoch] == [0, 0, 1, 1, 2, 2, 3, 3]
    callback = ProgressiveUnfreezing(interval=1, blocks_per_step=3, until="layer3.0")
    _drive(module, callback, epochs=5)
    assert callback.history[1:] == [{"epoch": 1, "blocks": ["layer4.1", "layer4.0", "layer3.1"]},
                                    {"epoch": 2, "blocks": ["layer3.0"]}]
    assert _names(module, *callback.unfrozen_block_names) | HEAD == {
        n for n, p in module.named_parameters() if p.requires_grad}
    with pytest.raises(ValueError, match=r"until='layer5.0'.*'layer4.1'.*'stem'"):
        _drive(module, ProgressiveUnfreezing(until="layer5.0"), epochs=1)


@pytest.mark.parametrize(
    ("schedule", "match"),
    [([(2, ["layer4.0"])], r"next blocks top-down are \['layer4.1'\]"),
     ([(2, 5), (3, 5)], "only 4 remain"),
     ([(2, ["layer4.1", "layer9.9"])], "next blocks")],
)
def test_schedule_names_are_checked_against_the_model(schedule: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _drive(TinyModule(), ProgressiveUnfreezing(schedule=schedule), epochs=1)


@pytest.mark.parametrize(
    "kwargs",
    [{"blocks_per_step": 0}, {"monitor": "val/loss"}, {"patience": 2},
     {"monitor": "m", "patience": 1, "mode": "best"}, {"schedule": [(5, 1), (5, 2)]},
     {"schedule": [(-1, 1)]}, {"schedule": [(1, 0)]}, {"schedule": [(1, "most")]},
     {"schedule": [(1, [])]}],
)
def test_invalid_new_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ProgressiveUnfreezing(**kwargs)


@pytest.mark.parametrize(
    ("mode", "values", "fired"),
    [("max", [0.5, 0.6, 0.6, 0.55], [False, False, False, True]),
     ("min", [0.5, 0.4, 0.45, 0.3, 0.3, 0.4], [False] * 5 + [True])],
)
def test_plateau_decision(mode: str, values: list[float], fired: list[bool]) -> None:
    callback = ProgressiveUnfreezing(monitor="m", patience=2, mode=mode)
    assert [callback.plateaued(v) for v in values] == fired


def test_plateau_starts_next_stage_early_and_later_stages_keep_their_length() -> None:
    callback = ProgressiveUnfreezing(schedule=[(4, 1), (8, 2)], monitor="m", patience=1)
    # stage 0 plateaus at epoch 1 (no improvement once): stage 1 begins at 2 and lasts 4 epochs.
    _, per_epoch = _drive(TinyModule(), callback, epochs=8, scores=[1, 1, 2, 3, 4, 5, 6, 7])
    assert [h["epoch"] for h in callback.history] == [0, 2, 6]
    assert [stage for stage, _ in per_epoch] == [0, 0, 1, 1, 1, 1, 2, 2]
    callback = ProgressiveUnfreezing(schedule=[(4, 1)], monitor="m", patience=3)
    _drive(TinyModule(), callback, epochs=3, scores=[2, 1, 1])
    restored = ProgressiveUnfreezing(schedule=[(4, 1)], monitor="m", patience=3)
    restored.load_state_dict(callback.state_dict())  # a mid-stage checkpoint keeps the count
    assert restored.state_dict()["plateau"] == {"best": 2, "wait": 2, "advance": False}
    assert restored.plateaued(1.5)


class ScriptedModule(TinyModule):
    """Logs ``val/score`` from a script (one value per epoch) instead of a real metric."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.scores = scores

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("val/score", self.scores[self.current_epoch])


def _fit_scripted(scores: list[float], *callbacks: pl.Callback) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=len(scores), callbacks=list(callbacks), logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0,
    )
    trainer.fit(ScriptedModule(scores), _loader(), _loader())
    return trainer


def test_plateau_trigger_in_a_real_fit() -> None:
    callback = ProgressiveUnfreezing(interval=100, max_blocks=2, monitor="val/score", patience=1)
    _fit_scripted([1.0, 1.0, 2.0, 3.0, 3.0, 3.0], callback)
    assert callback.history == [{"epoch": 0, "blocks": []}, {"epoch": 2, "blocks": ["layer4.1"]},
                                {"epoch": 5, "blocks": ["layer4.0"]}]


@pytest.mark.parametrize("staged", [False, True])
def test_early_stopping_waits_for_the_last_stage(staged: bool) -> None:
    unfreezing = ProgressiveUnfreezing(interval=1, max_blocks=2)  # stages begin at 0, 1, 2
    stopping = (StagedEarlyStopping(unfreezing, monitor="val/score", mode="max", patience=1)
                if staged else EarlyStopping(monitor="val/score", mode="max", patience=1))
    trainer = _fit_scripted([0.5] * 8, unfreezing, stopping)  # a flat metric
    # Plain EarlyStopping ends the run in stage 1; the staged one counts from stage 2 (epoch 2).
    assert stopping.stopped_epoch == (3 if staged else 1)
    assert trainer.current_epoch == stopping.stopped_epoch + 1
    assert unfreezing.stage == (2 if staged else 1)


class StepScheduledModule(TinyModule):
    """TinyModule under SGD with momentum (optimizer state) and StepLR (per-group ``base_lrs``).

    Not ReduceLROnPlateau: Lightning steps plateau schedulers after the epoch-end checkpoint and
    does not replay that step on resume (Lightning PR #14702), whatever the callbacks.
    """

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD((p for p in self.parameters() if p.requires_grad),
                                    lr=self.hparams.lr, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def _resumable_fit(epochs: int, checkpoints: Path, ckpt_path: Path | None = None
                   ) -> tuple[StepScheduledModule, ProgressiveUnfreezing, pl.Trainer]:
    """interval=2, two blocks, checkpoint after every epoch: stage 1 spans epochs 2-3."""
    pl.seed_everything(0)
    module = StepScheduledModule()
    callback = ProgressiveUnfreezing(interval=2, max_blocks=2, lr_factor=0.5,
                                     monitor="val/loss", patience=3, mode="min")
    saver = pl.callbacks.ModelCheckpoint(dirpath=checkpoints, filename="{epoch}",
                                         save_top_k=-1, every_n_epochs=1)
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=epochs, callbacks=[callback, saver], logger=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
        num_sanity_val_steps=0, deterministic=True,
    )
    trainer.fit(module, _loader(), _loader(), ckpt_path=ckpt_path, weights_only=True)
    return module, callback, trainer


def test_resume_mid_stage_continues_as_if_never_interrupted(tmp_path: Path) -> None:
    straight, straight_callback, straight_trainer = _resumable_fit(5, tmp_path / "straight")
    # Epoch 2's checkpoint: stage 1 (layer4.1) began at epoch 2 and runs one more epoch.
    mid_stage = tmp_path / "straight" / "epoch=2.ckpt"
    checkpoint = torch.load(mid_stage, weights_only=True)
    assert [g["name"] for g in checkpoint["optimizer_states"][0]["param_groups"][1:]] == [
        "backbone.layer4.1"]
    resumed, resumed_callback, resumed_trainer = _resumable_fit(5, tmp_path / "resumed",
                                                                ckpt_path=mid_stage)
    assert [e["trainable"] for e in resumed.epochs] == [e["trainable"]
                                                        for e in straight.epochs[3:]]
    assert resumed_callback.history == straight_callback.history == [
        {"epoch": 0, "blocks": []}, {"epoch": 2, "blocks": ["layer4.1"]},
        {"epoch": 4, "blocks": ["layer4.0"]}]
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    straight_optimizer = straight_trainer.optimizers[0].state_dict()
    resumed_optimizer = resumed_trainer.optimizers[0].state_dict()
    assert resumed_optimizer["param_groups"] == straight_optimizer["param_groups"]
    for index, state in straight_optimizer["state"].items():
        assert torch.equal(state["momentum_buffer"],
                           resumed_optimizer["state"][index]["momentum_buffer"]), index
    straight_scheduler = straight_trainer.lr_scheduler_configs[0].scheduler
    resumed_scheduler = resumed_trainer.lr_scheduler_configs[0].scheduler
    assert len(resumed_scheduler.base_lrs) == 3
    assert resumed_scheduler.state_dict() == straight_scheduler.state_dict()


class PlateauScheduledModule(TinyModule):
    """SGD with momentum under ReduceLROnPlateau on a metric that never improves."""

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("val/constant", 1.0)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD((p for p in self.parameters() if p.requires_grad),
                                    lr=self.hparams.lr, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max",
                                                               factor=0.5, patience=0)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": "val/constant"}}


class HeadStateProbe(pl.Callback):
    """The head's momentum buffers at each epoch end, and at the first step of each epoch."""

    def __init__(self) -> None:
        self.at_epoch_end: list[torch.Tensor] = []
        self.at_first_step: list[torch.Tensor] = []

    def _head_state(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.Tensor:
        state = trainer.optimizers[0].state[pl_module.head.weight]
        return state["momentum_buffer"].clone()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0 and trainer.current_epoch > 0:
            self.at_first_step.append(self._head_state(trainer, pl_module))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.at_epoch_end.append(self._head_state(trainer, pl_module))


def test_plateau_scheduler_and_optimizer_state_across_unfreezes() -> None:
    module = PlateauScheduledModule()
    probe = HeadStateProbe()
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=4, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=[ProgressiveUnfreezing(interval=1, max_blocks=2, lr_factor=0.1), probe],
    )
    trainer.fit(module, _loader(), _loader())
    head, *blocks = trainer.optimizers[0].param_groups
    # Reductions at the ends of epochs 1, 2 and 3 (epoch 0 set the best value).
    assert head["lr"] == pytest.approx(0.05 * 0.5**3)
    assert [group["name"] for group in blocks] == ["backbone.layer4.1", "backbone.layer4.0"]
    for group in blocks:  # joined at 0.1x the head's current lr, then reduced with it
        assert group["lr"] == pytest.approx(0.1 * head["lr"])
    assert len(trainer.lr_scheduler_configs[0].scheduler.min_lrs) == 3
    # The head's momentum survives each unfreeze (epochs 1 and 2) untouched.
    for before, after in zip(probe.at_epoch_end[:2], probe.at_first_step[:2], strict=True):
        assert torch.equal(before, after)


class OneCycleModule(TinyModule):
    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD((p for p in self.parameters() if p.requires_grad), lr=0.1)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=10)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def test_schedulers_with_per_group_construction_state_are_rejected() -> None:
    with pytest.raises(MisconfigurationException, match="cannot add param groups under OneCycleLR"):
        _fit(OneCycleModule(), ProgressiveUnfreezing(interval=1, max_blocks=1), epochs=1)


# --- the study's settings: a cap per setting, the last one ending the run, restored weights --


def test_settings_end_by_plateau_or_cap_and_the_last_one_ends_the_run() -> None:
    unfreezing = ProgressiveUnfreezing(interval=3, last_stage_epochs=3, until="layer4.0",
                                       monitor="val/score", patience=1)
    # mode="min" on a rising score would stop the run one epoch into the last stage, were it not
    # left to the unfreezing callback's own rule
    stopping = StagedEarlyStopping(unfreezing, monitor="val/score", mode="min", patience=1)
    # stage 0 plateaus at epoch 1 (1.0 twice); stage 1 improves every epoch and runs its 3
    # epochs (2-4); stage 2, the last, runs its 3 epochs (5-7) and ends the run.
    trainer = _fit_scripted([1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0] + [9.0] * 12,
                            unfreezing, stopping)
    assert unfreezing.history == [{"epoch": 0, "blocks": []},
                                  {"epoch": 2, "blocks": ["layer4.1"]},
                                  {"epoch": 5, "blocks": ["layer4.0"]}]
    assert trainer.current_epoch == 8  # epochs 0-7 ran, of max_epochs 20
    assert stopping.stopped_epoch == 0


def test_a_plateau_in_the_last_setting_ends_the_run() -> None:
    unfreezing = ProgressiveUnfreezing(interval=3, last_stage_epochs=3, until="layer4.1",
                                       monitor="val/score", patience=1)
    trainer = _fit_scripted([1.0, 2.0, 3.0, 4.0, 4.0] + [9.0] * 10, unfreezing)
    assert [entry["epoch"] for entry in unfreezing.history] == [0, 3]
    assert trainer.current_epoch == 5  # epoch 4 did not improve on epoch 3: the run ends


class WeightProbe(pl.Callback):
    """Head and layer4.1 weights at the start (after unfreezing) and end of every epoch."""

    def __init__(self) -> None:
        self.start: list[dict[str, torch.Tensor]] = []
        self.end: list[dict[str, torch.Tensor]] = []

    @staticmethod
    def _weights(module: pl.LightningModule) -> dict[str, torch.Tensor]:
        return {"head": module.head.weight.detach().clone(),
                "layer4.1": module.backbone.layer4[1].conv1.weight.detach().clone()}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start.append(self._weights(pl_module))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.end.append(self._weights(pl_module))


@pytest.mark.parametrize("restore_best", [True, False])
def test_restore_best_starts_each_setting_from_the_previous_best(restore_best: bool) -> None:
    unfreezing = ProgressiveUnfreezing(interval=10, until="layer4.0", monitor="val/score",
                                       patience=2, restore_best=restore_best)
    probe = WeightProbe()
    # stage 0: best at epoch 0, plateau after epoch 2 -> stage 1 (layer4.1) from epoch 3;
    # stage 1: best at epoch 4, plateau after epoch 6 -> stage 2 from epoch 7.
    _fit_scripted([3.0, 1.0, 1.0, 2.0, 5.0, 4.0, 4.0, 4.0], unfreezing, probe)
    assert [entry["epoch"] for entry in unfreezing.history] == [0, 3, 7]
    best_of_stage = {3: 0, 7: 4}
    for start, best in best_of_stage.items():
        expected = probe.end[best] if restore_best else probe.end[start - 1]
        for name, weight in probe.start[start].items():
            assert torch.equal(weight, expected[name]), (start, name)
        assert not torch.equal(probe.end[best]["head"], probe.end[start - 1]["head"])
    # layer4.1 trained during stage 1 only: the restore at epoch 7 rewound it to epoch 4's.
    assert torch.equal(probe.start[3]["layer4.1"], probe.end[0]["layer4.1"])


class MomentumProbe(pl.Callback):
    """The head weight's SGD momentum buffer at the start and end of every epoch."""

    def __init__(self) -> None:
        self.start: list[torch.Tensor] = []
        self.end: list[torch.Tensor] = []

    def _buffer(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.Tensor:
        state = trainer.optimizers[0].state[pl_module.head.weight]
        return state["momentum_buffer"].clone()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch > 0:
            self.start.append(self._buffer(trainer, pl_module))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.end.append(self._buffer(trainer, pl_module))


def test_restore_best_rolls_back_weights_not_the_optimizer_state() -> None:
    """The documented choice (docs/design.md): the optimizer's moments (and step counts) and the
    scheduler go on from where the plateau left them; only the weights are rolled back."""
    unfreezing = ProgressiveUnfreezing(interval=10, until="layer4.0", monitor="val/score",
                                       patience=2, restore_best=True)
    probe = MomentumProbe()
    _fit_scripted([3.0, 1.0, 1.0, 2.0], unfreezing, probe)  # stage 1 from epoch 3, best epoch 0
    assert [entry["epoch"] for entry in unfreezing.history] == [0, 3]
    assert torch.equal(probe.start[2], probe.end[2])  # epoch 3 starts with epoch 2's moments
    assert not torch.equal(probe.start[2], probe.end[0])  # not those of the restored epoch 0


def test_restore_best_keeps_only_what_the_stage_trains_and_checkpoints_it() -> None:
    unfreezing = ProgressiveUnfreezing(interval=10, until="layer4.0", monitor="val/score",
                                       patience=5, restore_best=True)
    _fit_scripted([1.0, 2.0], unfreezing)  # stage 0 only: the head trains
    state = unfreezing.state_dict()["best_state"]
    assert set(state) == HEAD
    restored = ProgressiveUnfreezing(interval=10, until="layer4.0", monitor="val/score",
                                     patience=5, restore_best=True)
    restored.load_state_dict(unfreezing.state_dict())
    assert all(torch.equal(restored.state_dict()["best_state"][k], v) for k, v in state.items())


def test_restore_best_needs_a_monitor_and_a_short_max_epochs_warns() -> None:
    with pytest.raises(ValueError, match="restore_best needs monitor"):
        ProgressiveUnfreezing(restore_best=True)
    unfreezing = ProgressiveUnfreezing(interval=3, last_stage_epochs=3, until="layer4.0")
    with pytest.warns(UserWarning, match="max_epochs=4 may end the run before"):
        _fit_scripted([1.0] * 4, unfreezing)
