"""Weighted back-projection from the raw stack, one interpolation per voxel and view.

Each raw view is (optionally) binned by averaging, its mean removed, its
edges tapered to zero (no streaks from view borders), zero-padded and
filtered in 2D Fourier space with a ramp along the direction perpendicular
to the tilt axis *in that raw view* (no resampling), times a radial
low-pass (IMOD's RADIAL cut-off and fall-off) and, optionally, the filter
that makes one back-projection behave like ``n`` SIRT/Landweber
iterations.  Every voxel then receives one bilinear sample of every
filtered raw view, at the position the alignment (``.xf`` and ``.tlt``)
projects it to: the view's transform, the tilt and the binning are
composed into one 2x4 matrix per view.  No aligned stack is made.

How the samples are taken (the speed): for one view and one voxel row y,
all voxels project onto one straight line of the raw view (the tilt is
about y), at line parameter ``s = ix + tan(t) iz``.  The line is sampled
bilinearly every ``1 / P`` step, ``P = ceil(oversampling x step length in
pixels)``, and each voxel takes the table entry nearest to its own ``s``;
the table is stored phase-major so that one z plane reads one contiguous
run (vectorised adds, no gathers).  A voxel's sample is therefore the
exact bilinear value at a position moved by at most ``1 / (2
oversampling)`` binned pixel along the line (the default 16: 0.031 px),
like the fixed-point positions of GPU texture sampling.  ``kernel="exact"``
samples every voxel at its exact position (slow; the reference).

The volume is built in slabs along y, so memory is a few slabs plus the
filtered views.

Frames: a voxel at ``(x, y, z)`` (unbinned pixels, origin on the tilt axis
at the centre of the aligned images, as in the ``.xyz`` file) is seen in
the aligned view at ``(x cos t + z sin t, y) + centre`` and in the raw view
at ``centre + A^-1 ((u, v) - D)`` for the view's ``.xf`` ``(A, D)``.
Tomogram arrays are ``data[z, y, x]``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time

import numpy as np
import scipy.fft
import scipy.ndimage

from .imaging import bin_image, taper_window
from .options import ReconOptions
from .projection import invert_xf

log = logging.getLogger(__name__)


def volume_shape(image_shape, options):
    """``(nz, ny, nx)`` of the tomogram for raw views of ``image_shape`` (ny, nx)."""
    b = options.binning
    return (max(1, int(options.thickness_px) // b), image_shape[0] // b, image_shape[1] // b)


def grid_matrix(image_shape, options, placement=None):
    """Voxel index ``(ix, iy, iz, 1)`` -> frame position ``(x, y, z)``, unbinned pixels; shape (3, 4).

    Voxel centres in tomogram coordinates: ``x = (ix + 0.5) b - nx / 2``
    (and likewise y), ``z = (iz + 0.5 - nz / 2) b + z_offset``.  Without
    ``placement`` these are the frame positions; with it (a (3, 4) affine
    map tomogram coordinates -> frame, :func:`section_placement`) the
    volume follows the section.
    """
    b = options.binning
    nz, _, _ = volume_shape(image_shape, options)
    ny, nx = image_shape
    g = np.zeros((3, 4))
    g[0, 0] = g[1, 1] = g[2, 2] = b
    g[0, 3] = 0.5 * b - nx / 2.0
    g[1, 3] = 0.5 * b - ny / 2.0
    g[2, 3] = (0.5 - nz / 2.0) * b + options.z_offset_px
    if placement is not None:
        placement = np.asarray(placement, dtype=float)
        g = placement[:, :3] @ g
        g[:, 3] += placement[:, 3]
    return g


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where the tomogram sits in the alignment frame (IMOD's positioning step).

    Attributes
    ----------
    matrix : ndarray (3, 4)
        Tomogram coordinates ``(x, y, z, 1)`` -> frame ``(x, y, z)``, unbinned
        pixels: the columns of ``matrix[:, :3]`` are the tomogram's axes (z
        along the section normal), ``matrix[:, 3]`` the section's middle
        on the tilt axis.
    tilt_offset_deg : float
        The rotation about y it applies (IMOD's tilt-angle offset, as the
        surface analysis reports it).
    x_axis_tilt_deg : float
        The rotation about x (IMOD's X-axis tilt).
    z_shift_px : float
        Frame z of the section's middle moved to the tomogram's z = 0 is
        ``-z_shift_px`` (IMOD's z shift, as the surface analysis reports it).
    """

    matrix: np.ndarray
    tilt_offset_deg: float
    x_axis_tilt_deg: float
    z_shift_px: float

    def to_dict(self):
        return {"tilt_offset_deg": self.tilt_offset_deg, "x_axis_tilt_deg": self.x_axis_tilt_deg,
                "z_shift_px": self.z_shift_px, "matrix": self.matrix.tolist()}

    def to_tomogram(self, points_xyz_px):
        """Frame positions ``(n, 3)`` -> tomogram coordinates ``(n, 3)`` (unbinned pixels, centred)."""
        r, c = self.matrix[:, :3], self.matrix[:, 3]
        return (np.asarray(points_xyz_px, dtype=float) - c) @ r


def section_placement(slope_x, slope_y, z_shift_px):
    """The :class:`Placement` that makes a section level and centres it.

    The section's middle is the plane ``z = -z_shift_px + slope_x x +
    slope_y y`` of the frame (the surface analysis' shared slopes and the
    z shift that centres it, :class:`tiltflow.surfaces.SurfaceFit`).  The
    tomogram's z axis is the plane's normal, its x axis the plane's
    direction over frame x, so that voxels at tomogram z = 0 lie on the
    plane.
    """
    normal = np.array([-slope_x, -slope_y, 1.0])
    z_axis = normal / np.linalg.norm(normal)
    x_axis = np.array([1.0, 0.0, slope_x]) / np.hypot(1.0, slope_x)  # in the plane: normal . x_axis = 0
    y_axis = np.cross(z_axis, x_axis)
    matrix = np.zeros((3, 4))
    matrix[:, 0], matrix[:, 1], matrix[:, 2] = x_axis, y_axis, z_axis
    matrix[2, 3] = -z_shift_px
    return Placement(matrix, float(-np.degrees(np.arctan(slope_x))), float(-np.degrees(np.arctan(slope_y))),
                     float(z_shift_px))


def view_matrices(xf, tilt_deg, image_shape, grid, binning, zfac=None):
    """Per view: voxel index -> binned raw-view array position (col, row); shape (n, 2, 4).

    Parameters
    ----------
    xf : ndarray (n, 6)
        Raw -> aligned IMOD transforms.
    tilt_deg : ndarray (n,)
    image_shape : (ny, nx)
        Unbinned raw view size.
    grid : ndarray (3, 4)
        Voxel index -> frame ``(x, y, z)`` in unbinned pixels.
    binning : int
    zfac : ndarray (n, 2), optional
        IMOD ``.zfac`` factors: a voxel lands in the aligned view at
        ``(x cos t + z sin t + fx z, y + fy z)``, the in-plane stretch of the
        section folded into the same one interpolation.
    """
    ny, nx = image_shape
    c = np.array([nx / 2.0, ny / 2.0])
    t = np.deg2rad(tilt_deg)
    out = np.empty((len(t), 2, 4))
    inverse = invert_xf(xf)
    fz = np.zeros((len(t), 2)) if zfac is None else np.asarray(zfac, dtype=float)
    for j in range(len(t)):
        proj = np.array([[np.cos(t[j]), 0.0, np.sin(t[j]) + fz[j, 0]], [0.0, 1.0, fz[j, 1]]]) @ grid  # (u, v), (2, 4)
        a_inv = inverse[j, :4].reshape(2, 2)
        raw = a_inv @ proj
        raw[:, 3] += c + inverse[j, 4:]  # raw = c + A^-1 ((u, v) - D)
        out[j] = raw / binning
        out[j, :, 3] -= 0.5  # IMOD coordinate -> array index (pixel centres at i + 0.5)
    return out


#: Views are zero-padded to this many times their size before the 2D filter (the ramp's
#: wrap-around).  Against 4x padding, on simulated views: 2x differs by 0.036 % RMS,
#: 1.5x by 0.073 %, 1.25x by 0.14 % (views are tapered and mean-removed first).
FILTER_PADDING = 1.5


def filter_view(img, axis_dir_xy, options):
    """Mean-removed, edge-tapered, ramp-filtered view (float32, same shape).

    Parameters
    ----------
    img : ndarray (ny, nx)
        Binned raw view.
    axis_dir_xy : (2,)
        Unit vector of the direction *perpendicular* to the tilt axis in
        this raw view (the ramp acts along it), in (x, y).
    """
    ny, nx = img.shape
    w = taper_window(img.shape, options.taper_fraction)
    x = (img - (img * w).sum() / w.sum()) * w
    py = scipy.fft.next_fast_len(int(np.ceil(FILTER_PADDING * ny)))
    px = scipy.fft.next_fast_len(int(np.ceil(FILTER_PADDING * nx)), real=True)
    f = scipy.fft.rfft2(x.astype(np.float32), s=(py, px), workers=-1)  # complex64
    fx, fy, lowpass = _frequency_grids(py, px, options.lowpass_cutoff, options.lowpass_sigma)
    k_perp = np.abs(fx * np.float32(axis_dir_xy[0]) + fy * np.float32(axis_dir_xy[1]))
    if options.sirt_iterations:
        # Landweber after n iterations with step a: |k| (1 - (1 - a / |k|)^n), a = the lowest frequency
        a = 1.0 / max(px, py)
        safe = np.maximum(k_perp, a)
        k_perp = np.where(k_perp > 0, safe * (1.0 - (1.0 - a / safe) ** options.sirt_iterations), 0.0)
    f *= (k_perp * lowpass).astype(np.float32)
    return scipy.fft.irfft2(f, s=(py, px), workers=-1)[:ny, :nx].astype(np.float32)


@functools.lru_cache(maxsize=4)
def _frequency_grids(py, px, cutoff, sigma):
    """``fx`` (1, px // 2 + 1), ``fy`` (py, 1) in cycles/pixel and the radial low-pass (py, px // 2 + 1), float32."""
    fy = np.fft.fftfreq(py)[:, None]
    fx = np.fft.rfftfreq(px)[None, :]
    r = np.hypot(fx, fy)
    lowpass = np.where(r <= cutoff, 1.0, np.exp(-((r - cutoff) ** 2) / (2 * sigma**2)))
    out = fx.astype(np.float32), fy.astype(np.float32), lowpass.astype(np.float32)
    for a in out:
        a.flags.writeable = False
    return out


def perpendicular_direction(xf_row):
    """Direction across the tilt axis in the raw view: ``A^-1 (1, 0)``, normalised."""
    a_inv = invert_xf(np.asarray(xf_row, dtype=float)[None])[0, :4]
    d = np.array([a_inv[0], a_inv[2]])  # first column of A^-1
    return d / np.hypot(*d)


def tilt_weights(tilt_deg):
    """Angular interval of each view (radians): half the gaps to its neighbours."""
    t = np.deg2rad(np.asarray(tilt_deg, dtype=float))
    order = np.argsort(t)
    ts = t[order]
    gaps = np.diff(ts)
    w = np.empty_like(ts)
    if len(ts) == 1:
        w[:] = np.pi
    else:
        w[0], w[-1] = gaps[0], gaps[-1]
        w[1:-1] = 0.5 * (gaps[:-1] + gaps[1:])
    out = np.empty_like(w)
    out[order] = w
    return out


@dataclasses.dataclass(frozen=True)
class LineTables:
    """How each view's projection lines are tabulated (see the module docstring).

    Attributes
    ----------
    ratio : ndarray (n_views,)
        ``tan(t)``: the line parameter is ``s = ix + ratio iz``.
    phases : ndarray of int64 (n_views,)
        Table samples per unit of ``s`` (``P``).
    s_min : ndarray (n_views,)
        ``s`` of the first table entry.
    span : ndarray of int64 (n_views,)
        Entries per phase (``L``).
    offsets : ndarray of int64 (n_views, nz)
        ``round((ratio iz - s_min) P)``: the table entry of voxel ``ix = 0``
        in plane ``iz``; plane ``iz`` reads ``table[o % P, o // P + ix]``.
    starts : ndarray of int64 (n_views, nz)
        The same entry as an index into the flattened (P, L) table: ``(o % P) L + o // P``.
    """

    ratio: np.ndarray
    phases: np.ndarray
    s_min: np.ndarray
    span: np.ndarray
    offsets: np.ndarray
    starts: np.ndarray


def line_tables(matrices, nz, nx, oversampling):
    """Table layout for voxel blocks ``(nz, *, nx)`` seen through ``matrices`` (n, 2, 4).

    Raises ``ValueError`` when a view's x and z columns are not parallel
    (not a tilt about y) or the view is seen edge-on (|tilt| ~ 90 deg).
    """
    m0 = matrices[:, :, 0]
    norm2 = (m0**2).sum(axis=1)
    step = np.sqrt(norm2)
    bad = np.flatnonzero(step < 1e-3)
    if len(bad):
        raise ValueError(f"view {int(bad[0])}: the voxel x step projects to {step[bad[0]]:.2g} pixel "
                         "(tilt too close to 90 degrees to back-project)")
    ratio = (m0 * matrices[:, :, 2]).sum(axis=1) / norm2
    bad = np.flatnonzero(~on_lines(matrices))
    if len(bad):
        raise ValueError(f"view {int(bad[0])}: voxel x and z steps are not parallel in the view "
                         "(the geometry is not a tilt about y)")
    phases = np.maximum(1, np.ceil(oversampling * step - 1e-9)).astype(np.int64)
    zspan = ratio * (nz - 1)
    s_min = np.minimum(0.0, zspan)
    span = (np.floor(np.maximum(0.0, zspan) - s_min) + nx + 2).astype(np.int64)
    k = np.arange(nz)
    offsets = np.floor((ratio[:, None] * k[None, :] - s_min[:, None]) * phases[:, None] + 0.5).astype(np.int64)
    assert offsets.min() >= 0 and np.all(offsets.max(axis=1) // phases + nx <= span)
    starts = (offsets % phases[:, None]) * span[:, None] + offsets // phases[:, None]
    return LineTables(ratio, phases, s_min, span, offsets, starts)


def on_lines(matrices):
    """Per view: do the voxel x and z steps of ``matrices`` (n, 2, 4) project parallel (a tilt about y,
    so that a row of voxels falls on one line of the view, :func:`line_tables`)?"""
    m0, m2 = matrices[:, :, 0], matrices[:, :, 2]
    ratio = (m0 * m2).sum(axis=1) / np.maximum((m0**2).sum(axis=1), 1e-300)
    off_line = np.abs(m2 - ratio[:, None] * m0).max(axis=1)
    return off_line <= 1e-9 * (1 + np.abs(m2).max(axis=1))


def pad_views(n_views, shape):
    """Zeroed float32 array for filtered views with the kernels' border: 1 before, 2 after."""
    return np.zeros((n_views, shape[0] + 3, shape[1] + 3), dtype=np.float32)


def _sample(view, col, row):
    """Bilinear samples of a padded view at array positions, 0 where the kernel skips them
    (outside ``[0, n - 1)`` in either direction)."""
    nyp, nxp = view.shape
    inside = (col >= 0) & (row >= 0) & (col < nxp - 1) & (row < nyp - 1)
    vals = scipy.ndimage.map_coordinates(view, [row, col], order=1, mode="constant", cval=0.0)
    return np.where(inside, vals, 0.0)


def backproject_numpy(views, matrices, weights, tables, out):
    """Pure-numpy twin of the compiled kernel: the same line tables, float32 result.

    ``views`` padded as :func:`pad_views`; ``matrices`` in padded index
    coordinates; ``tables`` from :func:`line_tables`; ``out`` (nz, rows, nx)
    accumulated into.
    """
    nzb, nyb, nxb = out.shape
    acc = np.zeros((nyb, nzb, nxb), dtype=np.float32)
    iy = np.arange(nyb)[:, None]
    for j in range(len(views)):
        m, p_j, span = matrices[j], int(tables.phases[j]), int(tables.span[j])
        q = np.arange(p_j * span)[None, :]
        c = (m[0, 1] * iy + m[0, 3] + m[0, 0] * tables.s_min[j]) + (m[0, 0] / p_j) * q
        r = (m[1, 1] * iy + m[1, 3] + m[1, 0] * tables.s_min[j]) + (m[1, 0] / p_j) * q
        table = np.float32(weights[j]) * _sample(views[j], c.ravel(), r.ravel()).astype(np.float32)
        table = table.reshape(nyb, span, p_j)  # q = i P + phase
        o = tables.offsets[j]
        acc += table[:, o[:, None] // p_j + np.arange(nxb)[None, :], (o % p_j)[:, None]]
    out += acc.transpose(1, 0, 2)


def backproject_exact(views, matrices, weights, out):
    """Reference: every voxel sampled at its exact position (bilinear, numpy; slow).

    Same arguments as :func:`backproject_numpy` without the tables.
    """
    nzb, nyb, nxb = out.shape
    iz, iy, ix = np.meshgrid(np.arange(nzb), np.arange(nyb), np.arange(nxb), indexing="ij")
    hom = np.stack([ix, iy, iz, np.ones_like(ix)]).reshape(4, -1).astype(float)
    for j in range(len(views)):
        col, row = matrices[j] @ hom
        out += (weights[j] * _sample(views[j], col, row)).reshape(out.shape).astype(np.float32)


def _warm_up(kernel):
    """Compile (or load from numba's cache) the kernel on a tiny problem; returns the seconds it took.

    Keeps JIT compilation out of the reported back-projection time.
    """
    t0 = time.perf_counter()
    views = pad_views(1, (4, 4))
    mats = np.zeros((1, 2, 4))
    mats[0, 0, 0] = mats[0, 1, 1] = 1.0
    mats[0, :, 3] = 1.0
    tables = line_tables(mats, 1, 4, 1)
    kernel(views, mats, np.ones(1), tables.phases, tables.s_min, tables.span, tables.starts,
           np.zeros((1, 1, 4), dtype=np.float32))
    return time.perf_counter() - t0


def _warm_up_voxels():
    """Compile (or load) the per-voxel kernel; returns the seconds it took."""
    from ._image_kernels import backproject_voxels

    t0 = time.perf_counter()
    mats = np.zeros((1, 2, 4))
    mats[0, 0, 0] = mats[0, 1, 1] = 1.0
    backproject_voxels(pad_views(1, (4, 4)), mats, np.ones(1), np.zeros((1, 1, 4), dtype=np.float32))
    return time.perf_counter() - t0


def reconstruct(views, xf, tilt_deg, options=ReconOptions(), usable=None, write_slab=None, kernel="numba",
                grid=None, shape=None, zfac=None):
    """Weighted back-projection of a tilt series.

    Parameters
    ----------
    views : sequence of ndarray (ny, nx)
        Raw views (a :class:`tiltflow.io.mrc.Stack` works: one view at a time).
    xf : ndarray (n_views, 6)
        Raw -> aligned transforms (the ``{series}.xf``).
    tilt_deg : ndarray (n_views,)
        Solved tilt angles (the ``{series}.tlt``).
    options : ReconOptions
    usable : ndarray of bool (n_views,), optional
        Views to use (excluded views are left out).
    write_slab : callable, optional
        ``write_slab(y0, block)`` receives each finished slab ``(nz, rows, nx)``;
        without it the whole volume is returned.
    kernel : {"numba", "numpy", "exact"}
        The compiled line-table kernel (default), its numpy twin (same
        tables, same result to float32 precision), or exact per-voxel
        positions (numpy, slow; the reference for the table's rounding).
        Where a view's voxel x and z steps are not parallel (X-axis tilt,
        skew) ``"numba"`` samples every voxel at its exact position with a
        compiled kernel (reported as ``"voxels"``) and ``"numpy"`` falls
        back to ``"exact"``.
    grid : ndarray (3, 4), optional
        Voxel index -> frame position; default :func:`grid_matrix`.
    shape : (nz, ny, nx), optional
        Volume shape; default :func:`volume_shape`.
    zfac : ndarray (n_views, 2), optional
        The ``{series}.zfac`` of an alignment with distortion (:func:`view_matrices`).

    Returns
    -------
    volume : ndarray (nz, ny, nx) or None
        None when ``write_slab`` is given.
    stats : dict
        ``seconds`` (back-projection, JIT compilation excluded),
        ``compile_seconds``, ``filter_seconds``, ``voxels``, ``views``,
        ``oversampling``, ``shape_zyx``, ``binning``, ``thickness_px``,
        ``updates_per_second``, ``kernel`` (the one used).
    """
    from ._image_kernels import backproject_lines, backproject_voxels

    if kernel not in ("numba", "numpy", "exact"):
        raise ValueError(f"kernel must be 'numba', 'numpy' or 'exact', got {kernel!r}")
    n = len(tilt_deg)
    usable = np.ones(n, dtype=bool) if usable is None else np.asarray(usable, dtype=bool)
    idx = np.flatnonzero(usable)
    first = np.asarray(views[int(idx[0])])
    image_shape = first.shape
    b = options.binning
    t0 = time.perf_counter()
    binned_shape = (image_shape[0] // b, image_shape[1] // b)
    filtered = pad_views(len(idx), binned_shape)
    for k, j in enumerate(idx):
        filtered[k, 1:-2, 1:-2] = filter_view(bin_image(np.asarray(views[int(j)], dtype=np.float32), b),
                                              perpendicular_direction(xf[j]), options)
    filter_seconds = time.perf_counter() - t0
    shape = shape or volume_shape(image_shape, options)
    grid = grid_matrix(image_shape, options) if grid is None else grid
    mats = view_matrices(xf[idx], np.asarray(tilt_deg)[idx], image_shape, grid, b, None if zfac is None else np.asarray(zfac)[idx])
    mats[:, :, 3] += 1.0  # the padded views' border
    weights = tilt_weights(np.asarray(tilt_deg)[idx]) * 0.5  # ramp and interval: sum approximates the inverse
    nz, ny, nx = shape
    lines = bool(on_lines(mats).all())
    if not lines and kernel != "exact":
        # a section flattened about x, or a skew: a row of voxels no longer falls on one line of a view
        log.info("back-projection: voxel x and z steps are not parallel in every view (X-axis tilt or skew); "
                 "every voxel is sampled at its exact position (kernel %s)", "voxels" if kernel == "numba" else "exact")
        kernel = "voxels" if kernel == "numba" else "exact"
    tables = line_tables(mats, nz, nx, options.oversampling) if lines else None
    compile_seconds = (_warm_up(backproject_lines) if kernel == "numba"
                       else _warm_up_voxels() if kernel == "voxels" else 0.0)
    volume = None if write_slab else np.empty(shape, dtype=options.dtype)
    seconds = 0.0
    for y0 in range(0, ny, options.slab_rows):
        rows = min(options.slab_rows, ny - y0)
        block = np.zeros((nz, rows, nx), dtype=np.float32)
        m = mats.copy()
        m[:, :, 3] += m[:, :, 1] * y0  # fold the slab's first row into the offsets
        t1 = time.perf_counter()
        if kernel == "numba":
            backproject_lines(filtered, m, weights, tables.phases, tables.s_min, tables.span, tables.starts, block)
        elif kernel == "voxels":
            backproject_voxels(filtered, m, weights, block)
        elif kernel == "numpy":
            backproject_numpy(filtered, m, weights, tables, block)
        else:
            backproject_exact(filtered, m, weights, block)
        seconds += time.perf_counter() - t1
        if write_slab:
            write_slab(y0, block.astype(options.dtype))
        else:
            volume[:, y0:y0 + rows] = block
    voxels, n_used = int(nz * ny * nx), int(len(idx))
    stats = {"seconds": seconds, "filter_seconds": filter_seconds, "voxels": voxels, "views": n_used,
             "oversampling": int(options.oversampling), "compile_seconds": compile_seconds, "kernel": kernel,
             "shape_zyx": [int(nz), int(ny), int(nx)], "binning": int(b), "thickness_px": int(options.thickness_px),
             "updates_per_second": voxels * n_used / max(seconds, 1e-9)}
    log.info("back-projection: %d voxels x %d views in %.2f s (%.3g voxel-view updates/s); filtering %.2f s",
             voxels, n_used, seconds, stats["updates_per_second"], filter_seconds)
    return volume, stats
