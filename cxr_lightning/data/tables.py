"""Every label/metadata CSV (plain or ``.csv.gz``) is read through :func:`read_table`.

It checks the file against a schema and fails with a :class:`TableError` naming the file, the
column, the line and the fix: unreadable (empty, truncated or not gzip, not text), no data rows,
missing columns, a blank or non-integer id, words where label codes belong, values outside the
allowed set, duplicated keys. Ids are read as ``int64`` or ``str``, never as floats (a blank
cell would otherwise turn a whole integer column into floats: ``p12563586.0``).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from gzip import BadGzipFile
from pathlib import Path
from typing import Literal

import pandas as pd

__all__ = ["ID", "LABEL_CODE", "Column", "TableError", "read_table"]


class TableError(ValueError):
    """A CSV that does not meet its schema; the message names the file and the fix."""


@dataclass(frozen=True)
class Column:
    """A column's rule. ``kind``: ``int`` (int64, never blank), ``str`` (text), or ``code``
    (a number such as a label code 1.0/0.0/-1.0, float64; blank is NaN). ``allowed``: the
    values permitted (blank aside); ``blank``: whether a blank cell is permitted."""

    kind: Literal["int", "str", "code"]
    allowed: frozenset | None = None
    blank: bool = False


#: An integer id column (subject, study, patient, follow-up): int64, never blank.
ID = Column("int")
#: A CheXpert-style label code: 1.0 positive, 0.0 negative, -1.0 uncertain, blank unmentioned.
LABEL_CODE = Column("code", frozenset({1.0, 0.0, -1.0}), blank=True)


def read_table(path: str | Path, columns: Mapping[str, Column],
               unique: Sequence[str] = ()) -> pd.DataFrame:
    """The ``columns`` of the CSV at ``path``, typed and checked; ``unique``: columns whose
    combination must not repeat. Every problem raises :class:`TableError` naming ``path``."""
    path = Path(path)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except FileNotFoundError:
        raise
    except pd.errors.EmptyDataError as exc:
        raise TableError(f"{path}: empty file (no header line); expected columns "
                         f"{list(columns)}") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, BadGzipFile, EOFError, zlib.error,
            OSError) as exc:
        raise TableError(f"{path}: cannot be read as a CSV{_gzip_hint(path)}: {exc}") from exc
    missing = [name for name in columns if name not in raw.columns]
    if missing:
        raise TableError(f"{path}: lacks column(s) {missing} (it has {list(raw.columns)[:12]}); "
                         "is it the right file, with its header line?")
    if raw.empty:
        raise TableError(f"{path}: header only, no data rows")
    table = pd.DataFrame({name: _typed(path, name, raw[name], rule)
                          for name, rule in columns.items()})
    if unique:
        repeated = table.duplicated(list(unique), keep=False)
        if repeated.any():
            line = int(repeated.idxmax()) + 2
            raise TableError(f"{path}: {list(unique)} must be unique; line {line} repeats "
                             f"{table.loc[repeated.idxmax(), list(unique)].tolist()} "
                             f"({int(repeated.sum())} rows involved)")
    return table


def _gzip_hint(path: Path) -> str:
    return " (a .gz must be a complete gzip file)" if path.suffix == ".gz" else ""


def _typed(path: Path, name: str, values: pd.Series, rule: Column) -> pd.Series:
    """One column converted to its kind, each violation naming the first offending line."""
    blank = values.isna()
    if blank.any() and not (rule.blank and rule.kind != "int"):
        raise TableError(f"{path}: column {name!r} is blank on line {_line(blank)} "
                         f"({int(blank.sum())} blank cells); it must be filled")
    if rule.kind == "str":
        typed = values.str.strip()
    else:
        numbers = pd.to_numeric(values.str.strip(), errors="coerce")
        wrong = numbers.isna() & ~blank
        if rule.kind == "int":
            wrong |= numbers.notna() & (numbers % 1 != 0)
        if wrong.any():
            raise TableError(f"{path}: column {name!r} must hold "
                             f"{'integers' if rule.kind == 'int' else 'numbers'}; line "
                             f"{_line(wrong)} holds {values[wrong].iloc[0]!r}")
        typed = numbers.astype("int64") if rule.kind == "int" else numbers.astype("float64")
    if rule.allowed is not None:
        outside = ~typed.isin(rule.allowed) & ~blank
        if outside.any():
            raise TableError(f"{path}: column {name!r} holds {values[outside].iloc[0]!r} on line "
                             f"{_line(outside)}; allowed: {sorted(rule.allowed, key=str)}"
                             f"{' or blank' if rule.blank else ''}")
    return typed


def _line(mask: pd.Series) -> int:
    """The file line of the first True row (line 1 is the header)."""
    return int(mask.to_numpy().argmax()) + 2
