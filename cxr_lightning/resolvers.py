"""OmegaConf resolvers the configuration uses, registered on import (by the train entry point).

* ``${unique:}``: a random token per launch, shared with the processes it starts (DDP ranks), in
  run and sweep directory names, so two launches never collide.
* ``${checkpoint_policy:KEEP,FIELD}``: ``save_last``, ``save_top_k`` or ``filename`` of the
  ``ModelCheckpoint`` for ``checkpoints.keep`` = ``best`` | ``best+last`` | ``all``.
* ``${auto_precision:}``: the trainer precision of ``trainer=default``: ``bf16-mixed`` on a CUDA
  device that supports bfloat16 (Ampere or newer), else ``32-true``.
"""

from __future__ import annotations

import os
import secrets

from omegaconf import OmegaConf

RUN_TOKEN_VARIABLE = "CXR_LIGHTNING_RUN_TOKEN"


def run_token() -> str:
    """The launch's random token (created on first use, inherited by child processes)."""
    return os.environ.setdefault(RUN_TOKEN_VARIABLE, secrets.token_hex(3))


def auto_precision() -> str:
    """``bf16-mixed`` where CUDA with bfloat16 is available, else full precision."""
    import torch  # here: composing a config (--help, --cfg) needs no torch until this resolves

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


CHECKPOINT_POLICIES: dict[str, dict[str, bool | int | str]] = {
    "best": {"save_last": False, "save_top_k": 1, "filename": "best"},
    "best+last": {"save_last": True, "save_top_k": 1, "filename": "best"},  # last: for resume
    "all": {"save_last": True, "save_top_k": -1, "filename": "{epoch:03d}"},
}


def checkpoint_policy(keep: str, field: str) -> bool | int | str:
    """One ``ModelCheckpoint`` argument of the checkpoint policy ``keep``."""
    if keep not in CHECKPOINT_POLICIES:
        raise ValueError(f"checkpoints.keep={keep!r}: choose one of {list(CHECKPOINT_POLICIES)}")
    return CHECKPOINT_POLICIES[keep][field]


if not OmegaConf.has_resolver("checkpoint_policy"):
    OmegaConf.register_new_resolver("checkpoint_policy", checkpoint_policy)
for _name, _resolver in (("unique", run_token), ("auto_precision", auto_precision)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver, use_cache=True)
