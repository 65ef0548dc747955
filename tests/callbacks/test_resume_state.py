"""ResumeState's generator restore on a machine with fewer visible GPUs than the checkpoint's."""

import logging

import torch

from cxr_lightning.callbacks.resume_state import rng_states, set_rng_states


def test_fewer_visible_gpus_restore_the_ones_there_with_a_warning(monkeypatch, caplog):
    restored = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)

    def set_rng_state(state: torch.Tensor, device: int) -> None:
        if device >= torch.cuda.device_count():
            raise IndexError(f"CUDA device {device} is not visible")
        restored[device] = state

    # torch.cuda.set_rng_state_all calls the one in torch.cuda.random
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_rng_state)
    states = {**rng_states(), "cuda": [torch.full((8,), 1, dtype=torch.uint8),
                                       torch.full((8,), 2, dtype=torch.uint8)]}
    with caplog.at_level(logging.WARNING):
        set_rng_states(states)  # main's set_rng_state_all raised IndexError here
    assert list(restored) == [0] and torch.equal(restored[0], states["cuda"][0])
    assert "2 CUDA devices, 1 are visible" in caplog.text
