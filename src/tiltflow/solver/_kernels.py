"""Compiled (numba) kernels of the bundle problem.

:func:`linearize` evaluates the weighted residuals of every observation,
their derivatives, and accumulates ``J^T J`` and ``J^T r`` straight into
the Schur block layout in one pass (the pure-numpy equivalent is
``projection.project_with_jacobian`` + ``SchurStructure.assemble``; the
tests check that both agree).  The model is :mod:`tiltflow.projection`'s,
distortion included; a view parameter reaches the unknowns through up to
two weighted slots (grouped parameters).
"""

from __future__ import annotations

import numpy as np
from numba import njit


def view_trig(views):
    """Cosine and sine of each view's tilt, rotation and skew, shape (n_views, 6): ``ct, st, ca, sa, cd, sd``.

    The kernels take these per view instead of evaluating them per observation.
    """
    angles = views[:, [0, 1, 6]]
    c, s = np.cos(angles), np.sin(angles)
    return np.ascontiguousarray(np.column_stack([c[:, 0], s[:, 0], c[:, 1], s[:, 1], c[:, 2], s[:, 2]]))


@njit(cache=True, fastmath=False)
def _predict(points, views, trig, i, j, out):  # pragma: no cover - compiled
    """Fill ``out[0:2]`` with the prediction (without shift and centre) and return the section-frame pieces."""
    ct = trig[j, 0]
    st = trig[j, 1]
    s = views[j, 2]
    xm = s + views[j, 5]
    cd = trig[j, 4]
    sd = trig[j, 5]
    x = points[i, 0]
    x1 = xm * cd * x
    y1 = xm * sd * x + s * points[i, 1]
    z1 = s * points[i, 2]
    u = x1 * ct + z1 * st
    ca = trig[j, 2]
    sa = trig[j, 3]
    out[0] = ca * u - sa * y1
    out[1] = sa * u + ca * y1
    return ct, st, s, xm, cd, sd, x1, z1, ca, sa


@njit(cache=True, fastmath=False)
def cost(points, views, trig, marker_index, view_index, xy, sqrt_w, cx, cy):  # pragma: no cover - compiled
    """``0.5 * sum(w * |pred - obs|^2)``."""
    total = 0.0
    p = np.empty(2)
    for k in range(marker_index.shape[0]):
        i = marker_index[k]
        j = view_index[k]
        _predict(points, views, trig, i, j, p)
        rx = (p[0] + views[j, 3] + cx - xy[k, 0]) * sqrt_w[k]
        ry = (p[1] + views[j, 4] + cy - xy[k, 1]) * sqrt_w[k]
        total += rx * rx + ry * ry
    return 0.5 * total


@njit(cache=True, fastmath=False)
def residual_vectors(points, views, trig, marker_index, view_index, xy, cx, cy, out):  # pragma: no cover - compiled
    """Unweighted residuals ``pred - obs`` into ``out`` (n_obs, 2)."""
    p = np.empty(2)
    for k in range(marker_index.shape[0]):
        i = marker_index[k]
        j = view_index[k]
        _predict(points, views, trig, i, j, p)
        out[k, 0] = p[0] + views[j, 3] + cx - xy[k, 0]
        out[k, 1] = p[1] + views[j, 4] + cy - xy[k, 1]


@njit(cache=True, fastmath=False)
def linearize(points, views, trig, marker_index, view_index, xy, sqrt_w, cx, cy,
              eliminate_points, group_of, e_free, e_colmap, kpos_view, view_weight, kpos_point,
              hee, hek, hkk, ge, gk):  # pragma: no cover - compiled
    """Accumulate the normal equations; returns the cost.

    ``kpos_view (n_views, 7, 2)`` and ``view_weight`` give each view slot's
    kept position (-1: none) and weight; with ``eliminate_points`` false,
    slot 0 of view parameter ``c`` is eliminated instead, as block column
    ``e_colmap[c]`` (-1: none) where ``e_free`` says it is free; with
    ``eliminate_points``, coordinate ``c`` is block column ``e_colmap[c]``.
    ``group_of`` gives the eliminated group (block) of each marker (or view);
    ``e_free`` is indexed by group.  ``hee (n_groups, b, b)``, ``hek (n_groups, b, m)``, ``hkk (m, m)``,
    ``ge (n_groups, b)``, ``gk (m,)`` must be zero on entry.
    """
    nv = 7
    base = np.empty((2, nv + 3))
    a0 = np.empty(2 * nv + 3)
    a1 = np.empty(2 * nv + 3)
    kcol = np.empty(2 * nv + 3, dtype=np.int64)
    ecol = np.empty(2 * nv + 3, dtype=np.int64)
    p = np.empty(2)
    total = 0.0
    for k in range(marker_index.shape[0]):
        i = marker_index[k]
        j = view_index[k]
        w = sqrt_w[k]
        ct, st, s, xm, cd, sd, x1, z1, ca, sa = _predict(points, views, trig, i, j, p)
        rx = (p[0] + views[j, 3] + cx - xy[k, 0]) * w
        ry = (p[1] + views[j, 4] + cy - xy[k, 1]) * w
        total += rx * rx + ry * ry
        x = points[i, 0]
        y = points[i, 1]
        z = points[i, 2]
        # derivatives in the section frame (du, dv), rotated by R(alpha) below
        # tilt
        du = -x1 * st + z1 * ct
        base[0, 0] = ca * du * w
        base[1, 0] = sa * du * w
        # rotation
        base[0, 1] = -p[1] * w
        base[1, 1] = p[0] * w
        # scale
        du = ct * cd * x + st * z
        dv = sd * x + y
        base[0, 2] = (ca * du - sa * dv) * w
        base[1, 2] = (sa * du + ca * dv) * w
        # shifts
        base[0, 3] = w
        base[1, 3] = 0.0
        base[0, 4] = 0.0
        base[1, 4] = w
        # dmag
        du = ct * cd * x
        dv = sd * x
        base[0, 5] = (ca * du - sa * dv) * w
        base[1, 5] = (sa * du + ca * dv) * w
        # skew
        du = -ct * xm * sd * x
        dv = xm * cd * x
        base[0, 6] = (ca * du - sa * dv) * w
        base[1, 6] = (sa * du + ca * dv) * w
        # x, y, z
        du = ct * xm * cd
        dv = xm * sd
        base[0, 7] = (ca * du - sa * dv) * w
        base[1, 7] = (sa * du + ca * dv) * w
        base[0, 8] = -sa * s * w
        base[1, 8] = ca * s * w
        base[0, 9] = ca * st * s * w
        base[1, 9] = sa * st * s * w
        # the active columns: weighted view slots, then the point's coordinates
        n_act = 0
        g = group_of[i] if eliminate_points else group_of[j]
        for c in range(nv):
            for slot in range(2):
                kc = kpos_view[j, c, slot]
                ec = -1
                if not eliminate_points and slot == 0:
                    ec = e_colmap[c]
                    if ec >= 0 and not e_free[g, ec]:
                        ec = -1
                if kc >= 0 or ec >= 0:
                    wt = view_weight[j, c, slot]
                    a0[n_act] = base[0, c] * wt
                    a1[n_act] = base[1, c] * wt
                    kcol[n_act] = kc
                    ecol[n_act] = ec
                    n_act += 1
        for c in range(3):
            ec = -1
            kc = -1
            if eliminate_points:
                ec = e_colmap[c]
                if ec >= 0 and not e_free[g, ec]:
                    ec = -1
            else:
                kc = kpos_point[i, c]
            if kc >= 0 or ec >= 0:
                a0[n_act] = base[0, nv + c]
                a1[n_act] = base[1, nv + c]
                kcol[n_act] = kc
                ecol[n_act] = ec
                n_act += 1
        for a in range(n_act):
            ja0 = a0[a]
            ja1 = a1[a]
            ea = ecol[a]
            if ea >= 0:
                ge[g, ea] += ja0 * rx + ja1 * ry
                for c in range(n_act):
                    prod = ja0 * a0[c] + ja1 * a1[c]
                    if ecol[c] >= 0:
                        hee[g, ea, ecol[c]] += prod
                    else:
                        hek[g, ea, kcol[c]] += prod
            else:
                ka = kcol[a]
                gk[ka] += ja0 * rx + ja1 * ry
                for c in range(n_act):
                    if kcol[c] >= 0:
                        hkk[ka, kcol[c]] += ja0 * a0[c] + ja1 * a1[c]
    return 0.5 * total


@njit(cache=True)
def window_medians(values, lo, hi):  # pragma: no cover - compiled
    """Median of ``values[lo[w]:hi[w]]`` for every window ``w`` (non-empty windows)."""
    out = np.empty(lo.shape[0])
    for w in range(lo.shape[0]):
        out[w] = np.median(values[lo[w]:hi[w]])
    return out
