"""Surface analysis of the 3D marker positions (what IMOD's tiltalign reports).

Beads usually sit on the two surfaces of the section.  Markers are split
into a bottom and a top set, and both are fitted with planes that share
their slopes: ``z = a_s + bx x + by y``.  From that: the thickness between
the planes, the tilt-angle offset that would make the section flat (a
rotation about the tilt axis, y), the section's tilt about x, and the
z shift that centres it.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class SurfaceFit:
    """Two-surface fit of marker positions.

    Attributes
    ----------
    surface : ndarray of int, shape (n_markers,)
        0 = bottom, 1 = top (all 0 when only one surface is found).
    n_surfaces : int
    slope_x, slope_y : float
        dz/dx and dz/dy of the planes.
    intercepts_px : tuple of floats
        z of each plane at x = y = 0 (bottom first).
    thickness_px : float
        Distance between the planes along z (NaN with one surface).
    tilt_offset_deg : float
        Degrees to add to every tilt angle to make the section flat:
        ``-atan(slope_x)`` (rotating the specimen about the tilt axis by
        beta changes every tilt by -beta).
    x_axis_tilt_deg : float
        Tilt about the x axis that would make the section flat along y,
        ``-atan(slope_y)`` (IMOD's "X axis tilt needed").
    z_shift_px : float
        Shift that puts the section's middle at z = 0.
    rms_px : float
        RMS distance of the markers from their planes.
    """

    surface: np.ndarray
    n_surfaces: int
    slope_x: float
    slope_y: float
    intercepts_px: tuple
    thickness_px: float
    tilt_offset_deg: float
    x_axis_tilt_deg: float
    z_shift_px: float
    rms_px: float

    def to_dict(self):
        d = dataclasses.asdict(self)
        d.pop("surface")
        d["n_bottom"] = int((self.surface == 0).sum())
        d["n_top"] = int((self.surface == 1).sum())
        return d


def _fit(points, surface, n_surfaces):
    """Least squares z = a_s + bx x + by y; returns (params, residuals)."""
    cols = [(surface == s).astype(float) for s in range(n_surfaces)] + [points[:, 0], points[:, 1]]
    a = np.column_stack(cols)
    p, *_ = np.linalg.lstsq(a, points[:, 2], rcond=None)
    return p, points[:, 2] - a @ p


def fit_surfaces(points_xyz_px, min_per_surface=3, iterations=20):
    """Split markers into two surfaces and fit them (see :class:`SurfaceFit`).

    Parameters
    ----------
    points_xyz_px : ndarray, shape (n_markers, 3)
    min_per_surface : int
        With fewer markers on a side (or fewer than ``2 * min_per_surface``
        markers), one plane is fitted.
    """
    pts = np.asarray(points_xyz_px, dtype=float)
    n = len(pts)
    one = np.zeros(n, dtype=int)
    if n < 3:
        raise ValueError(f"surface analysis needs at least 3 markers, got {n}")
    p, res = _fit(pts, one, 1)
    surface = (res > 0).astype(int)
    n_surf = 2
    for _ in range(iterations):
        if min(np.bincount(surface, minlength=2)) < min_per_surface:
            n_surf = 1
            surface = one
            break
        p, _ = _fit(pts, surface, 2)
        plane = pts[:, 0] * p[2] + pts[:, 1] * p[3]
        d0 = np.abs(pts[:, 2] - (p[0] + plane))
        d1 = np.abs(pts[:, 2] - (p[1] + plane))
        new = (d1 < d0).astype(int)
        if np.array_equal(new, surface):
            break
        surface = new
    p, res = _fit(pts, surface, n_surf)
    intercepts = tuple(float(v) for v in p[:n_surf])
    if n_surf == 2 and intercepts[0] > intercepts[1]:  # bottom first
        surface = 1 - surface
        intercepts = intercepts[::-1]
    bx, by = float(p[n_surf]), float(p[n_surf + 1])
    thickness = intercepts[1] - intercepts[0] if n_surf == 2 else float("nan")
    return SurfaceFit(
        surface=surface,
        n_surfaces=n_surf,
        slope_x=bx,
        slope_y=by,
        intercepts_px=intercepts,
        thickness_px=float(thickness),
        tilt_offset_deg=float(-np.degrees(np.arctan(bx))),
        x_axis_tilt_deg=float(-np.degrees(np.arctan(by))),
        z_shift_px=float(-np.mean(intercepts)),
        rms_px=float(np.sqrt(np.mean(res**2))),
    )
