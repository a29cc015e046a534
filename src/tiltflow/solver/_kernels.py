"""Compiled (numba) kernels of the bundle problem.

:func:`linearize` evaluates the weighted residuals of every observation,
their derivatives, and accumulates ``J^T J`` and ``J^T r`` straight into
the Schur block layout in one pass (the pure-numpy equivalent is
``projection.project_with_jacobian`` + ``SchurStructure.assemble``; the
tests check that both agree).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, fastmath=False)
def cost(points, views, marker_index, view_index, xy, sqrt_w, cx, cy):  # pragma: no cover - compiled
    """``0.5 * sum(w * |pred - obs|^2)``."""
    total = 0.0
    for k in range(marker_index.shape[0]):
        i = marker_index[k]
        j = view_index[k]
        ct = math.cos(views[j, 0])
        st = math.sin(views[j, 0])
        ca = math.cos(views[j, 1])
        sa = math.sin(views[j, 1])
        s = views[j, 2]
        u = points[i, 0] * ct + points[i, 2] * st
        v = points[i, 1]
        rx = (s * (ca * u - sa * v) + views[j, 3] + cx - xy[k, 0]) * sqrt_w[k]
        ry = (s * (sa * u + ca * v) + views[j, 4] + cy - xy[k, 1]) * sqrt_w[k]
        total += rx * rx + ry * ry
    return 0.5 * total


@njit(cache=True, fastmath=False)
def linearize(points, views, marker_index, view_index, xy, sqrt_w, cx, cy,
              eliminate_points, e_free, kpos_view, kpos_point,
              hee, hek, hkk, ge, gk):  # pragma: no cover - compiled
    """Accumulate the normal equations; returns the cost.

    ``hee (n_groups, b, b)``, ``hek (n_groups, b, m)``, ``hkk (m, m)``,
    ``ge (n_groups, b)``, ``gk (m,)`` must be zero on entry.
    """
    jac = np.empty((2, 8))
    kcol = np.empty(8, dtype=np.int64)
    ecol = np.empty(8, dtype=np.int64)
    total = 0.0
    for k in range(marker_index.shape[0]):
        i = marker_index[k]
        j = view_index[k]
        w = sqrt_w[k]
        th = views[j, 0]
        ct = math.cos(th)
        st = math.sin(th)
        ca = math.cos(views[j, 1])
        sa = math.sin(views[j, 1])
        s = views[j, 2]
        x = points[i, 0]
        y = points[i, 1]
        z = points[i, 2]
        u = x * ct + z * st
        rux = ca * u - sa * y
        ruy = sa * u + ca * y
        rx = (s * rux + views[j, 3] + cx - xy[k, 0]) * w
        ry = (s * ruy + views[j, 4] + cy - xy[k, 1]) * w
        total += rx * rx + ry * ry
        dudt = -x * st + z * ct
        jac[0, 0] = s * ca * dudt * w
        jac[1, 0] = s * sa * dudt * w
        jac[0, 1] = -s * ruy * w
        jac[1, 1] = s * rux * w
        jac[0, 2] = rux * w
        jac[1, 2] = ruy * w
        jac[0, 3] = w
        jac[1, 3] = 0.0
        jac[0, 4] = 0.0
        jac[1, 4] = w
        jac[0, 5] = s * ca * ct * w
        jac[1, 5] = s * sa * ct * w
        jac[0, 6] = -s * sa * w
        jac[1, 6] = s * ca * w
        jac[0, 7] = s * ca * st * w
        jac[1, 7] = s * sa * st * w
        if eliminate_points:
            g = i
            for c in range(5):
                kcol[c] = kpos_view[j, c]
                ecol[c] = -1
            for c in range(3):
                kcol[5 + c] = -1
                ecol[5 + c] = c if e_free[g, c] else -1
        else:
            g = j
            for c in range(5):
                kcol[c] = kpos_view[j, c]
                ecol[c] = c if e_free[g, c] else -1
            for c in range(3):
                kcol[5 + c] = kpos_point[i, c]
                ecol[5 + c] = -1
        for a in range(8):
            ja0 = jac[0, a]
            ja1 = jac[1, a]
            ea = ecol[a]
            ka = kcol[a]
            if ea >= 0:
                ge[g, ea] += ja0 * rx + ja1 * ry
                for c in range(8):
                    prod = ja0 * jac[0, c] + ja1 * jac[1, c]
                    if ecol[c] >= 0:
                        hee[g, ea, ecol[c]] += prod
                    elif kcol[c] >= 0:
                        hek[g, ea, kcol[c]] += prod
            elif ka >= 0:
                gk[ka] += ja0 * rx + ja1 * ry
                for c in range(8):
                    if kcol[c] >= 0:
                        hkk[ka, kcol[c]] += ja0 * jac[0, c] + ja1 * jac[1, c]
    return 0.5 * total
