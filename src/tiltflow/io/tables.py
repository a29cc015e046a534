"""Tab-separated tables and JSON documents (the workflow's text outputs)."""

from __future__ import annotations

import json
import math
from pathlib import Path


def jsonable(obj):
    """``obj`` with numpy scalars made Python numbers and non-finite floats made ``None`` (JSON ``null``)."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "dtype") and getattr(obj, "ndim", None) == 0:  # numpy scalar
        obj = obj.item()
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    return obj


def write_json(path, doc, indent=1):
    """Write ``doc`` (made :func:`jsonable`) as JSON."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(jsonable(doc), f, indent=indent)


def read_json(path):
    """Read a JSON document."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_table(path, table, float_format="%.6g"):
    """Write a table as TSV: a header line, then one line per row.

    Parameters
    ----------
    path : str or Path
    table : mapping of str -> sequence
        Columns by name (a :class:`tiltflow.model.Table`, a dict of lists),
        all of one length.  Floats are written with ``float_format``;
        integers as integers; ``None`` and NaN as an empty cell; tabs and
        line breaks inside text (an error message) become spaces.
    float_format : str
        ``%``-format of float cells.
    """
    names = list(table)
    columns = [_as_list(table[name]) for name in names]
    lengths = {len(c) for c in columns}
    if len(lengths) > 1:
        raise ValueError(f"{path}: columns of different lengths: "
                         + ", ".join(f"{n}={len(c)}" for n, c in zip(names, columns)))
    lines = ["\t".join(names)]
    lines += ["\t".join(_cell(v, float_format) for v in row) for row in zip(*columns)]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("\n".join(lines) + "\n")


def _as_list(values):
    """Python scalars of a column (numpy arrays through ``tolist``)."""
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _cell(value, float_format):
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else float_format % value
    if isinstance(value, str):
        return " ".join(value.split()) if ("\t" in value or "\n" in value or "\r" in value) else value
    return str(value)


def read_table(path, text_columns=()):
    """Read a TSV written by :func:`write_table` into a :class:`tiltflow.model.Table`.

    Columns of numbers become float arrays (empty cells NaN); other columns,
    and the ``text_columns`` (marker ids such as ``"7"``), arrays of str.
    """
    import numpy as np

    from ..model import Table

    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not lines:
        raise ValueError(f"{path}: empty file, expected a header line of column names")
    names = lines[0].split("\t")
    rows = [line.split("\t") for line in lines[1:] if line]
    for i, row in enumerate(rows, start=2):
        if len(row) != len(names):
            raise ValueError(f"{path}: line {i} has {len(row)} cells, the header has {len(names)}")
    table = Table()
    for k, name in enumerate(names):
        cells = [row[k] for row in rows]
        if name not in text_columns:
            try:
                table[name] = np.array([float(c) if c else np.nan for c in cells], dtype=float)
                continue
            except ValueError:
                pass
        table[name] = np.array(cells, dtype=str)
    return table
