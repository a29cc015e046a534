"""Projection matching of a whole tilt series, coarse to fine (image-based alignment).

The views are resampled once per level into the *aligned frame* (tilt axis
vertical, each view moved back by its current shift, binned), the rows are
summed in ``n_bands`` bands along the axis, and each band is a sinogram of
a slab of the specimen: :func:`tiltflow.projmatch.match_shifts` refines the
shift across the axis from all bands together.  The shift along the axis is
read from each view's across-summed profile against the mean profile of the
others (it does not depend on the tilt when the specimen stays in the field).

The reconstructed slab must hold the whole specimen: content outside it is
projected onto the wrong place at high tilt and biases every estimate.  When
its thickness is not given it is measured at the first (coarsest) level from
a reconstruction twice as thick as the field is wide.

Views: ``(n_views, ny, nx)`` raw images, any contrast and counts (each view
is normalised to zero mean and unit SD over its window). Shifts: the content
of view ``j`` sits at ``p + shift_j`` (as :class:`tiltflow.coarse.CoarseResult`),
raw pixels, ``(x, y)``.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import scipy.ndimage

from .imaging import taper_window
from .projmatch import (
    MatchOptions,
    estimate_shifts,
    match_shifts,
    ncc_rows,
    reproject,
    shift_rows,
)
from .tiltorder import interpolate_over_tilt

log = logging.getLogger(__name__)

#: Fewest views and smallest (binned) field the method is run on.
MIN_VIEWS = 5
MIN_FIELD_PX = 32


@dataclasses.dataclass(frozen=True)
class StackMatchOptions:
    """Parameters of :func:`match_stack`.

    Attributes
    ----------
    binnings : tuple of int
        Binnings of the levels, coarse to fine (raw pixels per working pixel).
        Empty: automatic — the finest level has its larger side at most
        ``finest_size_px``, and two coarser levels, each binned twice more.
    finest_size_px : int
        Larger side of the finest level when ``binnings`` is automatic.
    thickness_px : float
        Thickness of the reconstructed slab, raw pixels (it must hold the
        whole specimen, beads included); 0: measured from the images.
    band_height_px : float
        Height (raw pixels) of the bands along the tilt axis whose rows are
        summed (at least one working row); each band is a sinogram, all share
        one shift per view across the axis, and the shift along the axis is
        read across the bands (coarser bands read it less well; a round
        costs in proportion to the number of bands).
    taper_fraction : float
        Cosine edge taper of the aligned views, as a fraction of each side.
    match : MatchOptions
        The iterations at each level (reconstruction, tolerance, rounds...).
    """

    binnings: tuple = ()
    finest_size_px: int = 256
    thickness_px: float = 0.0
    band_height_px: float = 4.0
    taper_fraction: float = 0.1
    match: MatchOptions = MatchOptions(max_iterations=20, tolerance_px=0.05)

    def __post_init__(self):
        if any(int(b) < 1 for b in self.binnings):
            raise ValueError(f"binnings must be positive integers, got {self.binnings}")
        if self.finest_size_px < 4 * MIN_FIELD_PX:
            raise ValueError(f"finest_size_px must be >= {4 * MIN_FIELD_PX}, got {self.finest_size_px}")
        if self.thickness_px < 0:
            raise ValueError(f"thickness_px must be >= 0 (0: measured), got {self.thickness_px}")
        if self.band_height_px <= 0:
            raise ValueError(f"band_height_px must be > 0, got {self.band_height_px}")
        if not 0 <= self.taper_fraction < 0.5:
            raise ValueError(f"taper_fraction must be in [0, 0.5), got {self.taper_fraction}")


@dataclasses.dataclass(frozen=True)
class StackMatch:
    """Result of :func:`match_stack`.

    Attributes
    ----------
    shifts_px : ndarray, shape (n_views, 2)
        Refined shift of each view, raw pixels (excluded views interpolated over tilt).
    ncc_before, ncc_after : ndarray, shape (n_views,)
        Normalised cross-correlation of each view with its re-projection
        (leave-one-out) at the finest level, with the starting and the
        refined shifts (NaN for excluded views).
    thickness_px : float
        Thickness of the reconstructed slab (given or measured), raw pixels.
    levels : list of dict
        Per level: ``binning``, ``rounds``, ``updates_px`` (largest update
        of each round, raw pixels), ``converged``, ``seconds``.
    converged : bool
        Every level converged.
    reconstruction : ndarray, shape (n_bands, n_z, n_x)
        The finest level's band reconstructions (x-z slices), for pictures.
    """

    shifts_px: np.ndarray
    ncc_before: np.ndarray
    ncc_after: np.ndarray
    thickness_px: float
    levels: list
    converged: bool
    reconstruction: np.ndarray


def level_binnings(shape, options: StackMatchOptions):
    """The binnings of the levels, coarse to fine, for views of ``shape = (ny, nx)``."""
    if options.binnings:
        out = [int(b) for b in options.binnings]
    else:
        finest = 1
        while max(shape) / finest > options.finest_size_px:
            finest *= 2
        out = [finest * 4, finest * 2, finest]
    kept = [b for b in out if min(shape) // b >= MIN_FIELD_PX]
    if not kept:
        raise ValueError(f"views of {shape[1]} x {shape[0]} px are too small for projection matching at "
                         f"binnings {out}: a level needs >= {MIN_FIELD_PX} px per side")
    return kept


def view_linear(axis_deg, n_views):
    """Per view the map from aligned ``(u, v)`` to raw offsets for a tilt axis at ``axis_deg``
    (a rotation): shape (n_views, 2, 2)."""
    a = np.deg2rad(np.broadcast_to(np.asarray(axis_deg, dtype=float), (n_views,)))
    c, t = np.cos(a), np.sin(a)
    return np.stack([np.stack([c, -t], -1), np.stack([t, c], -1)], -2)


def aligned_views(views, shifts_px, linear, binning, taper_fraction, view_ids=None):
    """Views moved back by their shifts, tilt axis vertical, binned, normalised and tapered.

    Parameters
    ----------
    views : sequence of ndarray (ny, nx)
    shifts_px : ndarray, shape (n_views, 2)
    linear : ndarray, shape (n_views, 2, 2)
        Per view, the raw offset of aligned ``(u, v)``: the raw point is
        ``centre + shift + linear (u, v)`` (``R(axis)`` for a tilt axis at
        ``axis``; ``scale R(rotation)`` in the projection model of
        :mod:`tiltflow.projection`; ``A^-1`` of an IMOD ``.xf``).
    binning : int
    taper_fraction : float
    view_ids : sequence of int, optional
        The views' numbers in the series, for messages (default ``0, 1, ...``).

    Returns
    -------
    ndarray, shape (n_views, n_v, n_u)
        ``[view, v, u]``: ``u`` across the axis (a point at ``x`` of the
        specimen lands at ``u = x cos(tilt) + z sin(tilt)``), ``v`` along
        it; centred at ``(n - 1) / 2``, binned pixels.  Zero mean and unit
        SD over the window, zero outside the recorded field.
    """
    ny, nx = np.asarray(views[0]).shape
    b = int(binning)
    nu, nv = nx // b, ny // b
    n = len(shifts_px)
    u = (np.arange(nu) - (nu - 1) / 2.0) * b
    v = (np.arange(nv) - (nv - 1) / 2.0) * b
    window = taper_window((nv, nu), taper_fraction)
    inside = window > 0.5
    out = np.empty((n, nv, nu))
    for j, shift in enumerate(shifts_px):
        img = np.asarray(views[j], dtype=np.float64)
        if b > 1:
            img = img[: nv * b, : nu * b].reshape(nv, b, nu, b).mean(axis=(1, 3))
        # raw point of aligned (u, v): centre + shift + L (u, v), as binned pixel indices
        cx, cy = (nx / 2.0 + shift[0]) / b - 0.5, (ny / 2.0 + shift[1]) / b - 0.5
        (l00, l01), (l10, l11) = linear[j]
        px = cx + (u[None, :] * l00 + v[:, None] * l01) / b
        py = cy + (u[None, :] * l10 + v[:, None] * l11) / b
        o = scipy.ndimage.map_coordinates(img, [py, px], order=1, mode="constant", cval=np.nan)
        ok = np.isfinite(o)
        sel = ok & inside
        if sel.sum() < 16:
            raise ValueError(f"view {j if view_ids is None else view_ids[j]}: its shift ({shift[0]:.1f}, {shift[1]:.1f}) px moves it out of the field")
        mean, sd = o[sel].mean(), o[sel].std()
        out[j] = np.where(ok, (o - mean) / max(sd, 1e-12), 0.0) * window
    return out


def _bands(aligned, band_px):
    """Rows summed in bands of ``band_px``: ``(n_bands, n_views, n_u)`` (the central rows)."""
    n_views, nv, nu = aligned.shape
    n_bands = max(1, nv // band_px)
    first = (nv - n_bands * band_px) // 2
    rows = aligned[:, first:first + n_bands * band_px]
    return np.moveaxis(rows.reshape(n_views, n_bands, band_px, nu).sum(axis=2), 1, 0)


def measure_thickness(bands, angle_rad, n_u, options: MatchOptions, fraction=0.2):
    """Thickness (binned pixels) of the part of a thick reconstruction that holds the specimen.

    Reconstructs the bands in a slab ``2 n_u`` thick, takes the variance of
    each z row (over x, within the central half, all bands), and returns the
    extent of the rows whose variance is above ``fraction`` of the way from
    the floor (median of the outer quarters) to the peak (on simulated slabs
    this extent, blobs' and beads' tails included, is where the shift
    estimates are best: 20 % thinner or thicker doubles their error).
    """
    nz = 2 * n_u
    _, vol = reproject(bands, angle_rad, (nz, n_u), dataclasses.replace(options, reconstruction="wbp"))
    centre = vol[..., n_u // 4: n_u - n_u // 4]
    profile = scipy.ndimage.uniform_filter1d(centre.var(axis=-1).mean(axis=0), 3)
    floor = float(np.median(np.concatenate([profile[: nz // 4], profile[-nz // 4:]])))
    level = floor + fraction * (profile.max() - floor)
    rows = np.flatnonzero(profile > level)
    extent = rows[-1] - rows[0] + 1
    return float(min(nz, extent)), profile


def _along_shifts(bands, across_px, angle_rad, shape, options: MatchOptions):
    """Shift of each view along the axis, in bands: the bands of each view (after its shift
    across) against their leave-one-out re-projections, compared along the band axis."""
    corrected = shift_rows(bands, -np.asarray(across_px))
    reproj, _ = reproject(corrected, angle_rad, shape, dataclasses.replace(options, reconstruction="wbp"))
    # (n_bands, n_views, n_u) -> (n_u, n_views, n_bands): one shift per view, pooled over u
    d = estimate_shifts(np.transpose(corrected, (2, 1, 0)), np.transpose(reproj, (2, 1, 0)),
                        options.max_frequency)
    return d - d.mean()


def match_stack(views, tilt_deg, axis_deg, shifts_px, options=StackMatchOptions(), usable=None, name="series",
                linear=None):
    """Refine the shifts of a tilt series from its images by projection matching, coarse to fine.

    Parameters
    ----------
    views : sequence of ndarray (ny, nx), or ndarray (n_views, ny, nx)
        Raw views, any contrast (bright-field or HAADF), any counts.
    tilt_deg : ndarray, shape (n_views,)
    axis_deg : float
        Tilt-axis angle (IMOD RotationAngle convention).
    shifts_px : ndarray, shape (n_views, 2)
        Starting shifts (e.g. :func:`tiltflow.coarse.coarse_align`), raw pixels.
    options : StackMatchOptions
    usable : ndarray of bool, shape (n_views,), optional
        False for excluded views (not read; their shifts interpolated over tilt).
    name : str
        Series name for messages.
    linear : ndarray (n_views, 2, 2), optional
        Per view, the raw offset of aligned ``(u, v)`` (see :func:`aligned_views`),
        e.g. a marker solution's ``scale R(rotation)``; default ``R(axis_deg)``.
        Shifts are then refined in each view's aligned frame.

    Returns
    -------
    StackMatch

    Raises
    ------
    ValueError
        Too few usable views, views too small for the levels, inconsistent shapes.
    """
    tilt_deg = np.asarray(tilt_deg, dtype=float)
    n = len(tilt_deg)
    shifts = np.asarray(shifts_px, dtype=float).copy()
    if shifts.shape != (n, 2):
        raise ValueError(f"{name}: shifts_px must have shape ({n}, 2), got {shifts.shape}")
    if len(views) != n:
        raise ValueError(f"{name}: {len(views)} views but {n} tilt angles")
    usable = np.ones(n, dtype=bool) if usable is None else np.asarray(usable, dtype=bool)
    idx = np.flatnonzero(usable)
    if len(idx) < MIN_VIEWS:
        raise ValueError(f"{name}: projection matching needs at least {MIN_VIEWS} usable views, got {len(idx)}")
    used = [np.asarray(views[int(j)]) for j in idx]
    shape = used[0].shape
    try:
        binnings = level_binnings(shape, options)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    linear = view_linear(axis_deg, n) if linear is None else np.asarray(linear, dtype=float)
    if linear.shape != (n, 2, 2):
        raise ValueError(f"{name}: linear must have shape ({n}, 2, 2), got {linear.shape}")
    linear = linear[idx]

    def level_bands(shifts_used, b):
        """Bands ``(n_bands, n_views, n_u)`` at binning ``b``, and the rows in each band."""
        band_px = max(1, int(round(options.band_height_px / b)))
        aligned = aligned_views(used, shifts_used, linear, b, options.taper_fraction, idx)
        return _bands(aligned, band_px), band_px

    tilt = np.deg2rad(tilt_deg[idx])
    thickness = float(options.thickness_px)
    report, converged = [], True
    ncc_before = ncc_after = None
    vol = None
    for level, b in enumerate(binnings):
        t0 = time.perf_counter()
        bands, band_px = level_bands(shifts[idx], b)
        nu = bands.shape[-1]
        if thickness <= 0:
            measured, _ = measure_thickness(bands, tilt, nu, options.match)
            thickness = measured * b
            log.info("%s: specimen slab measured %.0f raw px thick (at binning %d)", name, thickness, b)
        nz = max(8, int(round(thickness / b)))
        res = match_shifts(bands, tilt, (nz, nu), options.match)
        along = _along_shifts(bands, res.shifts_px, tilt, (nz, nu), options.match) * band_px
        shifts[idx] += b * np.einsum("nij,nj->ni", linear, np.column_stack([res.shifts_px, along]))
        converged &= res.converged
        if level == len(binnings) - 1:
            ncc_after = res.ncc_after
            vol = res.reconstruction
        if level == 0 and len(binnings) == 1:
            ncc_before = res.ncc_before
        report.append({"binning": int(b), "rounds": len(res.updates_px),
                       "updates_px": [round(float(u) * b, 4) for u in res.updates_px],
                       "converged": bool(res.converged), "seconds": round(time.perf_counter() - t0, 3),
                       "mean_ncc_before": float(res.ncc_before.mean()), "mean_ncc_after": float(res.ncc_after.mean())})
        log.info("%s: projection matching at binning %d: %d rounds, last update %.3f raw px, mean NCC %.3f -> %.3f",
                 name, b, len(res.updates_px), res.updates_px[-1] * b, res.ncc_before.mean(), res.ncc_after.mean())
    if ncc_before is None:  # the finest level's NCC with the starting shifts
        b = binnings[-1]
        bands, _ = level_bands(np.asarray(shifts_px, dtype=float)[idx], b)
        reproj, _ = reproject(bands, tilt, (max(8, int(round(thickness / b))), bands.shape[-1]), options.match)
        ncc_before = ncc_rows(bands, reproj)
    shifts = interpolate_over_tilt(shifts, tilt_deg, usable)
    before = np.full(n, np.nan)
    after = np.full(n, np.nan)
    before[idx], after[idx] = ncc_before, ncc_after
    return StackMatch(shifts, before, after, thickness, report, bool(converged), vol)


def stack_options(options) -> StackMatchOptions:
    """:class:`StackMatchOptions` from the workflow's :class:`tiltflow.options.MatchingOptions`."""
    return StackMatchOptions(
        finest_size_px=int(options.finest_size_px), thickness_px=float(options.thickness_px),
        band_height_px=float(options.band_height_px),
        match=MatchOptions(reconstruction=options.reconstruction, max_iterations=int(options.max_iterations),
                           tolerance_px=float(options.tolerance_px)))
