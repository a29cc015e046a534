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


#: Maps of :func:`view_maps`: the prediction, its derivatives by the view parameters, by x, y, z.
N_MAPS = 1 + N_VIEW + 3
#: :func:`apply_view_maps` evaluates every view's maps at every marker (one matrix product, then a
#: gather) when there are at most this many view-marker pairs per observation ...
DENSE_PAIRS_PER_OBSERVATION = 4
#: ... and the dense values take at most this many bytes; otherwise observation by observation.
DENSE_MAX_BYTES = 32 << 20
#: Observations evaluated at a time observation by observation (bounds the temporaries).
GATHER_CHUNK = 1 << 15


def view_maps(views, derivatives=True):
    """The model of each view as affine maps of a marker's homogeneous coordinates.

    The prediction is affine in the marker position: ``pred - centre =
    M_j (x, y, z, 1)`` with ``M_j`` a 2 x 4 matrix of view ``j``'s
    parameters, and so is its derivative by each view parameter (by
    x, y, z it is constant: the columns of ``M_j``).  Evaluating these
    maps (:func:`apply_view_maps`) costs per observation a few
    multiply-adds; the trigonometry is done once per view.

    Parameters
    ----------
    views : ndarray, shape (n_views, 7) or (n_views, 5)
        View parameters, columns :data:`VIEW_COLUMNS`.
    derivatives : bool
        Also the derivative maps (else only map 0).

    Returns
    -------
    ndarray, shape (N_MAPS, 2, 4, n_views) or (1, 2, 4, n_views)
        ``maps[k, r, :, j]``: coefficients of ``(x, y, z, 1)`` giving, for
        view ``j``, image coordinate ``r`` (px, py) of map ``k``: 0 the
        prediction without the image centre, ``1 + c`` its derivative by
        view parameter ``c`` (per radian for angles), ``1 + N_VIEW + i``
        its derivative by coordinate ``i`` of the marker.
    """
    vt = full_views(views).T
    angles = vt[[TILT, ROT, SKEW]]
    cos, sin = np.cos(angles), np.sin(angles)
    ct, ca, cd = cos
    st, sa, sd = sin
    s = vt[SCALE]
    xm = s + vt[DMAG]
    xm_cd, xm_sd = xm * cd, xm * sd
    n_maps = N_MAPS if derivatives else 1
    # section-frame rows (u, v) of each map, before the in-plane rotation (see the module docstring)
    sec = np.zeros((n_maps, 2, 4, vt.shape[1]))
    sec[0, 0, 0] = xm_cd * ct
    sec[0, 0, 2] = s * st
    sec[0, 1, 0] = xm_sd
    sec[0, 1, 1] = s
    if derivatives:
        sec[1 + TILT, 0, 0] = -xm_cd * st
        sec[1 + TILT, 0, 2] = s * ct
        sec[1 + SCALE, 0, 0] = cd * ct
        sec[1 + SCALE, 0, 2] = st
        sec[1 + SCALE, 1, 0] = sd
        sec[1 + SCALE, 1, 1] = 1.0
        sec[1 + DMAG, 0, 0] = sec[1 + SCALE, 0, 0]
        sec[1 + DMAG, 1, 0] = sd
        sec[1 + SKEW, 0, 0] = -xm_sd * ct
        sec[1 + SKEW, 1, 0] = xm_cd
    maps = np.empty_like(sec)
    np.multiply(ca, sec[:, 0], out=maps[:, 0])
    maps[:, 0] -= sa * sec[:, 1]
    np.multiply(sa, sec[:, 0], out=maps[:, 1])
    maps[:, 1] += ca * sec[:, 1]
    if derivatives:
        # d R(alpha) / d alpha = R(alpha + 90 deg): (-row 1, row 0) of the rotated prediction map
        maps[1 + ROT, 0] = -maps[0, 1]
        maps[1 + ROT, 1] = maps[0, 0]
        maps[1 + DX, 0, 3] = 1.0
        maps[1 + DY, 1, 3] = 1.0
        maps[1 + N_VIEW:, :, 3] = maps[0, :, :3].transpose(1, 0, 2)
    maps[0, 0, 3] = vt[DX]
    maps[0, 1, 3] = vt[DY]
    return maps


def _homogeneous(points_xyz_px):
    """``(x, y, z, 1)`` of every marker as columns, shape (4, n_markers)."""
    homog = np.empty((4, len(points_xyz_px)))
    homog[:3] = points_xyz_px.T
    homog[3] = 1.0
    return homog


def view_maps_on_grid(maps, points_xyz_px):
    """Every view's affine maps at every marker (one matrix product).

    Parameters
    ----------
    maps : ndarray, shape (n_rows, 4, n_views)
        Coefficients of ``(x, y, z, 1)`` per row and view.
    points_xyz_px : ndarray, shape (n_markers, 3)

    Returns
    -------
    ndarray, shape (n_rows, n_views, n_markers)
    """
    n_rows, _, n_views = maps.shape
    grid = maps.transpose(0, 2, 1).reshape(n_rows * n_views, 4) @ _homogeneous(points_xyz_px)
    return grid.reshape(n_rows, n_views, len(points_xyz_px))


def apply_view_maps(maps, points_xyz_px, marker_index, view_index, out=None):
    """Evaluate per-view affine maps at the observations.

    Parameters
    ----------
    maps : ndarray, shape (n_rows, 4, n_views)
        Coefficients of ``(x, y, z, 1)`` per row and view (rows of
        :func:`view_maps`, possibly selected and scaled).
    points_xyz_px : ndarray, shape (n_markers, 3)
    marker_index, view_index : ndarray of int, shape (n_obs,)
    out : ndarray, shape (n_rows, n_obs), optional

    Returns
    -------
    ndarray, shape (n_rows, n_obs)
        ``sum_i maps[r, i, view] * (x, y, z, 1)[i]`` of each observation.

    Where the markers are seen in most views (at most
    :data:`DENSE_PAIRS_PER_OBSERVATION` view-marker pairs per observation)
    every view's maps are evaluated at every marker in one matrix product
    and the observations gathered from it; otherwise observation by
    observation, :data:`GATHER_CHUNK` at a time.
    """
    n_rows, _, n_views = maps.shape
    n_markers, n_obs = len(points_xyz_px), len(marker_index)
    if out is None:
        out = np.empty((n_rows, n_obs))
    pairs = n_views * n_markers
    if pairs <= DENSE_PAIRS_PER_OBSERVATION * n_obs and 8 * n_rows * pairs <= DENSE_MAX_BYTES:
        every = view_maps_on_grid(maps, points_xyz_px).reshape(n_rows, pairs)
        np.take(every, view_index * n_markers + marker_index, axis=1, out=out)
        return out
    homog = _homogeneous(points_xyz_px)
    for lo in range(0, n_obs, GATHER_CHUNK):
        vi, mi = view_index[lo:lo + GATHER_CHUNK], marker_index[lo:lo + GATHER_CHUNK]
        chunk = out[:, lo:lo + GATHER_CHUNK]
        np.multiply(maps[:, 3][:, vi], 1.0, out=chunk)
        for i in range(3):
            chunk += maps[:, i][:, vi] * homog[i, mi]
    return out


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
    points_xyz_px = np.asarray(points_xyz_px, dtype=float)
    pred = apply_view_maps(view_maps(views, derivatives=False)[0], points_xyz_px, np.asarray(marker_index),
                           np.asarray(view_index))
    pred[0] += centre_xy_px[0]
    pred[1] += centre_xy_px[1]
    return np.ascontiguousarray(pred.T)


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
    points_xyz_px = np.asarray(points_xyz_px, dtype=float)
    maps = view_maps(views)
    n_views = maps.shape[-1]
    values = apply_view_maps(maps.reshape(2 * N_MAPS, 4, n_views), points_xyz_px, np.asarray(marker_index),
                             np.asarray(view_index))
    values = values.reshape(N_MAPS, 2, -1).transpose(2, 1, 0)  # (n_obs, 2, N_MAPS)
    pred = values[:, :, 0] + np.asarray(centre_xy_px, dtype=float)
    return pred, np.ascontiguousarray(values[:, :, 1:1 + N_VIEW]), np.ascontiguousarray(values[:, :, 1 + N_VIEW:])


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
