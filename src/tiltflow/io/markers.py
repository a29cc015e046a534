"""Marker files: IMOD binary models, ``model2point`` text and ``marker,view,x,y`` CSV."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import numpy as np

from .errors import InputError
from .imod_model import read_imod_model

#: How far a z value may be from an integer and still be a view index.
Z_TOLERANCE = 1e-3


@dataclasses.dataclass(frozen=True)
class MarkerTable:
    """Marker observations as read from a file, before any validation.

    Attributes
    ----------
    marker : ndarray of str, shape (n,)
        Marker id as in the input (CSV/text: as given; IMOD models: the
        contour number, 1-based, counted across objects in order).
    view : ndarray of int, shape (n,)
        0-based view index.
    xy_px : ndarray, shape (n, 2)
        Image position, IMOD pixel convention.
    where : tuple of str, length n
        Where each point stands in the file ("line 12", "object 1 contour 3
        point 5"), for error messages.
    path : str
    size_xy : tuple of 2 ints or None
        Image size recorded in the file (IMOD models), if any.
    pixel_size : float or None
        Pixel size recorded in the file, if any.
    """

    marker: np.ndarray
    view: np.ndarray
    xy_px: np.ndarray
    where: tuple
    path: str
    size_xy: tuple | None = None
    pixel_size: float | None = None

    def __len__(self):
        return len(self.view)


def read_markers(path):
    """Read a marker file, choosing the format from its content.

    Binary files starting with ``IMOD`` are IMOD models; files whose first
    non-blank line holds commas are CSV with a ``marker,view,x,y`` header;
    anything else is ``model2point`` text (``contour x y z`` or
    ``object contour x y z`` per line).

    Raises
    ------
    InputError
        With the file, the line (or object/contour/point) and what was
        expected.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: marker file not found")
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"IMOD":
        return _from_model(path)
    text = path.read_text(encoding="utf-8", errors="replace")
    first = next((ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")), "")
    if not first:
        raise InputError(f"{path}: the marker file is empty (expected marker points)")
    if "," in first:
        return _from_csv(path, text)
    return _from_point_text(path, text)


def _view_from_z(z, path, where):
    v = round(z)
    if not math.isfinite(z) or abs(z - v) > Z_TOLERANCE:
        raise InputError(
            f"{path}: {where}: z = {z} is not a view index (expected an integer z, one per view); "
            "this does not look like a fiducial model"
        )
    return int(v)


def _from_model(path):
    model = read_imod_model(path)
    markers, views, xy, where = [], [], [], []
    number = 0
    for o, obj in enumerate(model.objects, start=1):
        for c, pts in enumerate(obj.contours, start=1):
            number += 1
            for p, (x, y, z) in enumerate(pts, start=1):
                loc = f"object {o} contour {c} point {p}"
                views.append(_view_from_z(z, path, loc))
                markers.append(str(number))
                xy.append((x, y))
                where.append(loc)
    if not views:
        raise InputError(f"{path}: the IMOD model holds no points (expected one contour per fiducial marker)")
    size = model.size_xyz[:2] if min(model.size_xyz[:2]) > 0 else None
    return MarkerTable(
        np.array(markers), np.array(views, dtype=np.int64), np.array(xy, dtype=float), tuple(where),
        str(path), size, model.pixel_size or None,
    )


def _number(text, path, lineno, name):
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{path}: line {lineno}: {name} = {text!r} is not a number") from None


def _from_csv(path, text):
    reader = csv.reader(text.splitlines())
    header = None
    markers, views, xy, where = [], [], [], []
    for lineno, row in enumerate(reader, start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if header is None:
            header = [h.strip().lower() for h in row]
            missing = [c for c in ("marker", "view", "x", "y") if c not in header]
            if missing:
                raise InputError(
                    f"{path}: line {lineno}: the CSV header must name the columns marker,view,x,y; "
                    f"missing {','.join(missing)} in {','.join(header)}"
                )
            cols = [header.index(c) for c in ("marker", "view", "x", "y")]
            continue
        if len(row) < len(header):
            raise InputError(f"{path}: line {lineno}: expected {len(header)} fields, found {len(row)}")
        m, v, x, y = (row[i].strip() for i in cols)
        if not m:
            raise InputError(f"{path}: line {lineno}: empty marker id")
        vf = _number(v, path, lineno, "view")
        if not math.isfinite(vf) or vf != round(vf):
            raise InputError(f"{path}: line {lineno}: view = {v!r} is not an integer view index")
        markers.append(m)
        views.append(int(round(vf)))
        xy.append((_number(x, path, lineno, "x"), _number(y, path, lineno, "y")))
        where.append(f"line {lineno}")
    if not views:
        raise InputError(f"{path}: no marker points after the header (expected rows marker,view,x,y)")
    return MarkerTable(np.array(markers), np.array(views, dtype=np.int64), np.array(xy, dtype=float), tuple(where), str(path))


def _from_point_text(path, text):
    markers, views, xy, where = [], [], [], []
    ncol = None
    numbering = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.split()
        if ncol is None:
            ncol = len(parts)
            if ncol == 3:
                raise InputError(
                    f"{path}: line {lineno}: found 3 columns (x y z) but no contour numbers, so markers cannot "
                    "be told apart; write the file with 'model2point -contour' (contour x y z) or "
                    "'model2point -object' (object contour x y z), or use CSV marker,view,x,y"
                )
            if ncol not in (4, 5):
                raise InputError(
                    f"{path}: line {lineno}: expected 4 columns (contour x y z) or 5 (object contour x y z), "
                    f"found {ncol}"
                )
        if len(parts) != ncol:
            raise InputError(f"{path}: line {lineno}: expected {ncol} columns like the first line, found {len(parts)}")
        vals = [_number(p, path, lineno, name) for p, name in zip(parts, ("object", "contour", "x", "y", "z")[5 - ncol :])]
        key = (int(vals[0]), int(vals[1])) if ncol == 5 else (1, int(vals[0]))
        if key not in numbering:
            numbering[key] = len(numbering) + 1
        x, y, z = vals[-3:]
        loc = f"line {lineno}"
        views.append(_view_from_z(z, path, loc))
        xy.append((x, y))
        where.append(loc)
        markers.append(key)
    if not views:
        raise InputError(f"{path}: no marker points found")
    objects = {k[0] for k in numbering}
    if len(objects) == 1:
        ids = [str(k[1]) for k in markers]
    else:  # count contours across objects, like a binary model
        ids = [str(numbering[k]) for k in markers]
    return MarkerTable(np.array(ids), np.array(views, dtype=np.int64), np.array(xy, dtype=float), tuple(where), str(path))


def write_markers_csv(path, marker, view, xy_px):
    """Write observations as CSV ``marker,view,x,y``."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("marker,view,x,y\n")
        for m, v, (x, y) in zip(marker, view, np.asarray(xy_px)):
            f.write(f"{m},{int(v)},{x:.4f},{y:.4f}\n")


def write_point_text(path, marker, view, xy_px, with_object=False):
    """Write observations like ``model2point -contour`` (or ``-object``)."""
    with open(path, "w", encoding="utf-8") as f:
        for m, v, (x, y) in zip(marker, view, np.asarray(xy_px)):
            prefix = f"{1:5d} " if with_object else ""
            f.write(f"{prefix}{int(m):5d} {x:10.4f} {y:10.4f} {float(v):8.2f}\n")
