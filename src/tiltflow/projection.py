"""The projection model of tiltflow (Jou et al. eq. 3 in IMOD's signs, with IMOD's distortion).

A marker at ``(x, y, z)`` (pixels, origin on the tilt axis at the image
centre) is seen in view ``j`` with tilt ``theta``, in-plane rotation
``alpha`` (the tilt-axis angle, IMOD ``RotationAngle`` convention), scale
``s``, X-stretch ``dmag``, skew ``delta`` and shift ``d`` at::

    x1 = (s + dmag) cos(delta) x      y1 = (s + dmag) sin(delta) x + s y      z1 = s z
    u  = x1 cos(theta) + z1 sin(theta)                                        v  = y1
    px = cos(alpha) u - sin(alpha) v + dx + nx/2
    py = sin(alpha) u + cos(alpha) v + dy + ny/2

The distortion acts in the plane of the section before it is tilted, as
tiltalign's ``fill_dist_matrix`` (stretch type 1) does: ``dmag`` is an
increment to the magnification along X, ``delta`` the rotation of the X
axis relative to the Y axis.  Without distortion (``dmag = delta = 0``)
this is ``s R(alpha) (x cos(theta) + z sin(theta), y) + d``.

Everything here is a pure function on arrays.  View parameters are carried
as an ``(n_views, 7)`` array with columns :data:`VIEW_COLUMNS`
(``tilt_rad, rotation_rad, scale, shift_x_px, shift_y_px, dmag,
skew_rad``); the functions also accept the first five columns alone
(no distortion).
"""

from __future__ import annotations

import numpy as np

#: Column order of the ``(n_views, 7)`` view-parameter array.
VIEW_COLUMNS = ("tilt_rad", "rotation_rad", "scale", "shift_x_px", "shift_y_px", "dmag", "skew_rad")
TILT, ROT, SCALE, DX, DY, DMAG, SKEW = range(7)
#: Number of view parameters.
N_VIEW = len(VIEW_COLUMNS)


def full_views(views):
    """``views`` as an ``(n_views, 7)`` float array: five-column input gains zero distortion.

    Parameters
    ----------
    views : array_like, shape (n_views, 5) or (n_views, 7)

    Returns
    -------
    ndarray, shape (n_views, 7)
        A new array when columns were added, else ``views`` as a float array.
    """
    views = np.asarray(views, dtype=float)
    if views.ndim != 2 or views.shape[1] not in (5, N_VIEW):
        raise ValueError(f"views must have shape (n_views, 5) or (n_views, {N_VIEW}), got {views.shape}")
    if views.shape[1] == N_VIEW:
        return views
    return np.concatenate([views, np.zeros((len(views), N_VIEW - 5))], axis=1)


def _section_frame(p, v):
    """Distorted, tilted coordinates ``(u, v)`` and the pieces the derivatives need."""
    ct, st = np.cos(v[:, TILT]), np.sin(v[:, TILT])
    s = v[:, SCALE]
    xm = s + v[:, DMAG]
    cd, sd = np.cos(v[:, SKEW]), np.sin(v[:, SKEW])
    x1 = xm * cd * p[:, 0]
    y1 = xm * sd * p[:, 0] + s * p[:, 1]
    z1 = s * p[:, 2]
    return ct, st, s, xm, cd, sd, x1, y1, z1


def project(points_xyz_px, views, marker_index, view_index, centre_xy_px):
    """Predict image positions of observations.

    Parameters
    ----------
    points_xyz_px : ndarray, shape (n_markers, 3)
        Marker positions ``x, y, z`` in pixels.
    views : ndarray, shape (n_views, 7) or (n_views, 5)
        View parameters, columns :data:`VIEW_COLUMNS` (angles in radians).
    marker_index, view_index : ndarray of int, shape (n_obs,)
        Which marker and view each observation belongs to (0-based rows of
        ``points_xyz_px`` and ``views``).
    centre_xy_px : sequence of 2 floats
        Image centre ``(nx/2, ny/2)`` in pixels.

    Returns
    -------
    ndarray, shape (n_obs, 2)
        Predicted ``(px, py)`` in image pixels (IMOD convention: the centre
        of pixel column i is at i + 0.5).
    """
    p = points_xyz_px[marker_index]
    v = full_views(views)[view_index]
    ct, st, s, xm, cd, sd, x1, y1, z1 = _section_frame(p, v)
    u = x1 * ct + z1 * st
    ca, sa = np.cos(v[:, ROT]), np.sin(v[:, ROT])
    out = np.empty((p.shape[0], 2))
    out[:, 0] = ca * u - sa * y1 + v[:, DX] + centre_xy_px[0]
    out[:, 1] = sa * u + ca * y1 + v[:, DY] + centre_xy_px[1]
    return out


def project_with_jacobian(points_xyz_px, views, marker_index, view_index, centre_xy_px):
    """Predictions and their derivatives, one 2-row block per observation.

    Parameters are as for :func:`project`.

    Returns
    -------
    pred : ndarray, shape (n_obs, 2)
        Predicted ``(px, py)``.
    jac_view : ndarray, shape (n_obs, 2, 7)
        d(px, py) / d(view parameters of the observation's view), columns in
        :data:`VIEW_COLUMNS` order (per radian for the angles).
    jac_point : ndarray, shape (n_obs, 2, 3)
        d(px, py) / d(x, y, z) of the observation's marker.
    """
    p = points_xyz_px[marker_index]
    v = full_views(views)[view_index]
    n = p.shape[0]
    ct, st, s, xm, cd, sd, x1, y1, z1 = _section_frame(p, v)
    ca, sa = np.cos(v[:, ROT]), np.sin(v[:, ROT])
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    u = x1 * ct + z1 * st
    ru_x, ru_y = ca * u - sa * y1, sa * u + ca * y1  # R(alpha) (u, v)
    pred = np.empty((n, 2))
    pred[:, 0] = ru_x + v[:, DX] + centre_xy_px[0]
    pred[:, 1] = ru_y + v[:, DY] + centre_xy_px[1]

    def rotated(du, dv):
        return np.stack([ca * du - sa * dv, sa * du + ca * dv], axis=1)

    zero = np.zeros(n)
    jv = np.zeros((n, 2, N_VIEW))
    jv[:, :, TILT] = rotated(-x1 * st + z1 * ct, zero)
    jv[:, 0, ROT] = -ru_y
    jv[:, 1, ROT] = ru_x
    jv[:, :, SCALE] = rotated(ct * cd * x + st * z, sd * x + y)
    jv[:, 0, DX] = 1.0
    jv[:, 1, DY] = 1.0
    jv[:, :, DMAG] = rotated(ct * cd * x, sd * x)
    jv[:, :, SKEW] = rotated(-ct * xm * sd * x, xm * cd * x)

    jp = np.empty((n, 2, 3))
    jp[:, :, 0] = rotated(ct * xm * cd, xm * sd)
    jp[:, :, 1] = rotated(zero, s)
    jp[:, :, 2] = rotated(st * s, zero)
    return pred, jv, jp


def rotation_matrix(angle_rad):
    """2x2 counter-clockwise rotation matrix (or a stack of them).

    Parameters
    ----------
    angle_rad : float or ndarray, shape (n,)

    Returns
    -------
    ndarray, shape (2, 2) or (n, 2, 2)
    """
    a = np.asarray(angle_rad, dtype=float)
    c, s = np.cos(a), np.sin(a)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def in_plane_matrix(views):
    """The 2x2 map from the undistorted aligned frame to the raw image, per view.

    ``raw - c - d = R(alpha) M (cos(theta) x, y)`` holds exactly for points
    at ``z = 0``, with ``M = [[(s + dmag) cos(delta), 0], [(s + dmag)
    sin(delta) / cos(theta), s]]`` (IMOD's aligned frame: tiltalign writes
    the inverse of this product into its transforms).  Points off ``z = 0``
    keep a small stretch-induced error: :func:`z_factors`.

    Parameters
    ----------
    views : ndarray, shape (n_views, 7) or (n_views, 5)

    Returns
    -------
    ndarray, shape (n_views, 2, 2)
    """
    v = full_views(views)
    s, xm = v[:, SCALE], v[:, SCALE] + v[:, DMAG]
    m = np.zeros((len(v), 2, 2))
    m[:, 0, 0] = xm * np.cos(v[:, SKEW])
    m[:, 1, 0] = xm * np.sin(v[:, SKEW]) / np.cos(v[:, TILT])
    m[:, 1, 1] = s
    return rotation_matrix(v[:, ROT]) @ m


def z_factors(views):
    """IMOD's ``.zfac`` values: how far a point at height z lands off its undistorted place.

    In the aligned frame of :func:`views_to_xf` a marker at ``(x, y, z)``
    projects to ``(x cos(theta) + z sin(theta) + fx z, y + fy z)`` with
    ``fx = sin(theta) (s / ((s + dmag) cos(delta)) - 1)`` and ``fy = -tan(delta)
    tan(theta)`` -- the two columns of the ``.zfac`` file tiltalign writes
    and ``tilt`` reads (``ZFACTORFILE``).  Both are 0 without distortion.

    Parameters
    ----------
    views : ndarray, shape (n_views, 7) or (n_views, 5)

    Returns
    -------
    ndarray, shape (n_views, 2)
        ``fx, fy`` per view (pixels of aligned-image position per pixel of z).
    """
    v = full_views(views)
    s, xm = v[:, SCALE], v[:, SCALE] + v[:, DMAG]
    fx = np.sin(v[:, TILT]) * (s / (xm * np.cos(v[:, SKEW])) - 1.0)
    fy = -np.tan(v[:, SKEW]) * np.tan(v[:, TILT])
    return np.column_stack([fx, fy])


def views_to_xf(views):
    """IMOD transforms that map raw image positions into the aligned frame.

    The aligned frame has the tilt axis vertical through the image centre;
    a marker at ``z = 0`` projects there to ``(x cos(theta), y) + centre``
    (and in general to ``(u, v) + centre`` up to :func:`z_factors`).  With
    distortion this is tiltalign's transform: the inverse of ``R(alpha) M``
    (:func:`in_plane_matrix`).

    Parameters
    ----------
    views : ndarray, shape (n_views, 7) or (n_views, 5)
        View parameters (:data:`VIEW_COLUMNS`).

    Returns
    -------
    ndarray, shape (n_views, 6)
        ``A11 A12 A21 A22 DX DY`` per view, acting about the image centre:
        ``aligned - c = A (raw - c) + D``.
    """
    v = full_views(views)
    a = np.linalg.inv(in_plane_matrix(v))
    shift = -np.einsum("nij,nj->ni", a, v[:, [DX, DY]])
    return np.concatenate([a.reshape(-1, 4), shift], axis=1)


def xf_product(first, second):
    """Compose IMOD transforms like ``xfproduct first second``.

    The result applies ``first`` and then ``second``.

    Parameters
    ----------
    first, second : ndarray, shape (n, 6)
        ``A11 A12 A21 A22 DX DY`` rows.

    Returns
    -------
    ndarray, shape (n, 6)
    """
    a1 = first[:, :4].reshape(-1, 2, 2)
    a2 = second[:, :4].reshape(-1, 2, 2)
    a = a2 @ a1
    d = np.einsum("nij,nj->ni", a2, first[:, 4:]) + second[:, 4:]
    return np.concatenate([a.reshape(-1, 4), d], axis=1)


def apply_xf(xf, xy_px, centre_xy_px):
    """Apply IMOD transforms to points.

    Parameters
    ----------
    xf : ndarray, shape (n, 6)
        One transform per point.
    xy_px : ndarray, shape (n, 2)
    centre_xy_px : sequence of 2 floats

    Returns
    -------
    ndarray, shape (n, 2)
    """
    c = np.asarray(centre_xy_px, dtype=float)
    a = xf[:, :4].reshape(-1, 2, 2)
    return np.einsum("nij,nj->ni", a, xy_px - c) + xf[:, 4:] + c


def invert_xf(xf):
    """Inverse IMOD transforms: ``apply_xf(invert_xf(xf), apply_xf(xf, p, c), c) == p``.

    Parameters
    ----------
    xf : ndarray, shape (n, 6)
        ``A11 A12 A21 A22 DX DY`` rows (``out - c = A (in - c) + D``).

    Returns
    -------
    ndarray, shape (n, 6)
        ``A^-1`` and ``-A^-1 D`` per row.

    Raises
    ------
    ValueError
        A transform is singular (naming its row).
    """
    xf = np.asarray(xf, dtype=float)
    a = xf[:, :4].reshape(-1, 2, 2)
    det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]
    bad = np.flatnonzero(~(np.abs(det) > 0))
    if len(bad):
        raise ValueError(f"xf row {int(bad[0])} is singular (determinant {det[bad[0]]!r}); expected an invertible 2x2 matrix")
    a_inv = np.linalg.inv(a)
    d = -np.einsum("nij,nj->ni", a_inv, xf[:, 4:])
    return np.concatenate([a_inv.reshape(-1, 4), d], axis=1)
