"""A store of a frozen prefix's activations, one row per image: sharded, memory-mapped, checked.

A store lives in ``<cache_dir>/activations/<boundary>-<digest>/``: ``index.json`` (the
:class:`ActivationKey`, the row shape and dtype) and shards ``shard-NNNNN.npy`` of
:data:`SHARD_ROWS` rows, each with a ``shard-NNNNN.json`` stating its row count and SHA-256.
Every file is written under a temporary name and renamed, so a store is never half-written. A
shard is verified (size and checksum) at its first use in a process; a missing or mismatched
one is rebuilt, with a log line. The shards are split between the ranks of a job (shard ``k`` to
rank ``k % world``), each rank builds its own, and rank zero writes the index behind a barrier.

bfloat16 rows are stored as their 16-bit patterns (``uint16``; numpy has no bfloat16) and read
back as ``torch.bfloat16``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

STORE_VERSION = 1
"""Layout of a store; a change makes new keys (old stores are left alone)."""
SHARD_ROWS = 1024
"""Rows per shard."""
_NUMPY_DTYPE = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.uint16}


@dataclass(frozen=True)
class ActivationKey:
    """What a store's rows are a function of: the prefix's weights, the boundary, how images
    are preprocessed, which images (in order), and the dtype the prefix computes in."""

    weights: str  # SHA-256 of the prefix's parameters and buffers (weights_digest)
    boundary: str
    preprocessing: dict[str, Any]
    images: str  # SHA-256 of the image ids, in row order (ids_digest)
    dtype: str
    folded_batchnorm: bool
    version: int = STORE_VERSION

    def digest(self) -> str:
        """SHA-256 of the key's JSON: the store's identity."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def directory(self, root: Path) -> Path:
        """Where the store of this key lives under ``root``."""
        return Path(root) / f"{self.boundary}-{self.digest()[:16]}"


def weights_digest(modules: Iterable[torch.nn.Module]) -> str:
    """SHA-256 of the modules' parameters and buffers (names, shapes, dtypes and bytes)."""
    digest = hashlib.sha256()
    for index, module in enumerate(modules):
        for name, tensor in (*module.named_parameters(), *module.named_buffers()):
            value = tensor.detach().to("cpu").contiguous()
            digest.update(f"{index}.{name}:{tuple(value.shape)}:{value.dtype}\n".encode())
            digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def ids_digest(image_ids: Sequence[str]) -> str:
    """SHA-256 of the image ids in order."""
    return hashlib.sha256("\n".join(image_ids).encode()).hexdigest()


def row_bytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    """Bytes of one row of ``shape`` in ``dtype``."""
    return int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()


class ActivationStore:
    """A complete store: ``store[rows]`` is a tensor of those rows (a copy), from memory-mapped
    shards. Pickles as its paths, so DataLoader workers map the shards themselves."""

    def __init__(self, directory: Path, length: int, shape: tuple[int, ...],
                 dtype: torch.dtype) -> None:
        self.directory = Path(directory)
        self.length = length
        self.shape = shape
        self.dtype = dtype
        self._shards: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, row: int) -> torch.Tensor:
        shard, offset = divmod(int(row), SHARD_ROWS)
        if shard not in self._shards:
            self._shards[shard] = np.load(_shard_path(self.directory, shard), mmap_mode="r")
        value = torch.from_numpy(np.array(self._shards[shard][offset]))
        return value.view(self.dtype) if self.dtype == torch.bfloat16 else value

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_shards": {}}


def open_or_build(root: Path, key: ActivationKey, length: int,
                  compute: Callable[[range], torch.Tensor], rank: int = 0, world: int = 1,
                  barrier: Callable[[], None] = lambda: None) -> ActivationStore:
    """The store of ``key`` under ``root`` with ``length`` rows: opened when complete and
    intact, else its missing or damaged shards built by ``compute(rows)`` (a tensor of those
    rows, on any device) on the ranks they belong to, then opened by every rank."""
    directory = key.directory(root)
    directory.mkdir(parents=True, exist_ok=True)
    shards = range(rank, -(-length // SHARD_ROWS), world)
    for shard in shards:
        rows = range(shard * SHARD_ROWS, min(length, (shard + 1) * SHARD_ROWS))
        why = _shard_problem(directory, shard, len(rows))
        if why is not None:
            if why != "missing":
                log.warning("Activation cache %s: shard %d %s; rebuilding it", directory, shard,
                            why)
            _write_shard(directory, shard, compute(rows))
    barrier()
    index_path = directory / "index.json"
    if rank == 0:
        first = np.load(_shard_path(directory, 0), mmap_mode="r")
        _write_atomic(index_path, json.dumps(
            {"key": asdict(key), "rows": length, "shape": list(first.shape[1:])}, indent=1))
    barrier()
    shape = tuple(json.loads(index_path.read_text())["shape"])
    return ActivationStore(directory, length, shape, getattr(torch, key.dtype))


def is_complete(root: Path, key: ActivationKey, length: int) -> bool:
    """Whether the store of ``key`` is built (its index written); says nothing of its checks."""
    index = key.directory(root) / "index.json"
    return index.is_file() and json.loads(index.read_text())["rows"] == length


def _shard_problem(directory: Path, shard: int, rows: int) -> str | None:
    """Why a shard cannot be used (``missing``, a count or checksum mismatch), or ``None``."""
    path, record_path = _shard_path(directory, shard), _shard_path(directory, shard, ".json")
    if not path.is_file() or not record_path.is_file():
        return "missing"
    record = json.loads(record_path.read_text())
    if record["rows"] != rows:
        return f"holds {record['rows']} rows instead of {rows}"
    if _sha256(path) != record["sha256"]:
        return "does not match its checksum"
    return None


def _write_shard(directory: Path, shard: int, rows: torch.Tensor) -> None:
    """Write one shard and its record (rows, SHA-256), each atomically."""
    rows = rows.detach().to("cpu").contiguous()
    array = rows.view(torch.uint16).numpy() if rows.dtype == torch.bfloat16 else rows.numpy()
    if array.dtype != _NUMPY_DTYPE[rows.dtype]:
        raise TypeError(f"cannot store activations of dtype {rows.dtype}")
    path = _shard_path(directory, shard)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        np.save(handle, array)
    os.replace(temporary, path)
    _write_atomic(_shard_path(directory, shard, ".json"),
                  json.dumps({"rows": len(array), "sha256": _sha256(path)}))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _shard_path(directory: Path, shard: int, suffix: str = ".npy") -> Path:
    return Path(directory) / f"shard-{shard:05d}{suffix}"


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


@dataclass
class ActivationSource:
    """What a :class:`~cxr_lightning.data.datamodule.CXRDataModule` serves instead of images of
    the ``splits`` (their rows one after the other, in manifest order): the current store, or
    ``None`` for images. Set by :class:`~cxr_lightning.callbacks.prefix_cache.PrefixCache`; a
    loader reads it when its iterator starts (every epoch: its workers are not persistent)."""

    splits: tuple[str, ...]
    lengths: tuple[int, ...]
    store: ActivationStore | None = None

    def offset(self, split: str) -> int:
        """The store row of the split's first image."""
        return sum(self.lengths[: self.splits.index(split)])
