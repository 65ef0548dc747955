"""build_backbone (random, ImageNet offline, local state dicts) and unfreezable_blocks."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

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
    with pytest.raises(ValueError, match="resnet18.*resnet152"):
        build_backbone("vgg16", None)


@pytest.fixture
def hub_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub directory: nothing cached."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return tmp_path / "hub"


@pytest.mark.parametrize(
    "error",
    [URLError("[Errno -2] Name or service not known"), TimeoutError("timed out"), ValueError("?")],
)
def test_imagenet_offline_explains_where_to_put_the_file(
    hub_dir: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError) as raised:
        build_backbone("resnet18", "imagenet")
    message = str(raised.value)
    assert "'resnet18-f37072fd.pth'" in message
    assert repr(str(hub_dir / "checkpoints")) in message
    assert "model.weights=none" in message
    assert raised.value.__cause__ is error


def test_imagenet_file_placed_as_told_is_used(hub_dir: Path) -> None:
    reference = resnet18()
    (hub_dir / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), hub_dir / "checkpoints" / "resnet18-f37072fd.pth")
    trunk, _ = build_backbone("resnet18", "imagenet")
    reference.fc = nn.Identity()
    assert torch.equal(trunk.eval()(IMAGES), reference.eval()(IMAGES))


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


def test_local_state_dict_logs_missing_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = {k: v for k, v in resnet18().state_dict().items() if not k.startswith("layer4.1.")}
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with caplog.at_level(logging.INFO, logger="cxr_lightning.models.backbones"):
        build_backbone("resnet18", str(path))
    assert "layer4.1.conv1.weight" in caplog.text
    assert "fc.weight" not in caplog.text


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
