"""``key=value`` command lines (Hydra's override style) parsed into a typed dataclass."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

Arguments = TypeVar("Arguments")


def parse_arguments(schema: type[Arguments], argv: Sequence[str], usage: str) -> Arguments:
    """``argv`` (``key=value`` items; lists as ``key=[a,b]``) as a ``schema`` dataclass
    instance, type-checked by OmegaConf. ``-h``/``--help`` prints ``usage`` and exits; a bad
    or missing argument exits with ``usage`` and the reason."""
    if any(arg in ("-h", "--help") for arg in argv):
        sys.stdout.write(usage)
        raise SystemExit(0)
    loose = [arg for arg in argv if "=" not in arg]
    if loose:
        raise SystemExit(f"{usage}\nerror: every argument is key=value, got {loose} (quote "
                         "glob patterns so that the shell does not expand them: "
                         "inputs='scans/**/*.dcm')")
    try:
        config = OmegaConf.merge(OmegaConf.structured(schema),
                                 OmegaConf.from_dotlist([_literal_path(arg) for arg in argv]))
        missing = sorted(OmegaConf.missing_keys(config))
        if missing:
            raise SystemExit(f"{usage}\nerror: missing required argument(s): "
                             f"{', '.join(f'{key}=...' for key in missing)}")
        return OmegaConf.to_object(config)
    except OmegaConfBaseException as error:
        raise SystemExit(f"{usage}\nerror: {error}") from error


def _literal_path(arg: str) -> str:
    """``key=value`` with ``value`` YAML-quoted when it names an existing path, so that ``#``
    (a YAML comment), ``[...]`` (a YAML list) or ``: `` in a file name are kept as given."""
    key, value = arg.split("=", 1)
    if not os.path.lexists(value):
        return arg
    return f"{key}='{value.replace(chr(39), chr(39) * 2)}'"
