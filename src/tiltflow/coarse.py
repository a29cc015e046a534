"""Coarse alignment of a tilt series by cross-correlation (what IMOD's tiltxcorr does).

For consecutive views in tilt order (:func:`tiltflow.tiltorder.walk_outward`),
the view nearer zero tilt is stretched by ``cos(theta_far) / cos(theta_near)``
perpendicular to the tilt axis, *about the point where the tilt axis lies in
that view* (image centre plus the view's shift found so far), both views are
tapered at the edges and band-pass filtered, and the peak of their FFT
cross-correlation gives the shift between them with sub-pixel precision
(:mod:`tiltflow.imaging`).  Shifts accumulate outwards from the reference
(zero-tilt) view.  Between two passes the tilt-axis angle is refined from
the images (:mod:`tiltflow.axis_search`).

Everything here works on arrays: ``views`` is ``(n_views, ny, nx)``,
positions are ``(x, y)`` in IMOD pixel convention (pixel centres at
``i + 0.5``), shifts are raw-image pixels.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from .axis_search import search_tilt_axis
from .imaging import auto_binning, bandpass, bin_image, measure_shift, preprocess, stretch, taper_window
from .options import CoarseOptions
from .tiltorder import interpolate_over_tilt, walk_outward

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CoarseResult:
    """Outcome of :func:`coarse_align`.

    Attributes
    ----------
    shifts_px : ndarray, shape (n_views, 2)
        Shift of each view relative to the reference view, raw pixels
        (the content of view j sits at ``p + shift_j`` when it is at ``p``
        in the reference view, on the tilt axis).
    peak : ndarray, shape (n_views,)
        Normalised correlation peak of the pair that placed each view
        (1 for the reference view, NaN for views not correlated).
    weak_views : list of int
        Views whose peak was weak (see ``CoarseOptions.weak_peak_ratio``).
    tilt_axis_deg : float
        The tilt-axis angle used for the final pass (the refined one when
        the search ran).
    axis_search : dict or None
        ``estimate_deg``, ``uncertainty_deg``, ``start_deg``, ``angles_deg``,
        ``score`` of the search.
    binning : int
    reference_view : int
    """

    shifts_px: np.ndarray
    peak: np.ndarray
    weak_views: list
    tilt_axis_deg: float
    axis_search: dict | None
    binning: int
    reference_view: int


def _chain(tapered, binned, window, tilt_rad, axis_rad, pairs, binning, centre_xy, filt, n_views, reference_view,
           cache):
    """Accumulate shifts along ``pairs``; returns (shifts raw px, peaks).

    Each pair is correlated twice: the second time the far view is tapered
    with the window moved by the first estimate, so that the two windows'
    edges do not coincide (coinciding edges pull the peak towards zero).
    """
    shifts = np.zeros((n_views, 2))
    peaks = np.full(n_views, np.nan)
    peaks[reference_view] = 1.0
    c_b = np.asarray(centre_xy) / binning
    for near, far in pairs:
        f = np.cos(tilt_rad[far]) / np.cos(tilt_rad[near])
        about = c_b + shifts[near] / binning
        s = stretch(tapered[near], f, axis_rad, about)
        d, peak = measure_shift(s, binned[far], window, filt, tapered[far], cache)
        shifts[far] = shifts[near] + d * binning
        peaks[far] = peak
    return shifts, peaks


def coarse_align(views, tilt_deg, tilt_axis_deg, reference_view, options=CoarseOptions(), usable=None,
                 fallback_steps_px=None):
    """Cross-correlation coarse alignment of a tilt series.

    Parameters
    ----------
    views : sequence of ndarray, each (ny, nx), or ndarray (n_views, ny, nx)
        Raw views (any real dtype); only ``views[i]`` is accessed, one at a
        time, so a memory-mapped stack works.
    tilt_deg : ndarray, shape (n_views,)
        Nominal tilt angles.
    tilt_axis_deg : float
        Starting tilt-axis angle (IMOD RotationAngle convention).
    reference_view : int
        The view all shifts are relative to (usually nearest zero tilt).
    options : CoarseOptions
    usable : ndarray of bool, shape (n_views,), optional
        False for views to leave out (excluded views); their shifts are
        interpolated over tilt.
    fallback_steps_px : dict, optional
        ``{(near, far): step (2,)}`` from another source (the markers) used
        instead of the correlation for pairs whose peak is weak.

    Returns
    -------
    CoarseResult
    """
    tilt_deg = np.asarray(tilt_deg, dtype=float)
    n = len(tilt_deg)
    usable = np.ones(n, dtype=bool) if usable is None else np.asarray(usable, dtype=bool)
    if not usable[reference_view]:
        raise ValueError(f"reference_view {reference_view} is not usable")
    first = np.asarray(views[reference_view])
    binning = options.binning or auto_binning(first.shape)
    ny, nx = first.shape
    centre = (nx / 2.0, ny / 2.0)
    binned_shape = (ny // binning, nx // binning)
    window = taper_window(binned_shape, options.taper_fraction)
    tapered, binned = {}, {}  # view -> preprocessed (normalised, tapered) and plain binned image
    for v in np.flatnonzero(usable):
        binned[int(v)] = bin_image(np.asarray(views[v], dtype=np.float32), binning)
        tapered[int(v)] = preprocess(binned[int(v)], window)
    filt = bandpass(binned_shape, options.filter_sigma1, options.filter_radius2, options.filter_sigma2)
    tilt_rad = np.deg2rad(tilt_deg)
    pairs = walk_outward(tilt_deg, reference_view, usable)
    axis = float(tilt_axis_deg)
    cache = {}
    args = (tapered, binned, window, tilt_rad)
    shifts, peaks = _chain(*args, np.deg2rad(axis), pairs, binning, centre, filt, n, reference_view, cache)
    search = None
    if options.axis_search and len(pairs) >= 4:
        search = search_tilt_axis(binned, tilt_rad, axis, reference_view, shifts / binning, options)
        del binned
        axis = search["estimate_deg"]
        shifts, peaks = _chain(*args, np.deg2rad(axis), pairs, binning, centre, filt, n, reference_view, cache)
    finite = peaks[np.isfinite(peaks) & (np.arange(n) != reference_view)]
    median = float(np.median(finite)) if len(finite) else 1.0
    weak = [far for near, far in pairs if peaks[far] < options.weak_peak_ratio * median]
    if weak:
        log.warning("coarse: weak correlation peaks for views %s (peaks %s; median %.3f)",
                    weak, [round(float(peaks[v]), 3) for v in weak], median)
        if fallback_steps_px:
            replaced = []
            for near, far in pairs:  # in walking order, so earlier fixes propagate
                if far in weak and (near, far) in fallback_steps_px:
                    delta = np.asarray(fallback_steps_px[(near, far)]) - (shifts[far] - shifts[near])
                    # move this view and everything placed from it further out
                    moved = _downstream(pairs, far)
                    shifts[moved] += delta
                    replaced.append(far)
            if replaced:
                log.warning("coarse: views %s placed by their markers instead", replaced)
    shifts = interpolate_over_tilt(shifts, tilt_deg, usable)
    return CoarseResult(shifts, peaks, weak, axis, search, binning, int(reference_view))


def _downstream(pairs, view):
    """``view`` and every view placed from it (further out along the chain)."""
    out = {view}
    changed = True
    while changed:
        changed = False
        for near, far in pairs:
            if near in out and far not in out:
                out.add(far)
                changed = True
    return sorted(out)
