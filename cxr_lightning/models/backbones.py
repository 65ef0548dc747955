"""CNN trunks without their classifier, and their unfreezable blocks.

Registry: torchvision ResNet-18/34/50/101/152 and DenseNet-121; any timm model as
``timm/<name>`` when timm is installed (optional dependency).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import update_bn
from torchvision import models
from torchvision.models import WeightsEnum

log = logging.getLogger(__name__)

TIMM_PREFIX = "timm/"


@dataclass(frozen=True)
class _Arch:
    """A torchvision architecture: constructor, weights enum, head and stem-conv attributes."""

    constructor: Callable[..., nn.Module]
    weights: type[WeightsEnum]
    head: str  # replaced by nn.Identity; its keys are ignored in local state dicts
    stem_conv: str  # the first convolution, collapsed for grey input


_ARCHS: dict[str, _Arch] = {
    "resnet18": _Arch(models.resnet18, models.ResNet18_Weights, "fc", "conv1"),
    "resnet34": _Arch(models.resnet34, models.ResNet34_Weights, "fc", "conv1"),
    "resnet50": _Arch(models.resnet50, models.ResNet50_Weights, "fc", "conv1"),
    "resnet101": _Arch(models.resnet101, models.ResNet101_Weights, "fc", "conv1"),
    "resnet152": _Arch(models.resnet152, models.ResNet152_Weights, "fc", "conv1"),
    "densenet121": _Arch(
        models.densenet121, models.DenseNet121_Weights, "classifier", "features.conv0"
    ),
}
_STAGES = ("layer4", "layer3", "layer2", "layer1")
# torchvision's DenseNet checkpoints keep the legacy keys "denselayerN.norm.1.weight" etc.
_DENSENET_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def build_backbone(
    name: str, weights: str | None, in_channels: int = 3
) -> tuple[nn.Module, int]:
    """Build a trunk mapping (N, in_channels, H, W) to pooled features (N, num_features).

    Args:
        name: ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``, ``resnet152``,
            ``densenet121``, or ``timm/<model name>`` (needs ``pip install timm``).
        weights: ``"imagenet"`` (torchvision's DEFAULT weights, cached under
            ``torch.hub.get_dir()/checkpoints``; timm: its pretrained weights), ``"none"``/``None``
            (random init), or the path of a local state dict (head keys are ignored).
        in_channels: 3, or 1 for grey input. With 1, the stem convolution's RGB weights (after
            loading ``weights``) are summed over the input-channel dimension, so the 1-channel
            trunk on a grey image ``x`` (N, 1, H, W) gives exactly what the 3-channel trunk gives
            on ``x`` repeated to 3 *identical* channels. It therefore expects grey images
            normalised with a single mean/std: ImageNet's per-channel normalisation makes the
            three channels of a replicated grey image differ, and then the two are not
            equivalent. A local state dict whose stem already has 1 input channel loads as is.

    Returns:
        ``(trunk, num_features)``; the trunk's head (ResNet ``fc``, DenseNet ``classifier``) is
        an ``nn.Identity``.
    """
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    if name.startswith(TIMM_PREFIX):
        return _build_timm(name[len(TIMM_PREFIX):], weights, in_channels)
    if name not in _ARCHS:
        raise ValueError(
            f"Unknown backbone {name!r}; known: {', '.join(_ARCHS)}, {TIMM_PREFIX}<name> (timm)"
        )
    arch = _ARCHS[name]
    trunk = arch.constructor(weights=None)
    if in_channels == 1:
        _collapse_stem_conv(trunk, arch.stem_conv)
    if _is_imagenet(weights):
        state = _imagenet_state_dict(name, imagenet_url(name))
        trunk.load_state_dict(_fit_stem(_rename_legacy_keys(state), trunk, arch.stem_conv))
    elif not is_random_init(weights):
        _load_local_weights(trunk, Path(weights).expanduser(), arch.head, arch.stem_conv)
    num_features = getattr(trunk, arch.head).in_features
    setattr(trunk, arch.head, nn.Identity())
    return trunk, num_features


def is_random_init(weights: str | None) -> bool:
    """Whether a ``model.weights`` value asks for random initialisation (``none`` or null)."""
    return weights is None or weights.strip().lower() == "none"


def _is_imagenet(weights: str | None) -> bool:
    """Whether a ``model.weights`` value asks for the ImageNet (pretrained) weights."""
    return isinstance(weights, str) and weights.strip().lower() == "imagenet"


def unfreezable_blocks(trunk: nn.Module) -> list[tuple[str, nn.Module]]:
    """The trunk's blocks top-down (the block to unfreeze first comes first).

    Every trunk parameter belongs to exactly one block; a block of several modules is a
    container (``nn.ModuleList``; timm: a module holding them) of the trunk's own modules.

    * ResNet: ``layer4.<last>`` … ``layer1.0``, then ``stem`` (``conv1``, ``bn1``).
    * DenseNet-121 (62 blocks): ``denseblock4.denselayer16`` (with the final norm ``norm5``),
      ``denseblock4.denselayer15`` … ``denseblock4.denselayer1``, ``transition3``,
      ``denseblock3.denselayer24`` … ``denseblock3.denselayer1``, ``transition2``,
      ``denseblock2.denselayer12`` … ``denseblock2.denselayer1``, ``transition1``,
      ``denseblock1.denselayer6`` … ``denseblock1.denselayer1``, then ``stem``
      (``conv0``, ``norm0``). Names are the modules' paths under ``features``.
    * timm: the groups of ``group_matcher(coarse=False)``, top group first, each named by its
      parameters' longest common module path (e.g. ``layer4.2``), else by its ``+``-joined
      top-level modules (e.g. ``conv1+bn1``).
    """
    if isinstance(trunk, models.ResNet):
        return _resnet_blocks(trunk)
    if isinstance(trunk, models.DenseNet):
        return _densenet_blocks(trunk)
    if type(trunk).__module__.startswith("timm.") and hasattr(trunk, "group_matcher"):
        return _timm_blocks(trunk)
    raise TypeError(
        f"unfreezable_blocks expects a torchvision ResNet or DenseNet, or a timm model; "
        f"got {type(trunk)}"
    )


def _resnet_blocks(trunk: models.ResNet) -> list[tuple[str, nn.Module]]:
    blocks: list[tuple[str, nn.Module]] = []
    for stage in _STAGES:
        layer: nn.Sequential = getattr(trunk, stage)
        blocks.extend((f"{stage}.{i}", layer[i]) for i in reversed(range(len(layer))))
    blocks.append(("stem", nn.ModuleList([trunk.conv1, trunk.bn1])))
    return blocks


def _densenet_blocks(trunk: models.DenseNet) -> list[tuple[str, nn.Module]]:
    features = trunk.features
    stages = [m for name, m in features.named_children() if name.startswith("denseblock")]
    blocks: list[tuple[str, nn.Module]] = []
    for index in range(len(stages), 0, -1):
        if index < len(stages):
            blocks.append((f"transition{index}", features.get_submodule(f"transition{index}")))
        layers = list(stages[index - 1].named_children())
        blocks.extend((f"denseblock{index}.{name}", layer) for name, layer in reversed(layers))
    top_name, top_layer = blocks[0]
    blocks[0] = (top_name, nn.ModuleList([top_layer, features.norm5]))
    blocks.append(("stem", nn.ModuleList([features.conv0, features.norm0])))
    return blocks


def _build_timm(model_name: str, weights: str | None, in_channels: int) -> tuple[nn.Module, int]:
    """A timm model without classifier (``num_classes=0``: forward returns pooled features)."""
    try:
        import timm
    except ImportError as err:
        raise ImportError(
            f"Backbone {TIMM_PREFIX}{model_name} needs the optional package timm: pip install timm"
        ) from err
    trunk = timm.create_model(
        model_name, pretrained=_is_imagenet(weights), num_classes=0, in_chans=in_channels
    )
    if not _is_imagenet(weights) and not is_random_init(weights):
        cfg = getattr(trunk, "pretrained_cfg", {})
        _load_local_weights(
            trunk, Path(weights).expanduser(), cfg.get("classifier"), cfg.get("first_conv")
        )
    return trunk, trunk.num_features


def _timm_blocks(trunk: nn.Module) -> list[tuple[str, nn.Module]]:
    """timm's fine parameter groups (``group_matcher(coarse=False)``) as blocks, top-down."""
    from timm.models._manipulate import group_parameters

    groups: dict[int, list[str]] = group_parameters(trunk, trunk.group_matcher(coarse=False))
    blocks: list[tuple[str, nn.Module]] = []
    for group_id in sorted(groups, reverse=True):
        names = groups[group_id]
        name = _group_name(names)
        if name in dict(blocks):
            name = f"{name}@{group_id}"
        blocks.append((name, _group_block(trunk, set(names))))
    return blocks


def _group_name(param_names: list[str]) -> str:
    """The longest common module path of ``param_names``, else their ``+``-joined roots."""
    paths = [name.split(".")[:-1] for name in param_names]
    common: list[str] = []
    for parts in zip(*paths, strict=False):
        if len(set(parts)) > 1:
            break
        common.append(parts[0])
    if common:
        return ".".join(common)
    return "+".join(dict.fromkeys(name.split(".")[0] for name in param_names))


def _group_block(trunk: nn.Module, param_names: set[str]) -> nn.Module:
    """A module holding exactly the parameters ``param_names`` of ``trunk``.

    The outermost submodules whose parameters all lie in the group are kept whole (so their
    BatchNorm layers are seen); any other parameter (e.g. a root ``cls_token``) is held loose.
    """
    taken: list[str] = []
    covered: set[str] = set()
    modules: list[nn.Module] = []
    for path, module in trunk.named_modules():
        if not path or any(path.startswith(prefix + ".") for prefix in taken):
            continue
        own = {f"{path}.{name}" for name, _ in module.named_parameters()}
        if own and own <= param_names:
            taken.append(path)
            covered |= own
            modules.append(module)
    params = dict(trunk.named_parameters())
    block = nn.Module()
    block.modules_in_group = nn.ModuleList(modules)
    block.loose_params = nn.ParameterList([params[n] for n in sorted(param_names - covered)])
    return block


def _collapse_stem_conv(trunk: nn.Module, path: str) -> None:
    """Replace the RGB conv at ``path`` by a 1-channel conv whose weight is the RGB sum."""
    conv: nn.Conv2d = trunk.get_submodule(path)
    grey = nn.Conv2d(
        1, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        grey.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            grey.bias.copy_(conv.bias)
    parent, _, attribute = path.rpartition(".")
    setattr(trunk.get_submodule(parent), attribute, grey)


def _fit_stem(
    state: Mapping[str, torch.Tensor], trunk: nn.Module, stem_conv: str | None
) -> dict[str, torch.Tensor]:
    """``state`` with its RGB stem-conv weight summed to one channel if ``trunk``'s is grey."""
    state = dict(state)
    if stem_conv is None:
        return state
    key = f"{stem_conv}.weight"
    weight, target = state.get(key), dict(trunk.named_parameters()).get(key)
    if weight is None or target is None or weight.dim() != 4:
        return state
    if weight.shape[1] == 3 and target.shape[1] == 1:
        state[key] = weight.sum(dim=1, keepdim=True)
    return state


def _rename_legacy_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map torchvision's legacy DenseNet keys (``norm.1``) to module names (``norm1``)."""
    renamed = {}
    for key, value in state.items():
        match = _DENSENET_LEGACY_KEY.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    return renamed


def imagenet_url(name: str) -> str:
    """The download URL of torchvision's DEFAULT ImageNet weights of backbone ``name``."""
    return _ARCHS[name].weights.DEFAULT.url


def _imagenet_state_dict(name: str, url: str) -> dict[str, torch.Tensor]:
    """The ImageNet state dict at ``url``, from the hub cache (downloaded there if missing).

    The cached file is checked against the SHA-256 prefix in its name (torchvision's
    ``name-<hash prefix>.pth`` convention) and loaded with ``weights_only=True``, so a file
    placed in the cache by hand is never unpickled unchecked. A download failure explains how
    to fix it; a hash mismatch is a :class:`ValueError` naming the file.
    """
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    file_name = os.path.basename(url)
    cached = checkpoints / file_name
    match = torch.hub.HASH_REGEX.search(file_name)
    hash_prefix = match.group(1) if match else None
    log.info("Loading %s ImageNet weights from %s", name, cached)
    if not cached.is_file():
        try:
            checkpoints.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(cached), hash_prefix, progress=False)
        except Exception as err:  # network, DNS, proxy, hash: all mean "no usable file"
            raise RuntimeError(
                f"Could not obtain the ImageNet weights for {name} ({url}): {err!r}. "
                f"Without network access, download {url} elsewhere and place it, named "
                f"exactly {file_name!r}, in the directory {str(checkpoints)!r} "
                f"(torch.hub.get_dir()/checkpoints, set by $TORCH_HOME). Alternatively set "
                f"model.weights=none (random init) or model.weights=/path/to/state_dict.pth."
            ) from err
    if hash_prefix:
        digest = hashlib.sha256(cached.read_bytes()).hexdigest()
        if not digest.startswith(hash_prefix):
            raise ValueError(
                f"{cached}: SHA-256 {digest[:16]}... does not start with {hash_prefix!r}, the "
                f"hash prefix in its name: it is not the file published at {url}. Delete it "
                "and download that file again (or set model.weights=none)")
    return torch.load(cached, map_location="cpu", weights_only=True)


def _load_local_weights(
    trunk: nn.Module, path: Path, head: str | None, stem_conv: str | None
) -> None:
    """Load a local state dict (plain or under ``"state_dict"``) into ``trunk``, non-strictly.

    Keys under ``head`` are ignored; legacy DenseNet keys are renamed; an RGB stem conv is
    summed to one channel when ``trunk``'s ``stem_conv`` is grey.
    """
    if not path.is_file():
        raise FileNotFoundError(f"model.weights={str(path)!r}: no such file")
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    loaded = _rename_legacy_keys(loaded)
    expected = trunk.state_dict()
    prefix = _key_prefix(loaded, expected)
    if prefix:
        log.info("Stripping the key prefix %r from %s", prefix, path)
    head_prefix = f"{head}." if head else None
    state = {
        key[len(prefix):]: value
        for key, value in loaded.items()
        if key.startswith(prefix)
        and not (head_prefix and key[len(prefix):].startswith(head_prefix))
    }
    matched = state.keys() & expected.keys()
    if not matched:
        raise ValueError(
            f"No key of {path} matches the backbone (file keys e.g. {list(loaded)[:3]}, "
            f"expected e.g. {list(expected)[:3]})"
        )
    try:
        result = trunk.load_state_dict(_fit_stem(state, trunk, stem_conv), strict=False)
    except RuntimeError as err:  # shape mismatch, e.g. resnet50 weights into a resnet18
        raise ValueError(f"{path} does not fit the backbone: {err}") from err
    missing = [
        key for key in result.missing_keys if not (head_prefix and key.startswith(head_prefix))
    ]
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


POOLED = "pooled"
"""The boundary after the whole trunk: its pooled features (what the head reads)."""


def resnet_steps(trunk: nn.Module) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
    """A torchvision ResNet's forward as named steps, bottom-up: ``stem``, every block
    (``layer1.0`` ... ``layer4.<last>``), then the pooling (named :data:`POOLED`). Run in order
    they are ``trunk.forward`` (torchvision's ``_forward_impl``), the same calls in the same
    order; ``TypeError`` for any other trunk."""
    if not isinstance(trunk, models.ResNet):
        raise TypeError(f"a boundary-split forward needs a torchvision ResNet, got {type(trunk)}")

    def stem(x: torch.Tensor) -> torch.Tensor:
        return trunk.maxpool(trunk.relu(trunk.bn1(trunk.conv1(x))))

    def pool(x: torch.Tensor) -> torch.Tensor:
        return trunk.fc(torch.flatten(trunk.avgpool(x), 1))

    steps: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = [("stem", stem)]
    for stage in reversed(_STAGES):
        steps.extend((f"{stage}.{i}", block) for i, block in enumerate(getattr(trunk, stage)))
    steps.append((POOLED, pool))
    return steps


def prefix_modules(trunk: nn.Module, boundary: str) -> list[nn.Module]:
    """The modules of the trunk's part below ``boundary`` (a block name: the block's input; or
    :data:`POOLED`): what a cache of the activations at ``boundary`` depends on."""
    blocks = dict(_resnet_blocks(trunk))
    below = [name for name, _ in resnet_steps(trunk)[: _cut(trunk, boundary)]]
    return [blocks[name] if name in blocks else nn.ModuleList([trunk.avgpool, trunk.fc])
            for name in below]


def prefix_forward(trunk: nn.Module, boundary: str, images: torch.Tensor) -> torch.Tensor:
    """The activations at ``boundary``: the trunk's steps below it, run on ``images``."""
    x = images.contiguous(memory_format=torch.channels_last)
    for _, step in resnet_steps(trunk)[: _cut(trunk, boundary)]:
        x = step(x)
    return x


def suffix_forward(trunk: nn.Module, boundary: str, activations: torch.Tensor) -> torch.Tensor:
    """The pooled features from the activations at ``boundary``: the trunk's steps from it on.
    ``suffix_forward(t, b, prefix_forward(t, b, x))`` is ``t(x)``."""
    x = activations
    if x.dim() == 4:  # the layout the live forward hands a block
        x = x.contiguous(memory_format=torch.channels_last)
    for _, step in resnet_steps(trunk)[_cut(trunk, boundary):]:
        x = step(x)
    return x


def _cut(trunk: nn.Module, boundary: str) -> int:
    """How many of the trunk's steps lie below ``boundary`` (all of them for POOLED)."""
    names = [name for name, _ in resnet_steps(trunk)]
    if boundary not in names or boundary == "stem":
        raise ValueError(f"boundary {boundary!r} is not a block above the stem nor {POOLED!r}; "
                         f"valid: {names[1:]}")
    return names.index(boundary) + (boundary == POOLED)
