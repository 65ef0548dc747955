"""ResNet trunks (torchvision) without their classifier, and their unfreezable blocks."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import update_bn
from torchvision import models
from torchvision.models import WeightsEnum

log = logging.getLogger(__name__)

_RESNETS: dict[str, tuple[Callable[..., models.ResNet], type[WeightsEnum]]] = {
    "resnet18": (models.resnet18, models.ResNet18_Weights),
    "resnet34": (models.resnet34, models.ResNet34_Weights),
    "resnet50": (models.resnet50, models.ResNet50_Weights),
    "resnet101": (models.resnet101, models.ResNet101_Weights),
    "resnet152": (models.resnet152, models.ResNet152_Weights),
}
_STAGES = ("layer4", "layer3", "layer2", "layer1")


def build_backbone(name: str, weights: str | None) -> tuple[nn.Module, int]:
    """Build a ResNet trunk mapping (N, 3, H, W) to (N, num_features).

    Args:
        name: one of ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``, ``resnet152``.
        weights: ``"imagenet"`` (torchvision's DEFAULT weights, cached under
            ``torch.hub.get_dir()/checkpoints``), ``"none"``/``None`` (random init), or the path
            of a local state dict (``fc.*`` keys are ignored).

    Returns:
        ``(trunk, num_features)``; the trunk's ``fc`` is an ``nn.Identity``.
    """
    if name not in _RESNETS:
        raise ValueError(f"Unknown backbone {name!r}; known: {', '.join(_RESNETS)}")
    constructor, weights_enum = _RESNETS[name]
    trunk = constructor(weights=None)
    if isinstance(weights, str) and weights.strip().lower() == "imagenet":
        trunk.load_state_dict(_imagenet_state_dict(name, weights_enum.DEFAULT))
    elif not is_random_init(weights):
        _load_local_weights(trunk, Path(weights).expanduser())
    num_features = trunk.fc.in_features
    trunk.fc = nn.Identity()
    return trunk, num_features


def is_random_init(weights: str | None) -> bool:
    """Whether a ``model.weights`` value asks for random initialisation (``none`` or null)."""
    return weights is None or weights.strip().lower() == "none"


def unfreezable_blocks(trunk: nn.Module) -> list[tuple[str, nn.Module]]:
    """The trunk's blocks top-down: ``layer4.<last>`` … ``layer1.0``, then ``stem``.

    ``stem`` is an ``nn.ModuleList`` of the trunk's own ``conv1`` and ``bn1``. Every trunk
    parameter belongs to exactly one block.
    """
    if not isinstance(trunk, models.ResNet):
        raise TypeError(f"unfreezable_blocks expects a torchvision ResNet, got {type(trunk)}")
    blocks: list[tuple[str, nn.Module]] = []
    for stage in _STAGES:
        layer: nn.Sequential = getattr(trunk, stage)
        blocks.extend((f"{stage}.{i}", layer[i]) for i in reversed(range(len(layer))))
    blocks.append(("stem", nn.ModuleList([trunk.conv1, trunk.bn1])))
    return blocks


def _imagenet_state_dict(name: str, weights: WeightsEnum) -> dict[str, torch.Tensor]:
    """Fetch ``weights`` through torchvision (download or cache); explain how to fix a failure."""
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    file_name = os.path.basename(weights.url)
    log.info("Loading %s ImageNet weights %s from %s", name, weights, checkpoints / file_name)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # network, DNS, proxy, hash: all mean "no usable file"
        raise RuntimeError(
            f"Could not obtain the ImageNet weights for {name} ({weights}): {err!r}. "
            f"Without network access, download {weights.url} elsewhere and place it, named "
            f"exactly {file_name!r}, in the directory {str(checkpoints)!r} "
            f"(torch.hub.get_dir()/checkpoints, set by $TORCH_HOME). Alternatively set "
            f"model.weights=none (random init) or model.weights=/path/to/state_dict.pth."
        ) from err


def _load_local_weights(trunk: nn.Module, path: Path) -> None:
    """Load a local state dict (plain or under ``"state_dict"``) into ``trunk``, non-strictly."""
    if not path.is_file():
        raise FileNotFoundError(f"model.weights={str(path)!r}: no such file")
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    expected = trunk.state_dict()
    prefix = _key_prefix(loaded, expected)
    if prefix:
        log.info("Stripping the key prefix %r from %s", prefix, path)
    state = {
        key[len(prefix):]: value
        for key, value in loaded.items()
        if key.startswith(prefix) and not key[len(prefix):].startswith("fc.")
    }
    matched = state.keys() & expected.keys()
    if not matched:
        raise ValueError(
            f"No key of {path} matches the backbone (file keys e.g. {list(loaded)[:3]}, "
            f"expected e.g. {list(expected)[:3]})"
        )
    try:
        result = trunk.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatch, e.g. resnet50 weights into a resnet18
        raise ValueError(f"{path} does not fit the backbone: {err}") from err
    missing = [key for key in result.missing_keys if not key.startswith("fc.")]
    log.info("Loaded %d tensors from %s", len(matched), path)
    if missing:
        log.warning("Keys missing from %s (left at random init): %s", path, missing)
    if result.unexpected_keys:
        log.warning("Unexpected keys in %s (ignored): %s", path, result.unexpected_keys)


def _key_prefix(loaded: Mapping[str, object], expected: Mapping[str, object]) -> str:
    """The prefix (e.g. ``"module."``) to strip so that ``loaded``'s keys match ``expected``."""
    if loaded.keys() & expected.keys():
        return ""
    prefixes: Counter[str] = Counter()
    for key in loaded:
        suffixes = [target for target in expected if key.endswith("." + target)]
        if suffixes:
            prefixes[key[: -len(max(suffixes, key=len))]] += 1
    return prefixes.most_common(1)[0][0] if prefixes else ""


def calibrate_batchnorm(trunk: nn.Module, images: Iterable[torch.Tensor]) -> None:
    """Estimate every BatchNorm layer's running statistics from ``images`` (batches of inputs).

    A random-init trunk's BatchNorm layers hold mean 0 / variance 1, so a frozen (eval-mode) deep
    trunk does not normalise and its features explode (ResNet152: ~1e7). Recalibrating them
    (torch's ``update_bn``) makes the frozen trunk a normalised random-feature extractor; weights
    are untouched. Pretrained trunks need no calibration: their statistics are meaningful.
    """
    device = next(trunk.parameters()).device
    update_bn(images, trunk, device=device)
    log.info("Calibrated the BatchNorm statistics of the random-init backbone")
