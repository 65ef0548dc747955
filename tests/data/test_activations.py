"""The activation store: rows as computed, in shards verified at first use and rebuilt when
damaged, bfloat16 kept bit for bit, and one store per key."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import torch

from cxr_lightning.data import activations
from cxr_lightning.data.activations import ActivationKey, is_complete, open_or_build


def _key(**changes: object) -> ActivationKey:
    fields = {"weights": "w", "boundary": "layer4.0", "preprocessing": {"image_size": 32},
              "images": "i", "dtype": "float32", "folded_batchnorm": True, **changes}
    return ActivationKey(**fields)


class Rows:
    """``compute``: row r is the constant r (shape (2, 3)) in ``dtype``; records the calls."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype
        self.calls: list[range] = []

    def __call__(self, rows: range) -> torch.Tensor:
        self.calls.append(rows)
        return torch.tensor(list(rows), dtype=torch.float64).view(-1, 1, 1).expand(
            -1, 2, 3).to(self.dtype)


def test_rows_are_read_back_and_a_complete_store_is_not_built_again(tmp_path, monkeypatch):
    monkeypatch.setattr(activations, "SHARD_ROWS", 4)
    first, second = Rows(), Rows()
    store = open_or_build(tmp_path, _key(), 10, first)
    assert [(r.start, r.stop) for r in first.calls] == [(0, 4), (4, 8), (8, 10)]
    assert is_complete(tmp_path, _key(), 10) and not is_complete(tmp_path, _key(dtype="x"), 10)
    again = pickle.loads(pickle.dumps(open_or_build(tmp_path, _key(), 10, second)))
    assert second.calls == []
    for row in (0, 5, 9):
        assert torch.equal(store[row], torch.full((2, 3), float(row)))
        assert torch.equal(again[row], store[row])


def test_a_damaged_shard_is_rebuilt_with_a_log_line(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(activations, "SHARD_ROWS", 4)
    open_or_build(tmp_path, _key(), 10, Rows())
    shard = _key().directory(tmp_path) / "shard-00001.npy"
    array = np.load(shard)
    array[2] = -1.0
    np.save(shard, array)
    rebuild = Rows()
    with caplog.at_level(logging.WARNING):
        store = open_or_build(tmp_path, _key(), 10, rebuild)
    assert [(r.start, r.stop) for r in rebuild.calls] == [(4, 8)]
    assert "shard 1 does not match its checksum; rebuilding it" in caplog.text
    assert torch.equal(store[6], torch.full((2, 3), 6.0))


def test_bfloat16_rows_keep_their_bits(tmp_path):
    rows = Rows(torch.bfloat16)
    store = open_or_build(tmp_path, _key(dtype="bfloat16"), 3, rows)
    assert store[2].dtype == torch.bfloat16
    assert torch.equal(store[2], torch.full((2, 3), 2.0, dtype=torch.bfloat16))


def test_each_part_of_the_key_names_another_store(tmp_path):
    changes = [{}, {"weights": "v"}, {"boundary": "pooled"}, {"preprocessing": {"image_size": 64}},
               {"images": "j"}, {"dtype": "bfloat16"}, {"folded_batchnorm": False}]
    assert len({_key(**change).directory(tmp_path) for change in changes}) == len(changes)
