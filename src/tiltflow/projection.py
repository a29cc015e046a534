"""The projection model of tiltflow (Jou et al. eq. 3 in IMOD's signs).

A marker at ``(x, y, z)`` (pixels, origin on the tilt axis at the image
centre) is seen in view ``j`` with tilt ``theta``, in-plane rotation
``alpha`` (the tilt-axis angle, IMOD ``RotationAngle`` convention), scale
``s`` and shift ``d`` at::

    u  = x cos(theta) + z sin(theta)          v = y
    px = s (cos(alpha) u - sin(alpha) v) + dx + nx/2
    py = s (sin(alpha) u + cos(alpha) v) + dy + ny/2

Everything here is a pure function on arrays.  View parameters are carried
as an ``(n_views, 5)`` array with columns :data:`VIEW_COLUMNS`
(``tilt_rad, rotation_rad, scale, shift_x_px, shift_y_px``).
"""

from __future__ import annotations

import numpy as np

#: Column order of the ``(n_views, 5)`` view-parameter array.
VIEW_COLUMNS = ("tilt_rad", "rotation_rad", "scale", "shift_x_px", "shift_y_px")
TILT, ROT, SCALE, DX, DY = range(5)


def project(points_xyz_px, views, marker_index, view_index, centre_xy_px):
    """Predict image positions of observations.

    Parameters
    ----------
    points_xyz_px : ndarray, shape (n_markers, 3)
        Marker positions ``x, y, z`` in pixels.
    views : ndarray, shape (n_views, 5)
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
    v = views[view_index]
    ct, st = np.cos(v[:, TILT]), np.sin(v[:, TILT])
    ca, sa = np.cos(v[:, ROT]), np.sin(v[:, ROT])
    s = v[:, SCALE]
    u = p[:, 0] * ct + p[:, 2] * st
    w = p[:, 1]
    out = np.empty((p.shape[0], 2))
    out[:, 0] = s * (ca * u - sa * w) + v[:, DX] + centre_xy_px[0]
    out[:, 1] = s * (sa * u + ca * w) + v[:, DY] + centre_xy_px[1]
    return out


def project_with_jacobian(points_xyz_px, views, marker_index, view_index, centre_xy_px):
    """Predictions and their derivatives, one 2-row block per observation.

    Parameters are as for :func:`project`.

    Returns
    -------
    pred : ndarray, shape (n_obs, 2)
        Predicted ``(px, py)``.
    jac_view : ndarray, shape (n_obs, 2, 5)
        d(px, py) / d(view parameters of the observation's view), columns in
        :data:`VIEW_COLUMNS` order (per radian for the angles).
    jac_point : ndarray, shape (n_obs, 2, 3)
        d(px, py) / d(x, y, z) of the observation's marker.
    """
    p = points_xyz_px[marker_index]
    v = views[view_index]
    n = p.shape[0]
    ct, st = np.cos(v[:, TILT]), np.sin(v[:, TILT])
    ca, sa = np.cos(v[:, ROT]), np.sin(v[:, ROT])
    s = v[:, SCALE]
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    u = x * ct + z * st
    ru_x, ru_y = ca * u - sa * y, sa * u + ca * y  # R(alpha) (u, v)
    pred = np.empty((n, 2))
    pred[:, 0] = s * ru_x + v[:, DX] + centre_xy_px[0]
    pred[:, 1] = s * ru_y + v[:, DY] + centre_xy_px[1]

    jv = np.zeros((n, 2, 5))
    du_dtheta = -x * st + z * ct
    jv[:, 0, TILT] = s * ca * du_dtheta
    jv[:, 1, TILT] = s * sa * du_dtheta
    jv[:, 0, ROT] = -s * ru_y
    jv[:, 1, ROT] = s * ru_x
    jv[:, 0, SCALE] = ru_x
    jv[:, 1, SCALE] = ru_y
    jv[:, 0, DX] = 1.0
    jv[:, 1, DY] = 1.0

    jp = np.empty((n, 2, 3))
    sca, ssa = s * ca, s * sa
    jp[:, 0, 0] = sca * ct
    jp[:, 1, 0] = ssa * ct
    jp[:, 0, 1] = -ssa
    jp[:, 1, 1] = sca
    jp[:, 0, 2] = sca * st
    jp[:, 1, 2] = ssa * st
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


def views_to_xf(views):
    """IMOD transforms that map raw image positions into the aligned frame.

    The aligned frame has the tilt axis vertical through the image centre;
    a marker projects there to ``(u, v) + centre``.

    Parameters
    ----------
    views : ndarray, shape (n_views, 5)
        View parameters (:data:`VIEW_COLUMNS`).

    Returns
    -------
    ndarray, shape (n_views, 6)
        ``A11 A12 A21 A22 DX DY`` per view, acting about the image centre:
        ``aligned - c = A (raw - c) + D``.
    """
    rinv = rotation_matrix(-views[:, ROT]) / views[:, SCALE][:, None, None]
    d = views[:, [DX, DY]]
    shift = -np.einsum("nij,nj->ni", rinv, d)
    return np.concatenate([rinv.reshape(-1, 4), shift], axis=1)


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
