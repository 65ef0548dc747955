"""Fold frozen BatchNorm layers into the convolutions before them, for the frozen backbone prefix.

A frozen block's BatchNorm runs in eval mode with fixed statistics and affine parameters, so
``bn(conv(x))`` is one convolution with scaled weights and a bias. Running it as one saves a full
pass over every activation of the frozen prefix per step, and running it channels-last takes
the convolution libraries' fast path: together about a quarter of a frozen ResNet-50's forward
on a CPU (``make bench-unfreeze``). Parameters and buffers are never touched: the module's
forward is swapped for the folded one, and swapped back when the block unfreezes or training
ends, so checkpoints, weights and statistics stay exactly as they were.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Iterable

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_weights

log = logging.getLogger(__name__)


def conv_bn_pairs(module: nn.Module) -> list[tuple[nn.Conv2d, _BatchNorm]]:
    """Every (Conv2d, BatchNorm) where the BatchNorm's only input is the convolution's output and
    nothing else reads that output, found by tracing ``module`` with ``torch.fx``; ``[]`` when
    the module cannot be traced (folding is then skipped)."""
    try:
        graph = fx.symbolic_trace(module).graph
    except Exception as error:  # fx cannot trace every model (e.g. data-dependent control flow)
        log.info("BatchNorm folding skipped: %s is not traceable by torch.fx (%s)",
                 type(module).__name__, error)
        return []
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(module.get_submodule(node.target),
                                                      _BatchNorm):
            continue
        source = node.args[0]
        if (isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1
                and isinstance(module.get_submodule(source.target), nn.Conv2d)):
            pairs.append((module.get_submodule(source.target), module.get_submodule(node.target)))
    return pairs


def _folded_forward(conv: nn.Conv2d, bn: _BatchNorm) -> types.MethodType:
    """``conv``'s forward with ``bn`` (eval mode) folded into its weight and bias, computed in
    the channels-last layout (oneDNN's and cuDNN's fast path; the layout of its output, which
    the layers after it keep)."""
    with torch.no_grad():
        weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean,
                                            bn.running_var, bn.eps, bn.weight, bn.bias)
    weight = weight.detach().contiguous(memory_format=torch.channels_last)
    bias = bias.detach()

    def forward(self: nn.Conv2d, inputs: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(inputs.contiguous(memory_format=torch.channels_last),
                                  weight, bias)

    return types.MethodType(forward, conv)


def _identity(self: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    return inputs


class FrozenBatchNormFolding:
    """Folds the frozen (Conv2d, BatchNorm) pairs of a module; :meth:`refold` after every change
    of the frozen set, :meth:`unfold` to hand the module back unchanged."""

    def __init__(self, module: nn.Module) -> None:
        self.pairs = conv_bn_pairs(module)
        self.folded: list[tuple[nn.Conv2d, _BatchNorm]] = []
        self._frozen: set[int] = set()

    def refold(self, frozen_bns: Iterable[_BatchNorm]) -> int:
        """Fold every pair whose BatchNorm is in ``frozen_bns`` (kept in eval mode) and whose
        convolution is frozen; unfold the others. Returns how many pairs are folded. The same
        frozen set as last time (a new epoch of the same stage) keeps the folds it has."""
        frozen = {id(bn) for bn in frozen_bns}
        if self.folded and frozen == self._frozen:
            return len(self.folded)
        self.unfold()
        self._frozen = frozen
        for conv, bn in self.pairs:
            # eval mode normalises with the running statistics (Lightning's freeze also sets
            # track_running_stats=False, which only matters in training mode)
            if (id(bn) in frozen and bn.running_mean is not None
                    and not any(p.requires_grad for p in conv.parameters())):
                conv.forward = _folded_forward(conv, bn)
                bn.forward = types.MethodType(_identity, bn)
                self.folded.append((conv, bn))
        return len(self.folded)

    def unfold(self) -> None:
        """Give every folded pair its own forward back."""
        for conv, bn in self.folded:
            del conv.forward, bn.forward  # the instance attributes: the class's forward again
        self.folded = []


class FrozenBatchNorms:
    """The frozen backbone's BatchNorm layers: held in eval mode while training (running
    statistics untouched, normalisation with them) and, with ``fold``, folded into the
    convolution before them. The layers are found by walking the live module tree at every
    :meth:`update`, never through references kept from before, so a module swapped in after
    the callback's ``setup`` (the strategy's SyncBatchNorm conversion) is the one held."""

    def __init__(self, fold: bool = True) -> None:
        self.fold = fold
        self.layers: list[_BatchNorm] = []
        self._folding: FrozenBatchNormFolding | None = None

    def update(self, backbone: nn.Module, unfrozen: Iterable[nn.Module]) -> None:
        """Hold the BatchNorm layers of ``backbone`` outside the ``unfrozen`` blocks (and fold
        them); the first call finds the foldable pairs."""
        if self.fold and self._folding is None:
            self._folding = FrozenBatchNormFolding(backbone)
        trainable = {id(module) for block in unfrozen for module in block.modules()}
        self.layers = [module for module in backbone.modules()
                       if isinstance(module, _BatchNorm) and id(module) not in trainable]
        if self._folding is not None:
            self._folding.refold(self.layers)

    def hold_eval(self) -> None:
        """Put the held layers in eval mode, whatever ``.train()`` calls came before."""
        for bn in self.layers:
            bn.train(False)

    def unfold(self) -> None:
        """Run every folded pair unfolded again."""
        if self._folding is not None:
            self._folding.unfold()

    def release(self) -> None:
        """Hand the layers back as they came: unfolded, in train mode."""
        self.unfold()
        for bn in self.layers:
            bn.train(True)
