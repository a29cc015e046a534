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
    for k in prange(nzb):
        iz = z0 + k
        acc = np.zeros(nxb, dtype=np.float32)
        for iy in range(nyb):
            acc[:] = 0.0
            for j in range(n_views):
                m = matrices[j]
                w = np.float32(weights[j])
                img = views[j]
                c0 = m[0, 1] * iy + m[0, 2] * iz + m[0, 3]
                r0 = m[1, 1] * iy + m[1, 2] * iz + m[1, 3]
                dc = m[0, 0]
                dr = m[1, 0]
                # the ix range whose samples lie inside [0, nx - 1) x [0, ny - 1): no branch in the loop
                lo, hi = 0.0, float(nxb)
                lo, hi = _clip_range(c0, dc, nx - 1.0, lo, hi)
                lo, hi = _clip_range(r0, dr, ny - 1.0, lo, hi)
                i0 = max(0, int(np.ceil(lo)))
                i1 = min(nxb, int(np.floor(hi)) + 1)
                for ix in range(i0, i1):
                    c = c0 + dc * ix
                    r = r0 + dr * ix
                    c_i = min(max(int(c), 0), nx - 2)
                    r_i = min(max(int(r), 0), ny - 2)
                    fc = np.float32(c - c_i)
                    fr = np.float32(r - r_i)
                    top = img[r_i, c_i] + fc * (img[r_i, c_i + 1] - img[r_i, c_i])
                    bot = img[r_i + 1, c_i] + fc * (img[r_i + 1, c_i + 1] - img[r_i + 1, c_i])
                    acc[ix] += w * (top + fr * (bot - top))
            for ix in range(nxb):
                out[k, iy, ix] += acc[ix]


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
