"""Compiled (numba) image kernels."""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic


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


@intrinsic
def _load(typingctx, arr, idx):  # pragma: no cover - compiled
    """``arr[idx]`` for a C-contiguous 1-D array and an int32 index known to be in bounds.

    A plain load: numba's own indexing adds negative-index wrap-around
    code to every access, which doubles the instruction count of the
    table-filling loop.
    """
    sig = types.float32(arr, idx)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.load(builder.gep(ary.data, [args[1]], inbounds=True))

    return sig, codegen


@intrinsic
def _store(typingctx, arr, idx, val):  # pragma: no cover - compiled
    """``arr[idx] = val`` for a C-contiguous 1-D float32 array and an index known to be in bounds."""
    sig = types.void(arr, idx, val)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        builder.store(args[2], builder.gep(ary.data, [args[1]], inbounds=True))
        return context.get_dummy_value()

    return sig, codegen


# fast math without reassociation: the float32 sums keep their order, as in the numpy twin
_MATH = {"nnan", "ninf", "nsz", "arcp", "afn", "contract"}


@njit(cache=True, parallel=True, fastmath=_MATH, error_model="numpy")
def backproject_lines(views, matrices, weights, phases, s_min, span, starts, out):  # pragma: no cover - compiled
    """Accumulate every view into a slab of voxels through per-row line tables.

    For view ``j`` and voxel row ``iy`` every voxel ``(ix, iy, k)`` projects
    onto one line of the raw view, ``pos = m[:, 3] + iy m[:, 1] + s m[:, 0]``
    with ``s = ix + ratio_j k``.  The line is sampled (bilinear, zero
    outside the view) at ``s = s_min + q / P`` into a table stored
    phase-major, ``table[q % P, q // P]``, so that the voxels of one z plane
    read ``P``-strided entries as one contiguous run: ``table[o % P, o // P
    + ix]`` with ``o = round((ratio_j k - s_min) P)``, which starts at
    ``starts[j, k] = (o % P) L + o // P`` in the flat table.  Each voxel thus receives one
    bilinear sample per view, at a position rounded to the nearest
    ``1 / P`` of the line step.  Within one pixel cell the bilinear value
    along the line is a quadratic in ``q``; the table is filled cell by
    cell from that quadratic (float64), four pixel loads per cell.

    Parameters
    ----------
    views : float32 (n_views, ny + 3, nx + 3)
        Filtered views with one zero row/column before and two after.
    matrices : float64 (n_views, 2, 4)
        Voxel index ``(ix, iy, iz, 1)`` -> padded view index position ``(col, row)``.
    weights : float64 (n_views,)
    phases, span : int64 (n_views,)
        Table phases ``P`` and entries per phase ``L``.
    s_min : float64 (n_views,)
        Line parameter of the first table entry.
    starts : int64 (n_views, nz)
        Flat table index of voxel ``ix = 0`` per view and z plane.
    out : float32 (nz, ny_block, nx)
        Accumulated into.
    """
    n = views.shape[0]
    nyp, nxp = views.shape[1], views.shape[2]
    nzb, nyb, nxb = out.shape
    flat_views = views.reshape(n, nyp * nxp)
    maxsize = 0
    for j in range(n):
        maxsize = max(maxsize, phases[j] * span[j])
    nxi = np.int32(nxp)
    for iy in prange(nyb):
        acc = np.zeros((nzb, nxb), dtype=np.float32)  # contiguous: out[:, iy] has a power-of-two stride
        buf = np.empty(maxsize, dtype=np.float32)
        for j in range(n):
            m = matrices[j]
            p_j = phases[j]
            span_j = span[j]
            nq = p_j * span_j
            buf[:nq] = 0.0  # the (P, L) table, flat
            flat = flat_views[j]
            w = np.float32(weights[j])
            c0 = m[0, 1] * iy + m[0, 3] + m[0, 0] * s_min[j]
            r0 = m[1, 1] * iy + m[1, 3] + m[1, 0] * s_min[j]
            dc = m[0, 0] / p_j
            dr = m[1, 0] / p_j
            lo, hi = _clip_range(c0, dc, nxp - 1.0, 0.0, float(nq))
            lo, hi = _clip_range(r0, dr, nyp - 1.0, lo, hi)
            q0 = min(nq, max(0, int(np.ceil(lo))))
            q1 = max(q0, min(nq, int(np.floor(hi)) + 1))
            # runs of samples inside one pixel cell: there the bilinear value is a quadratic in q
            phi = q0 % p_j
            i = q0 // p_j
            pos = phi * span_j + i  # table[phi, i] in buf
            inv_dc = 1.0 / dc if dc != 0.0 else 0.0
            inv_dr = 1.0 / dr if dr != 0.0 else 0.0
            q = q0
            while q < q1:
                c = c0 + dc * q
                r = r0 + dr * q
                ci = np.int32(c)
                ri = np.int32(r)
                u0 = c - ci
                v0 = r - ri
                # last sample of this cell (at least one sample per run)
                q_end = q1
                if dc > 0.0:
                    q_end = min(q_end, q + int((1.0 - u0) * inv_dc) + 1)
                elif dc < 0.0:
                    q_end = min(q_end, q + int(u0 * -inv_dc) + 1)
                if dr > 0.0:
                    q_end = min(q_end, q + int((1.0 - v0) * inv_dr) + 1)
                elif dr < 0.0:
                    q_end = min(q_end, q + int(v0 * -inv_dr) + 1)
                p = np.int32(ri * nxi + ci)
                a = _load(flat, p)
                b = _load(flat, np.int32(p + 1))
                d = _load(flat, np.int32(p + nxi))
                e = _load(flat, np.int32(p + nxi + 1))
                va = w * a
                vc = w * (b - a)
                vr = w * (d - a)
                vcr = w * (a - b - d + e)
                # f(t) = f0 + t (f1 + t f2), t = q - q_start: no loop-carried sums
                f0 = va + vc * u0 + vr * v0 + vcr * u0 * v0
                f2 = vcr * dc * dr
                f1 = vc * dc + vr * dr + vcr * (u0 * dr + v0 * dc)
                for t in range(q_end - q):
                    tf = np.float64(t)
                    _store(buf, pos, np.float32(f0 + tf * (f1 + tf * f2)))
                    pos += span_j
                    phi += 1
                    if phi == p_j:
                        phi = 0
                        i += 1
                        pos = i
                q = q_end
            for k in range(nzb):
                st = starts[j, k]
                trow = buf[st:st + nxb]
                row = acc[k]
                for ix in range(nxb):
                    row[ix] += trow[ix]
        for k in range(nzb):
            orow = out[k, iy]
            arow = acc[k]
            for ix in range(nxb):
                orow[ix] += arow[ix]


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


@njit(cache=True)
def _ray_range(s, c, sn, cx, cz, ct, nx, nz, n_t):  # pragma: no cover - compiled
    """Steps ``k`` of the ray at ``s`` (``x = s c - t sn + cx``, ``z = s sn + t c + cz``,
    ``t = k - ct``) that can touch the slice's pixels (``-1 < x < nx``, ``-1 < z < nz``)."""
    lo, hi = -1e30, 1e30
    # x(t) = s c + cx - t sn must lie in (-1, nx)
    if abs(sn) > 1e-12:
        a = (s * c + cx + 1.0) / sn
        b = (s * c + cx - nx) / sn
        lo, hi = max(lo, min(a, b)), min(hi, max(a, b))
    elif not (-1.0 < s * c + cx < nx):
        return 0, 0
    if abs(c) > 1e-12:
        a = (-1.0 - s * sn - cz) / c
        b = (nz - s * sn - cz) / c
        lo, hi = max(lo, min(a, b)), min(hi, max(a, b))
    elif not (-1.0 < s * sn + cz < nz):
        return 0, 0
    k_lo = max(0, int(np.floor(lo + ct)))
    k_hi = min(n_t, int(np.ceil(hi + ct)) + 1)
    return k_lo, max(k_lo, k_hi)


@njit(cache=True, parallel=True)
def project_slices(vol, cos_t, sin_t, n_s, out):  # pragma: no cover - compiled
    """Ray-driven bilinear projections of slices ``vol[band, z, x]`` into ``out[band, view, s]``.

    A point ``(x, z)`` (centred at ``(n - 1) / 2``) lands at
    ``s = x cos + z sin``; each ray is sampled at unit steps ``t`` along
    ``(-sin, cos)`` and the bilinear samples are summed (0 outside).
    """
    nb, nz, nx = vol.shape
    nv = cos_t.shape[0]
    n_t = int(np.ceil(np.sqrt(nz * nz + nx * nx)))
    cz, cx, cs, ct = (nz - 1) / 2.0, (nx - 1) / 2.0, (n_s - 1) / 2.0, (n_t - 1) / 2.0
    for job in prange(nb * nv):
        b = job // nv
        j = job % nv
        c = cos_t[j]
        sn = sin_t[j]
        for i in range(n_s):
            s = i - cs
            acc = 0.0
            k_lo, k_hi = _ray_range(s, c, sn, cx, cz, ct, nx, nz, n_t)
            for k in range(k_lo, k_hi):
                t = k - ct
                x = s * c - t * sn + cx
                z = s * sn + t * c + cz
                x0 = int(np.floor(x))
                z0 = int(np.floor(z))
                if x0 < -1 or x0 >= nx or z0 < -1 or z0 >= nz:
                    continue
                fx = x - x0
                fz = z - z0
                if z0 >= 0:
                    if x0 >= 0:
                        acc += (1.0 - fz) * (1.0 - fx) * vol[b, z0, x0]
                    if x0 + 1 < nx:
                        acc += (1.0 - fz) * fx * vol[b, z0, x0 + 1]
                if z0 + 1 < nz:
                    if x0 >= 0:
                        acc += fz * (1.0 - fx) * vol[b, z0 + 1, x0]
                    if x0 + 1 < nx:
                        acc += fz * fx * vol[b, z0 + 1, x0 + 1]
            out[b, j, i] = acc


@njit(cache=True, parallel=True)
def backproject_slices(sino, cos_t, sin_t, nz, nx, out):  # pragma: no cover - compiled
    """Unfiltered back-projection of ``sino[band, view, s]`` onto ``out[band, z, x]``
    (linear interpolation along ``s``, 0 outside; same geometry as :func:`project_slices`)."""
    nb, nv, n_s = sino.shape
    cz, cx, cs = (nz - 1) / 2.0, (nx - 1) / 2.0, (n_s - 1) / 2.0
    for job in prange(nb * nz):
        b = job // nz
        iz = job % nz
        z = iz - cz
        for ix in range(nx):
            x = ix - cx
            acc = 0.0
            for j in range(nv):
                s = x * cos_t[j] + z * sin_t[j] + cs
                i0 = int(np.floor(s))
                f = s - i0
                if i0 >= 0 and i0 < n_s:
                    acc += (1.0 - f) * sino[b, j, i0]
                if i0 + 1 >= 0 and i0 + 1 < n_s:
                    acc += f * sino[b, j, i0 + 1]
            out[b, iz, ix] = acc


@njit(cache=True, parallel=True)
def own_reprojection(sino, cos_t, sin_t, nz, nx, out):  # pragma: no cover - compiled
    """``out[band, view] = project(backproject(sino[band, view] alone))`` at the view's own angle.

    What :func:`project_slices` of :func:`backproject_slices` gives for a
    single row, without forming the image: each bilinear corner of a ray
    sample reads the row at that corner's own ``s``.  Subtracting it from a
    re-projection leaves the view out of the reconstruction it is compared with.
    """
    nb, nv, n_s = sino.shape
    n_t = int(np.ceil(np.sqrt(nz * nz + nx * nx)))
    cz, cx, cs, ct = (nz - 1) / 2.0, (nx - 1) / 2.0, (n_s - 1) / 2.0, (n_t - 1) / 2.0
    for job in prange(nb * nv):
        b = job // nv
        j = job % nv
        c = cos_t[j]
        sn = sin_t[j]
        for i in range(n_s):
            s = i - cs
            acc = 0.0
            k_lo, k_hi = _ray_range(s, c, sn, cx, cz, ct, nx, nz, n_t)
            for k in range(k_lo, k_hi):
                t = k - ct
                x = s * c - t * sn + cx
                z = s * sn + t * c + cz
                x0 = int(np.floor(x))
                z0 = int(np.floor(z))
                if x0 < -1 or x0 >= nx or z0 < -1 or z0 >= nz:
                    continue
                fx = x - x0
                fz = z - z0
                for dz in range(2):
                    zz = z0 + dz
                    if zz < 0 or zz >= nz:
                        continue
                    wz = fz if dz else 1.0 - fz
                    for dx in range(2):
                        xx = x0 + dx
                        if xx < 0 or xx >= nx:
                            continue
                        w = wz * (fx if dx else 1.0 - fx)
                        q = (xx - cx) * c + (zz - cz) * sn + cs
                        q0 = int(np.floor(q))
                        f = q - q0
                        val = 0.0
                        if q0 >= 0 and q0 < n_s:
                            val += (1.0 - f) * sino[b, j, q0]
                        if q0 + 1 >= 0 and q0 + 1 < n_s:
                            val += f * sino[b, j, q0 + 1]
                        acc += w * val
            out[b, j, i] = acc


@njit(cache=True, parallel=True, fastmath=_MATH, error_model="numpy")
def backproject_voxels(views, matrices, weights, out):  # pragma: no cover - compiled
    """Accumulate every view into a slab of voxels, each sampled at its exact position.

    For geometries whose voxel x and z steps are not parallel in a view (a
    section flattened about x, the skew of a distortion model): each voxel
    ``(ix, iy, k)`` takes the bilinear value at ``m @ (ix, iy, k, 1)``, zero
    outside ``[0, n - 1)`` in either direction (as ``backproject_exact``).

    Parameters
    ----------
    views : float32 (n_views, ny + 3, nx + 3)
        Filtered, padded views.
    matrices : float64 (n_views, 2, 4)
        Voxel index -> padded view index position ``(col, row)``.
    weights : float64 (n_views,)
    out : float32 (nz, ny_block, nx)
        Accumulated into.
    """
    n = views.shape[0]
    nyp, nxp = views.shape[1], views.shape[2]
    nzb, nyb, nxb = out.shape
    nxi = np.int32(nxp)
    for iy in prange(nyb):
        acc = np.zeros((nzb, nxb), dtype=np.float32)
        for j in range(n):
            m = matrices[j]
            w = np.float32(weights[j])
            flat = views[j].reshape(nyp * nxp)
            dc = m[0, 0]
            dr = m[1, 0]
            for k in range(nzb):
                c0 = m[0, 1] * iy + m[0, 2] * k + m[0, 3]
                r0 = m[1, 1] * iy + m[1, 2] * k + m[1, 3]
                # the ix whose sample lies inside [0, n - 1) in both directions: no tests in the loop
                lo, hi = _clip_range(c0, dc, nxp - 1.0, 0.0, float(nxb - 1))
                lo, hi = _clip_range(r0, dr, nyp - 1.0, lo, hi)
                i0 = max(0, int(np.ceil(lo)))
                i1 = min(nxb, int(np.floor(hi)) + 1)
                row = acc[k]
                for ix in range(i0, i1):
                    c = c0 + dc * ix
                    r = r0 + dr * ix
                    if c < 0.0 or r < 0.0:  # rounding at the range's ends
                        continue
                    ci = np.int32(c)
                    ri = np.int32(r)
                    u = c - ci
                    v = r - ri
                    p = np.int32(ri * nxi + ci)
                    a = _load(flat, p)
                    b = _load(flat, np.int32(p + 1))
                    d = _load(flat, np.int32(p + nxi))
                    e = _load(flat, np.int32(p + nxi + 1))
                    row[ix] += w * np.float32(a + u * (b - a) + v * (d - a) + u * v * (a - b - d + e))
        for k in range(nzb):
            orow = out[k, iy]
            arow = acc[k]
            for ix in range(nxb):
                orow[ix] += arow[ix]
