"""IMOD text files: tilt angles (``.rawtlt``/``.tlt``), transforms (``.xf``,
``.prexg``) and fiducial coordinates (``.xyz``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError


def read_tilts(path):
    """Read one tilt angle (degrees) per line; blank lines are ignored.

    Returns
    -------
    ndarray, shape (n_views,)

    Raises
    ------
    InputError
        Missing or empty file, or a line that is not exactly one number.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: tilt file not found")
    values = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        s = line.strip()
        if not s:
            continue
        parts = s.split()
        if len(parts) != 1:
            raise InputError(f"{path}: line {lineno}: expected one tilt angle per line, found {len(parts)} fields: {s!r}")
        try:
            v = float(parts[0])
        except ValueError:
            raise InputError(f"{path}: line {lineno}: {parts[0]!r} is not a tilt angle in degrees") from None
        if not np.isfinite(v) or abs(v) >= 90:
            raise InputError(f"{path}: line {lineno}: tilt {parts[0]} is outside (-90, 90) degrees")
        values.append(v)
    if not values:
        raise InputError(f"{path}: the tilt file is empty (expected one tilt angle per view)")
    return np.array(values)


def write_tlt(path, tilt_deg, fmt="10.4f"):
    """Write tilt angles (degrees), one per line (IMOD ``.tlt``/``.rawtlt``), each formatted with ``fmt``."""
    with open(path, "w", encoding="utf-8") as f:
        for t in tilt_deg:
            f.write(f"{t:{fmt}}\n")


def read_xf(path, n_views=None):
    """Read IMOD transforms ``A11 A12 A21 A22 DX DY`` per line.

    Parameters
    ----------
    path : str or path-like
    n_views : int, optional
        Expected number of lines.

    Returns
    -------
    ndarray, shape (n, 6)
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: transform file not found")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        s = line.strip()
        if not s:
            continue
        parts = s.split()
        if len(parts) != 6:
            raise InputError(f"{path}: line {lineno}: expected 6 numbers (A11 A12 A21 A22 DX DY), found {len(parts)}")
        try:
            rows.append([float(p) for p in parts])
        except ValueError:
            raise InputError(f"{path}: line {lineno}: not a number in {s!r}") from None
    if not rows:
        raise InputError(f"{path}: the transform file is empty")
    xf = np.array(rows)
    if n_views is not None and len(xf) != n_views:
        raise InputError(f"{path}: has {len(xf)} transforms; expected one per view ({n_views})")
    return xf


def write_xf(path, xf):
    """Write IMOD transforms, one ``A11 A12 A21 A22 DX DY`` line per view."""
    with open(path, "w", encoding="utf-8") as f:
        for row in np.asarray(xf):
            f.write("".join(f"{v:12.7f}" for v in row[:4]) + "".join(f"{v:12.4f}" for v in row[4:]) + "\n")


def write_zfac(path, factors):
    """Write IMOD's ``.zfac``: per view the x and y shift per unit of z from in-plane stretch
    (:func:`tiltflow.projection.z_factors`), as tiltalign writes it (``%12.6f%12.6f``)."""
    with open(path, "w", encoding="utf-8") as f:
        for fx, fy in np.asarray(factors, dtype=float).reshape(-1, 2):
            f.write(f"{fx:12.6f}{fy:12.6f}\n")


def read_zfac(path, n_views=None):
    """Read a ``.zfac`` file: ndarray (n_views, 2); refuses a count other than ``n_views``."""
    return _read_per_view(path, n_views, ".zfac", 2, "x and y factor per view")


def _read_per_view(path, n_views, kind, n_columns, meaning):
    """A per-view text file of ``n_columns`` numbers per line: ndarray (n_views, n_columns); a clear
    error naming the file for anything else (or a count other than ``n_views``)."""
    try:
        values = np.loadtxt(path, ndmin=2)
    except ValueError as err:
        raise InputError(f"{path}: not a {kind} file ({n_columns} number(s) per line expected): {err}") from None
    if values.shape[1] != n_columns or (n_views is not None and len(values) != n_views):
        raise InputError(f"{path}: has {len(values)} lines of {values.shape[1]} numbers; expected "
                         f"{n_views if n_views is not None else 'one'} line(s) of {n_columns} ({meaning})")
    return values


def write_xtilt(path, xtilt_deg):
    """Write IMOD's ``.xtilt`` (``XTILTFILE`` of ``tilt``): the X-axis tilt of each view in degrees,
    as tiltalign writes it (``%7.2f``); all 0 when the alignment solves no X-axis tilt (tiltflow's
    model: a global X-axis tilt is absorbed by the 3D positions)."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{value:7.2f}\n" for value in np.asarray(xtilt_deg, dtype=float).ravel())


def read_xtilt(path, n_views=None):
    """Read a ``.xtilt`` file: ndarray (n_views,) of degrees; refuses a count other than ``n_views``."""
    return _read_per_view(path, n_views, ".xtilt", 1, "X-axis tilt per view")[:, 0]


def write_xyz(path, points_xyz_px, contour_ids, size_xy, pixel_size=1.0):
    """Write an IMOD fiducial ``.xyz`` file.

    Each line: point number, x, y, z, object (1), contour; the first line
    also carries ``Pix:`` and ``Dim:``.  x and y are given in the aligned
    frame (origin at the image corner, tilt axis through the centre), z
    relative to the tilt axis.

    Parameters
    ----------
    points_xyz_px : ndarray, shape (n, 3)
        Positions relative to the tilt axis at the image centre.
    contour_ids : sequence of int, length n
    size_xy : tuple of 2 ints
    pixel_size : float
        Angstrom.
    """
    cx, cy = size_xy[0] / 2.0, size_xy[1] / 2.0
    with open(path, "w", encoding="utf-8") as f:
        for i, ((x, y, z), c) in enumerate(zip(np.asarray(points_xyz_px), contour_ids), start=1):
            line = f"{i:4d} {x + cx:9.3f} {y + cy:9.3f} {z:9.3f} {1:6d} {int(c):4d}"
            if i == 1:
                line += f" Pix: {pixel_size:11.5f} Dim: {int(size_xy[0]):5d} {int(size_xy[1]):5d}"
            f.write(line + "\n")


def read_xyz(path):
    """Read an IMOD ``.xyz`` file: returns ``(ids, xyz)`` with xyz as written."""
    ids, xyz = [], []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6:
            ids.append(int(parts[5]))
            xyz.append([float(p) for p in parts[1:4]])
    return np.array(ids), np.array(xyz)


def write_resid(path, x_px, y_px, view, resid_x_px, resid_y_px):
    """Write IMOD tiltalign's residual file (``OutputResidualFile``, ``.resid``).

    A count line (``"  1525 residuals"``), then one line per observation:
    ``x y view dx dy`` -- the observed position (the marker file's frame),
    its 0-based view, and the residual ``fit - observed`` in pixels.
    """
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{len(x_px):6d} residuals\n")
        f.writelines(f"{x:10.2f}{y:10.2f}{int(v):5d}{dx:8.2f}{dy:8.2f}\n"
                     for x, y, v, dx, dy in zip(x_px, y_px, view, resid_x_px, resid_y_px))


def write_solution_table(path, rotation_deg, tilt_deg, deltilt_deg, mag, mean_residual_px, dmag=None, skew_deg=None):
    """Write a per-view solution table like tiltalign's ``taSolution.log``.

    ``At minimum tilt, rotation angle is ...``, then one line per view
    (1-based): rotation, tilt, deltilt (solved - nominal), mag, dmag, skew
    (0 without distortion) and the view's mean residual (px; blank where the
    view has no observations), in tiltalign's column widths.
    """
    n = len(tilt_deg)
    dmag = np.zeros(n) if dmag is None else np.asarray(dmag)
    skew_deg = np.zeros(n) if skew_deg is None else np.asarray(skew_deg)
    lowest = int(np.argmin(np.abs(tilt_deg)))
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"At minimum tilt, rotation angle is {rotation_deg[lowest]:.2f}\n \n")
        f.write(" view   rotation    tilt    deltilt     mag      dmag      skew    mean resid\n")
        for j in range(n):
            resid = f"{mean_residual_px[j]:10.2f}" if np.isfinite(mean_residual_px[j]) else ""
            f.write(f"{j + 1:4d}{rotation_deg[j]:10.1f}{tilt_deg[j]:10.1f}{deltilt_deg[j]:10.2f}{mag[j]:10.4f}"
                    f"{dmag[j]:10.4f}{skew_deg[j]:10.2f}{resid}\n")
