"""Compiled (numba) image kernels."""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def affine_bilinear(img, m, offset, out):  # pragma: no cover - compiled
    """``out[o] = img[m @ o + offset]`` with bilinear interpolation, 0 outside.

    Same convention as ``scipy.ndimage.affine_transform(img, m, offset,
    order=1, mode="constant", cval=0)`` on (row, column) indices.
    """
    ny, nx = img.shape
    oy, ox = out.shape
    for r in prange(oy):
        for c in range(ox):
            y = m[0, 0] * r + m[0, 1] * c + offset[0]
            x = m[1, 0] * r + m[1, 1] * c + offset[1]
            y0 = int(np.floor(y))
            x0 = int(np.floor(x))
            fy = y - y0
            fx = x - x0
            acc = 0.0
            for dy in range(2):
                yy = y0 + dy
                if yy < 0 or yy >= ny:
                    continue
                wy = fy if dy else 1.0 - fy
                for dx in range(2):
                    xx = x0 + dx
                    if xx < 0 or xx >= nx:
                        continue
                    wx = fx if dx else 1.0 - fx
                    acc += wy * wx * img[yy, xx]
            out[r, c] = acc


@njit(cache=True, parallel=True, fastmath=True, error_model="numpy")
def backproject(views, matrices, weights, z0, out):  # pragma: no cover - compiled
    """Accumulate bilinear samples of every view into a block of voxels.

    Parameters
    ----------
    views : float32 (n_views, ny, nx)
        Filtered views.
    matrices : float64 (n_views, 2, 4)
        Voxel index ``(ix, iy, iz, 1)`` -> view position ``(col, row)``
        (array index coordinates, pixel centres at integers).
    weights : float64 (n_views,)
    z0 : int
        Index of the block's first z plane in the full volume.
    out : float32 (nz_block, ny_block, nx)
        Accumulated into.
    """
    n_views, ny, nx = views.shape
    nzb, nyb, nxb = out.shape
    flat_views = views.reshape(n_views, ny * nx)
    for k in prange(nzb):
        iz = z0 + k
        # per-thread scratch: the index/fraction pass vectorises, the gather pass stays simple
        idx = np.empty(nxb, dtype=np.int32)
        fcs = np.empty(nxb, dtype=np.float32)
        frs = np.empty(nxb, dtype=np.float32)
        for j in range(n_views):
            m = matrices[j]
            w = np.float32(weights[j])
            flat = flat_views[j]
            for iy in range(nyb):
                row = out[k, iy]
                c0 = m[0, 1] * iy + m[0, 2] * iz + m[0, 3]
                r0 = m[1, 1] * iy + m[1, 2] * iz + m[1, 3]
                dc = m[0, 0]
                dr = m[1, 0]
                # the ix range whose samples lie inside [0, nx - 1) x [0, ny - 1)
                lo, hi = 0.0, float(nxb)
                lo, hi = _clip_range(c0, dc, nx - 1.0, lo, hi)
                lo, hi = _clip_range(r0, dr, ny - 1.0, lo, hi)
                i0 = max(0, int(np.ceil(lo)))
                i1 = min(nxb, int(np.floor(hi)) + 1)
                c0f = np.float32(c0)
                r0f = np.float32(r0)
                dcf = np.float32(dc)
                drf = np.float32(dr)
                for ix in range(i0, i1):
                    c = c0f + dcf * np.float32(ix)
                    r = r0f + drf * np.float32(ix)
                    c_i = min(max(np.int32(c), np.int32(0)), np.int32(nx - 2))
                    r_i = min(max(np.int32(r), np.int32(0)), np.int32(ny - 2))
                    fcs[ix] = c - np.float32(c_i)
                    frs[ix] = r - np.float32(r_i)
                    idx[ix] = r_i * np.int32(nx) + c_i
                for ix in range(i0, i1):
                    p = idx[ix]
                    a = flat[p]
                    top = a + fcs[ix] * (flat[p + 1] - a)
                    b = flat[p + nx]
                    bot = b + fcs[ix] * (flat[p + nx + 1] - b)
                    row[ix] += w * (top + frs[ix] * (bot - top))


@njit(cache=True, inline="always")
def _clip_range(p0, dp, limit, lo, hi):  # pragma: no cover - compiled
    """Narrow ``[lo, hi]`` to the ix with ``0 <= p0 + dp * ix < limit``."""
    if dp == 0.0:
        if p0 < 0.0 or p0 >= limit:
            return 1.0, 0.0
        return lo, hi
    a = (0.0 - p0) / dp
    b = (limit - 1e-6 - p0) / dp
    if a > b:
        a, b = b, a
    return max(lo, a), min(hi, b)
