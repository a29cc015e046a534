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
