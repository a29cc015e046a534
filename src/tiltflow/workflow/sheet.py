"""The tilt-series sheet (TSV): reading, type conversion, row -> SeriesSpec."""

from __future__ import annotations

import math
import re
from pathlib import Path

from ..io.errors import InputError
from ..model import SeriesSpec

REQUIRED = ("series", "markers", "tilts", "tilt_axis_angle")
OPTIONAL = ("stack", "width", "height", "prexg", "tilt_offset", "exclude_views", "pixel_size")
FLOAT_COLUMNS = ("tilt_axis_angle", "tilt_offset", "pixel_size")
INT_COLUMNS = ("width", "height")
NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def read_sheet(path):
    """Read the sheet into a DataFrame indexed by ``series``.

    Empty cells of optional columns become ``""`` (paths) or ``None``
    (numbers); missing optional columns are added empty.

    Raises
    ------
    InputError
        Missing file or column, bad name, duplicate series, or a cell that
        is not a number where one is expected (naming row and column).
    """
    import pandas as pd  # here, not at module level: jobs that only convert a row skip pandas

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: tilt-series sheet not found")
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, comment="#")
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise InputError(
            f"{path}: missing column(s) {', '.join(missing)}; the sheet needs {', '.join(REQUIRED)} "
            f"(tab-separated), found {', '.join(df.columns)}"
        )
    if df.empty:
        raise InputError(f"{path}: the sheet has no rows (expected one row per tilt series)")
    unknown = [c for c in df.columns if c not in REQUIRED + OPTIONAL]
    if unknown:
        raise InputError(f"{path}: unknown column(s) {', '.join(unknown)}; allowed: {', '.join(REQUIRED + OPTIONAL)}")
    for c in OPTIONAL:
        if c not in df.columns:
            df[c] = ""
    df = df.apply(lambda col: col.str.strip())
    records = []
    for i, row in enumerate(df.to_dict("records"), start=2):  # line 1 is the header
        name = row["series"]
        if not NAME.match(name):
            raise InputError(f"{path}: line {i}: series name {name!r} must match [A-Za-z0-9_.-]+")
        if not row["tilts"]:
            raise InputError(f"{path}: line {i} ({name}): column tilts is empty; it is required")
        if not row["markers"] and not row["stack"]:
            raise InputError(f"{path}: line {i} ({name}): markers and stack are both empty; a series needs a "
                             "marker model, or a stack to be aligned from its images (markers empty)")
        for c in FLOAT_COLUMNS:
            # the tilt-axis angle may come from a SerialEM .mdoc's title line instead
            required = c == "tilt_axis_angle" and not row["tilts"].lower().endswith(".mdoc")
            row[c] = _to_number(row[c], float, path, i, name, c, required=required)
        for c in INT_COLUMNS:
            row[c] = _to_number(row[c], int, path, i, name, c)
        if row["tilt_offset"] is None:
            row["tilt_offset"] = 0.0
        row["exclude_views"] = ",".join(str(v) for v in parse_views(row["exclude_views"], f"{path}: line {i} ({name})"))
        records.append(row)
    out = pd.DataFrame.from_records(records)
    dups = out["series"][out["series"].duplicated()].tolist()
    if dups:
        raise InputError(f"{path}: series name(s) {', '.join(dups)} appear more than once; names must be unique")
    return out.set_index("series", drop=False)


def parse_views(text, where="exclude_views"):
    """0-based views from ``"0,3-7,60"`` (ranges inclusive, as IMOD writes them), sorted and unique.

    Raises
    ------
    InputError
        Naming ``where`` and what was expected.
    """
    text = (text or "").replace(" ", "")
    if not text:
        return []
    if not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", text):
        raise InputError(f"{where}: exclude_views {text!r} must be comma-separated 0-based views or ranges, "
                         "e.g. 0,1,60 or 0-2,58-60")
    views = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        lo, hi = int(first), int(last or first)
        if hi < lo:
            raise InputError(f"{where}: exclude_views range {part!r} runs backwards; expected first-last with "
                             "first <= last")
        views.update(range(lo, hi + 1))
    return sorted(views)


def _to_number(text, kind, path, line, name, column, required=False):
    if text == "" or text is None:
        if required:
            raise InputError(f"{path}: line {line} ({name}): column {column} is empty; it is required")
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{path}: line {line} ({name}): {column} = {text!r} is not a number") from None
    if not math.isfinite(value):
        raise InputError(f"{path}: line {line} ({name}): {column} = {text!r} is not a finite number")
    if kind is int:
        if value != int(value):
            raise InputError(f"{path}: line {line} ({name}): {column} = {text!r} must be a whole number of pixels")
        return int(value)
    return value


def _empty(value):
    """An empty cell: None, "" or NaN (pandas' empty number)."""
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def series_spec(row) -> SeriesSpec:
    """A :class:`SeriesSpec` from one normalised sheet row (a mapping)."""
    views = tuple(parse_views(str(row.get("exclude_views") or ""), f"sheet row {row['series']}"))
    return SeriesSpec(
        name=row["series"],
        markers=row.get("markers") or None,
        tilts=row["tilts"],
        tilt_axis_deg=None if _empty(row.get("tilt_axis_angle")) else float(row["tilt_axis_angle"]),
        stack=row.get("stack") or None,
        width=row.get("width"),
        height=row.get("height"),
        prexg=row.get("prexg") or None,
        tilt_offset_deg=float(row.get("tilt_offset") or 0.0),
        exclude_views=views,
        pixel_size_angstrom=row.get("pixel_size"),
    )
