"""build_backbone (ResNet, DenseNet, grey input, ImageNet offline, local state dicts, timm)
and unfreezable_blocks."""

from __future__ import annotations

import hashlib
import logging
import pickle
import sys
import types
from pathlib import Path
from urllib.error import URLError

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import densenet121, resnet18

from cxr_lightning.callbacks.unfreeze import ProgressiveUnfreezing
from cxr_lightning.models import backbones
from cxr_lightning.models.backbones import (
    build_backbone,
    calibrate_batchnorm,
    is_random_init,
    unfreezable_blocks,
)

IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _assert_blocks_partition(trunk: nn.Module, blocks: list[tuple[str, nn.Module]]) -> None:
    block_params = [id(p) for _, block in blocks for p in block.parameters()]
    assert len(block_params) == len(set(block_params)), "a parameter is in two blocks"
    assert set(block_params) == {id(p) for p in trunk.parameters()}


def test_resnet152_blocks_top_down() -> None:
    trunk, num_features = build_backbone("resnet152", None)
    blocks = unfreezable_blocks(trunk)
    names = [name for name, _ in blocks]
    assert num_features == 2048
    assert names[:4] == ["layer4.2", "layer4.1", "layer4.0", "layer3.35"]
    assert names[-2:] == ["layer1.0", "stem"]
    assert len(names) == 3 + 36 + 8 + 3 + 1
    assert dict(blocks)["layer3.35"] is trunk.layer3[35]
    _assert_blocks_partition(trunk, blocks)


def test_resnet18_trunk_and_blocks() -> None:
    trunk, num_features = build_backbone("resnet18", "none")
    blocks = unfreezable_blocks(trunk)
    assert num_features == 512
    assert isinstance(trunk.fc, nn.Identity)
    assert trunk(IMAGES).shape == (2, 512)
    assert [name for name, _ in blocks] == [
        "layer4.1", "layer4.0", "layer3.1", "layer3.0", "layer2.1", "layer2.0",
        "layer1.1", "layer1.0", "stem",
    ]
    stem = dict(blocks)["stem"]
    assert list(stem) == [trunk.conv1, trunk.bn1]
    _assert_blocks_partition(trunk, blocks)


def test_unknown_backbone_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="resnet18.*resnet152.*densenet121.*timm/<name>"):
        build_backbone("vgg16", None)


@pytest.fixture
def hub_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub directory: nothing cached."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return tmp_path / "hub"


@pytest.mark.parametrize(
    ("name", "file_name"),
    [("resnet18", "resnet18-f37072fd.pth"), ("densenet121", "densenet121-a639ec97.pth")],
)
@pytest.mark.parametrize(
    "error",
    [URLError("[Errno -2] Name or service not known"), TimeoutError("timed out"), ValueError("?")],
)
def test_imagenet_offline_explains_where_to_put_the_file(
    hub_dir: Path, monkeypatch: pytest.MonkeyPatch, error: Exception, name: str, file_name: str
) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError) as raised:
        build_backbone(name, "imagenet")
    message = str(raised.value)
    assert repr(file_name) in message
    assert repr(str(hub_dir / "checkpoints")) in message
    assert "model.weights=none" in message
    assert raised.value.__cause__ is error


def _place_in_hub(payload: object, name: str, hub_dir: Path,
                  monkeypatch: pytest.MonkeyPatch) -> Path:
    """Save ``payload`` in the hub cache as ``name-<its sha256 prefix>.pth``, the name the
    (patched) download URL of backbone ``name`` points at."""
    (hub_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    staged = hub_dir / "staged.pth"
    torch.save(payload, staged)
    prefix = hashlib.sha256(staged.read_bytes()).hexdigest()[:8]
    placed = staged.rename(hub_dir / "checkpoints" / f"{name}-{prefix}.pth")
    monkeypatch.setattr(backbones, "imagenet_url",
                        lambda arch: f"https://download.pytorch.org/models/{placed.name}")
    return placed


def test_imagenet_file_placed_as_told_is_used(hub_dir: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    reference = resnet18()
    _place_in_hub(reference.state_dict(), "resnet18", hub_dir, monkeypatch)
    trunk, _ = build_backbone("resnet18", "imagenet")
    reference.fc = nn.Identity()
    assert torch.equal(trunk.eval()(IMAGES), reference.eval()(IMAGES))


class _Payload:
    """A pickle that touches ``marker`` when unpickled (a stand-in for any code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_poisoned_hub_file_at_the_readme_name_is_refused_unrun(hub_dir: Path,
                                                                tmp_path: Path) -> None:
    """A pickle placed where the README tells offline users to put the weights: its hash
    does not match the name, so it is refused before anything is unpickled."""
    marker = tmp_path / "payload_ran"
    (hub_dir / "checkpoints").mkdir(parents=True)
    poisoned = hub_dir / "checkpoints" / "resnet18-f37072fd.pth"
    torch.save({"conv1.weight": _Payload(marker)}, poisoned)
    with pytest.raises(ValueError, match=r"resnet18-f37072fd\.pth.*does not start with 'f37072fd'"):
        build_backbone("resnet18", "imagenet")
    assert not marker.exists()


def test_poisoned_hub_file_with_a_matching_hash_is_not_unpickled(
    hub_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even a file whose name carries its own hash is loaded with weights_only=True."""
    marker = tmp_path / "payload_ran"
    _place_in_hub({"conv1.weight": _Payload(marker)}, "resnet18", hub_dir, monkeypatch)
    with pytest.raises(pickle.UnpicklingError):
        build_backbone("resnet18", "imagenet")
    assert not marker.exists()


@pytest.mark.parametrize("layout", ["plain", "nested", "module_prefix"])
def test_local_state_dict_reproduces_outputs(tmp_path: Path, layout: str) -> None:
    reference = resnet18()
    state = reference.state_dict()
    if layout == "nested":
        state = {"state_dict": state, "epoch": 3}
    elif layout == "module_prefix":
        state = {f"module.{key}": value for key, value in state.items()}
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    trunk, _ = build_backbone("resnet18", str(path))
    reference.fc = nn.Identity()
    assert torch.equal(trunk.eval()(IMAGES), reference.eval()(IMAGES))


@pytest.mark.parametrize(("name", "constructor", "dropped", "missing", "head"), [
    ("resnet18", resnet18, "layer4.1.", "layer4.1.conv1.weight", "fc.weight"),
    ("densenet121", densenet121, "features.norm5.", "features.norm5.weight", "classifier.weight"),
])
def test_local_state_dict_logs_missing_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name, constructor, dropped, missing, head
) -> None:
    state = {k: v for k, v in constructor().state_dict().items() if not k.startswith(dropped)}
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with caplog.at_level(logging.INFO, logger="cxr_lightning.models.backbones"):
        build_backbone(name, str(path))
    assert missing in caplog.text
    assert head not in caplog.text  # the head's keys are expected to be absent, not reported


def test_local_state_dict_without_matching_keys(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="other.pth"):
        build_backbone("resnet18", str(path))


def test_local_state_dict_of_another_architecture(tmp_path: Path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3)}, path)
    with pytest.raises(ValueError, match="resnet34.pth"):
        build_backbone("resnet18", str(path))


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"model\.weights.*nowhere\.pth"):
        build_backbone("resnet18", str(tmp_path / "nowhere.pth"))


def test_batchnorm_calibration_tames_a_random_deep_trunk():
    torch.manual_seed(0)
    trunk, _ = build_backbone("resnet152", "none")
    trunk.eval()
    images = torch.randn(8, 3, 32, 32)
    weights_before = {k: v.clone() for k, v in trunk.named_parameters()}
    with torch.no_grad():
        exploded = trunk(images).abs().mean().item()
    calibrate_batchnorm(trunk, [images[:4], images[4:]])
    with torch.no_grad():
        calibrated = trunk(images).abs().mean().item()
    assert exploded > 1e3  # eval-mode BN with mean 0 / var 1 does not normalise
    assert calibrated < 10
    assert all(torch.equal(p, weights_before[k]) for k, p in trunk.named_parameters())
    assert not trunk.training  # update_bn restores the mode it found


def test_random_init_keywords():
    assert is_random_init(None) and is_random_init("none") and is_random_init(" None ")
    assert not is_random_init("imagenet") and not is_random_init("/path/to/weights.pt")


# 32x32 suffices: DenseNet-121 maps it to 1x1 before its pooling
GREY = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
DENSENET121_LAYERS = {1: 6, 2: 12, 3: 24, 4: 16}


def _densenet121_block_names() -> list[str]:
    """The documented order, written out independently of the implementation."""
    names = []
    for stage in (4, 3, 2, 1):
        if stage < 4:
            names.append(f"transition{stage}")
        layers = range(DENSENET121_LAYERS[stage], 0, -1)
        names += [f"denseblock{stage}.denselayer{i}" for i in layers]
    return [*names, "stem"]


def test_densenet121_trunk_and_blocks() -> None:
    trunk, num_features = build_backbone("densenet121", "none")
    blocks = unfreezable_blocks(trunk)
    names = [name for name, _ in blocks]
    assert num_features == 1024
    assert isinstance(trunk.classifier, nn.Identity)
    assert trunk.eval()(GREY.expand(-1, 3, -1, -1)).shape == (2, 1024)
    assert names == _densenet121_block_names()
    assert names[:2] == ["denseblock4.denselayer16", "denseblock4.denselayer15"]
    assert names[15:18] == ["denseblock4.denselayer1", "transition3", "denseblock3.denselayer24"]
    assert names[-2:] == ["denseblock1.denselayer1", "stem"]
    assert len(names) == 62
    assert names == [name for name, _ in unfreezable_blocks(build_backbone("densenet121", None)[0])]
    features = trunk.features
    assert list(dict(blocks)["denseblock4.denselayer16"]) == [
        features.denseblock4.denselayer16, features.norm5,
    ]
    assert dict(blocks)["transition3"] is features.transition3
    assert dict(blocks)["denseblock3.denselayer24"] is features.denseblock3.denselayer24
    assert list(dict(blocks)["stem"]) == [features.conv0, features.norm0]
    _assert_blocks_partition(trunk, blocks)


def test_unfreezable_blocks_rejects_other_modules() -> None:
    with pytest.raises(TypeError, match="ResNet or DenseNet"):
        unfreezable_blocks(nn.Linear(2, 2))


@pytest.mark.parametrize(
    ("name", "source"),
    [("resnet18", "seed"), ("densenet121", "seed"), ("resnet18", "file"), ("densenet121", "file")],
)
def test_grey_trunk_equals_rgb_trunk_on_identical_channels(
    tmp_path: Path, name: str, source: str
) -> None:
    torch.manual_seed(0)
    rgb, _ = build_backbone(name, None)
    if source == "seed":  # same RNG stream: the grey trunk collapses the same random weights
        torch.manual_seed(0)
        grey, num_features = build_backbone(name, None, in_channels=1)
    else:  # an RGB state dict is collapsed; the grey trunk's own state dict then loads as is
        path = tmp_path / "weights.pth"
        torch.save(rgb.state_dict(), path)
        collapsed, _ = build_backbone(name, str(path), in_channels=1)
        torch.save(collapsed.state_dict(), path)
        grey, num_features = build_backbone(name, str(path), in_channels=1)
    stem = grey.conv1 if name == "resnet18" else grey.features.conv0
    assert stem.weight.shape[1] == 1
    with torch.no_grad():
        expected = rgb.eval()(GREY.expand(-1, 3, -1, -1))
        actual = grey.eval()(GREY)
    assert actual.shape == (2, num_features)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_grey_and_rgb_differ_on_unequal_channels() -> None:
    """Per-channel (ImageNet) normalisation breaks the equivalence: the docstring's caveat."""
    torch.manual_seed(0)
    rgb, _ = build_backbone("resnet18", None)
    torch.manual_seed(0)
    grey, _ = build_backbone("resnet18", None, in_channels=1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        rgb_out = rgb.eval()((GREY.expand(-1, 3, -1, -1) - mean) / std)
        grey_out = grey.eval()((GREY - mean[:, :1]) / std[:, :1])
    assert not torch.allclose(rgb_out, grey_out, rtol=1e-4, atol=1e-5)


def test_in_channels_must_be_one_or_three() -> None:
    with pytest.raises(ValueError, match="in_channels must be 1 or 3"):
        build_backbone("resnet18", None, in_channels=2)


def _legacy_densenet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's hub-file layout: ``denselayerN.norm.1.weight`` for ``norm1.weight``."""
    legacy = {}
    for key, value in state.items():
        parts = key.split(".")
        if "denselayer" in key and parts[-2][:-1] in ("norm", "conv") and parts[-2][-1] in "12":
            key = ".".join([*parts[:-2], parts[-2][:-1], parts[-2][-1], parts[-1]])
        legacy[key] = value
    return legacy


def test_densenet_imagenet_file_with_legacy_keys_is_used(
    hub_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    reference = densenet121()
    legacy = _legacy_densenet_keys(reference.state_dict())
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    _place_in_hub(legacy, "densenet121", hub_dir, monkeypatch)
    trunk, _ = build_backbone("densenet121", "imagenet")
    grey, _ = build_backbone("densenet121", "imagenet", in_channels=1)
    reference.classifier = nn.Identity()
    with torch.no_grad():
        expected = reference.eval()(GREY.expand(-1, 3, -1, -1))
        assert torch.equal(trunk.eval()(GREY.expand(-1, 3, -1, -1)), expected)
        torch.testing.assert_close(grey.eval()(GREY), expected, rtol=1e-4, atol=1e-5)


def test_densenet_local_state_dict_round_trip(tmp_path: Path) -> None:
    """Legacy keys under a ``module.`` prefix (plain layouts: see the grey ``file`` case)."""
    torch.manual_seed(0)
    reference = densenet121()
    legacy = _legacy_densenet_keys(reference.state_dict())
    state = {f"module.{key}": value for key, value in legacy.items()}
    path = tmp_path / "densenet.pth"
    torch.save(state, path)
    trunk, _ = build_backbone("densenet121", str(path))
    reference.classifier = nn.Identity()
    images = GREY.expand(-1, 3, -1, -1)
    with torch.no_grad():
        assert torch.equal(trunk.eval()(images), reference.eval()(images))




def test_timm_backbone_without_timm_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(ImportError, match="timm/convnext_tiny.*pip install timm"):
        build_backbone("timm/convnext_tiny", "imagenet")


class _TimmLike(nn.Module):
    """Stands in for a timm model: a root parameter, a stem, two blocks, a final norm."""

    num_features = 4

    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 4))
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
        self.blocks = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        self.norm = nn.LayerNorm(4)

    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        return {"stem": r"^cls_token|^stem", "blocks": r"^blocks\.(\d+)"}


_TimmLike.__module__ = "timm.models.fake"


def test_timm_groups_become_named_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    def group_parameters(module: nn.Module, matcher: object) -> dict[int, list[str]]:
        """timm's answer for _TimmLike: group id -> parameter names, bottom-up, head last."""
        assert matcher == module.group_matcher(coarse=False)
        names = [name for name, _ in module.named_parameters()]
        prefixes = [("cls_token", "stem."), ("blocks.0.",), ("blocks.1.",), ("norm.",)]
        return {i: [n for n in names if n.startswith(p)] for i, p in enumerate(prefixes)}

    created: dict[str, object] = {}

    def create_model(name: str, **kwargs: object) -> nn.Module:
        created.update(kwargs, name=name)
        return _TimmLike()

    timm = types.ModuleType("timm")
    timm.create_model = create_model
    manipulate = types.ModuleType("timm.models._manipulate")
    manipulate.group_parameters = group_parameters
    monkeypatch.setitem(sys.modules, "timm", timm)
    monkeypatch.setitem(sys.modules, "timm.models", types.ModuleType("timm.models"))
    monkeypatch.setitem(sys.modules, "timm.models._manipulate", manipulate)

    trunk, num_features = build_backbone("timm/fake", "none", in_channels=1)
    assert created == {"name": "fake", "pretrained": False, "num_classes": 0, "in_chans": 1}
    assert num_features == 4
    blocks = unfreezable_blocks(trunk)
    assert [name for name, _ in blocks] == ["norm", "blocks.1", "blocks.0", "cls_token+stem"]
    stem_modules = list(dict(blocks)["cls_token+stem"].modules())
    assert trunk.stem in stem_modules and trunk.stem[1] in stem_modules  # its BatchNorm is seen
    _assert_blocks_partition(trunk, blocks)


class _DenseNetModule(pl.LightningModule):
    """A random-init DenseNet-121 trunk and a linear head, for ProgressiveUnfreezing."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone, num_features = build_backbone("densenet121", None)
        self.head = nn.Linear(num_features, 1)

    def unfreezable_blocks(self) -> list[tuple[str, nn.Module]]:
        return unfreezable_blocks(self.backbone)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        images, labels = batch
        logits = self.head(self.backbone(images)).squeeze(1)
        return F.binary_cross_entropy_with_logits(logits, labels)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)


def test_progressive_unfreezing_with_a_densenet_trunk(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 2, (8,), generator=generator).float()
    module = _DenseNetModule()
    before = {k: v.clone() for k, v in module.backbone.state_dict().items()}
    callback = ProgressiveUnfreezing(interval=1)
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", callbacks=[callback], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, DataLoader(TensorDataset(images, labels), batch_size=4))

    assert callback.unfrozen_block_names == ["denseblock4.denselayer16"]
    top = dict(module.unfreezable_blocks())["denseblock4.denselayer16"]
    top_params = {id(p) for p in top.parameters()}
    trainable = {id(p) for p in module.parameters() if p.requires_grad}
    assert trainable == top_params | {id(p) for p in module.head.parameters()}
    after = module.backbone.state_dict()
    top_keys = ("features.denseblock4.denselayer16.", "features.norm5.")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "the unfrozen block did not train"
    assert all(k.startswith(top_keys) for k in changed), "a frozen weight or BN buffer changed"
    assert "features.norm5.weight" in changed


@pytest.mark.parametrize("boundary", ["pooled", "layer4.1", "layer4.0", "layer1.0"])
def test_a_boundary_split_forward_is_the_trunks_forward(boundary):
    torch.manual_seed(0)
    trunk, _ = backbones.build_backbone("resnet18", None)
    trunk.eval()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        activations = backbones.prefix_forward(trunk, boundary, images)
        split = backbones.suffix_forward(trunk, boundary, activations)
        assert torch.equal(split, trunk(images.contiguous(memory_format=torch.channels_last)))
    expected_shape = {"pooled": (4, 512), "layer4.1": (4, 512, 1, 1), "layer4.0": (4, 256, 2, 2),
                      "layer1.0": (4, 64, 8, 8)}[boundary]  # 32 px: /2 stem conv, /2 max pool
    assert tuple(activations.shape) == expected_shape


def test_a_split_at_the_stem_or_an_unknown_block_is_refused():
    trunk, _ = backbones.build_backbone("resnet18", None)
    for boundary in ("stem", "layer5.0"):
        with pytest.raises(ValueError, match="is not a block above the stem"):
            backbones.prefix_forward(trunk, boundary, torch.zeros(1, 3, 32, 32))
