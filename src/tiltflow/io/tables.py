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
    """Write a pandas DataFrame as TSV: no index, empty cells for missing values."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, sep="\t", index=False, float_format=float_format, na_rep="")


def read_table(path, text_columns=()):
    """Read a TSV written by :func:`write_table`; ``text_columns`` stay strings (marker ids)."""
    import pandas as pd

    return pd.read_csv(path, sep="\t", dtype={c: str for c in text_columns})
