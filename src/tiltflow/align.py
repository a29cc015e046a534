"""Staged fiducial alignment (Jou et al.): coarse start, then the L-M stages.

The coarse stage (:func:`coarse_stage`) makes the starting state from the
markers or the images; every L-M stage is then one call of the generic
:func:`run_stage` ``(series, state, options) -> state`` with the stage's
declaration from :mod:`tiltflow.stages` (free parameter groups, robust,
reset).  The workflow runs each as its own rule and stores the state
between them.

Gauge.  While solving, the translation freedom is fixed by holding the 3D
position of one marker (the one seen in most views), the scale freedom by
holding the reference view's scale, and -- when tilts are free together
with the 3D positions -- the rotation about the tilt axis by holding the
reference view's tilt.  After every stage the solution is re-expressed
(exactly, residuals unchanged) with the 3D centroid of the markers at the
origin; :func:`output_frame` then moves the x, y origin so that the
aligned views keep the raw field of view (mean view shift zero), as IMOD
does, while z stays centred on the markers.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from . import projection
from .model import MIN_MARKERS_PER_VIEW, MIN_OBSERVATIONS_PER_MARKER, AlignmentState, StageReport
from .options import AlignOptions, CoarseOptions
from .projection import DMAG, DX, DY, N_VIEW, ROT, SCALE, SKEW, TILT
from .solver import Layout, blas_threads, solve_bundle, warm_up, window_medians
from .stages import STAGES, get_stage
from .tiltorder import interpolate_over_tilt, walk_outward

log = logging.getLogger(__name__)

#: Robust re-weighting rounds at most per stage (the weights usually settle in 2-4).
MAX_ROBUST_ROUNDS = 10
#: Robust weights have settled when no observation's weight changed by more than this in a round.
#: (IMOD's tiltalign stops at a maximum change below 0.01 with a mean change below 0.001 among the
#: weights under 0.5.)  Measured on the solver benchmark's problems against 0.001: one robust round
#: fewer in most stages, predictions within 0.001 px, the same RMS to 1e-6 px.
ROBUST_SETTLED = 3e-3
#: Robust scale groups: the views within this many places in tilt order of an observation's view.
ROBUST_VIEW_WINDOW = 2
#: The image tilt-axis estimate seeds the L-M stages when its bootstrap uncertainty is below this.
AXIS_SEED_MAX_UNCERTAINTY_DEG = 1.0


def residual_stats(series, views, points, weight=None):
    """RMS per coordinate (the paper's L) and mean residual vector length.

    Observations with zero weight are left out.  Returns ``(rms, mean)``.
    """
    pred = projection.project(points, views, series.obs.marker_index, series.obs.view_index, series.centre_xy_px)
    r = pred - series.obs.xy_px
    return residual_summary(r, np.ones(len(r), dtype=bool) if weight is None else weight > 0)


def residual_summary(resid_xy_px, used):
    """``(rms, mean)`` of the residual vectors ``resid_xy_px`` (n_obs, 2) where ``used``; NaN if none."""
    r = resid_xy_px[used]
    if not len(r):
        return float("nan"), float("nan")
    return float(np.sqrt(np.mean(r**2))), float(np.mean(np.hypot(r[:, 0], r[:, 1])))


def choose_reference_view(series, requested=None):
    """The reference view: ``requested``, or the strong view nearest zero tilt."""
    strong, _, _ = series.view_classes()
    if requested is not None:
        if not 0 <= requested < series.n_views:
            raise ValueError(f"reference_view must be in 0..{series.n_views - 1}, got {requested}")
        if not strong[requested]:
            raise ValueError(
                f"reference_view {requested} has {series.markers_per_view()[requested]} observed markers; "
                f"it needs at least {MIN_MARKERS_PER_VIEW}"
            )
        return int(requested)
    if not strong.any():
        raise ValueError(f"no view has {MIN_MARKERS_PER_VIEW} or more observed markers; nothing can be aligned")
    candidates = np.flatnonzero(strong)
    return int(candidates[np.argmin(np.abs(series.nominal_tilt_deg[candidates]))])


def coarse_shifts_from_markers(series, reference_view):
    """Initial view shifts from the markers alone.

    Walking outwards from the reference view in tilt order
    (:func:`tiltflow.tiltorder.walk_outward`), each view's shift is the
    previous view's plus the mean displacement of the markers both views
    share (none shared: the previous view's shift).  Views without
    observations (or excluded) are interpolated over tilt.

    Returns
    -------
    ndarray, shape (n_views, 2)
        Shift of each view relative to the reference view, pixels.
    """
    n_v = series.n_views
    obs = series.obs
    pos = np.full((series.obs.n_markers, n_v, 2), np.nan)
    pos[obs.marker_index, obs.view_index] = obs.xy_px
    usable = ~series.excluded & (series.markers_per_view() > 0)
    usable[reference_view] = True
    shifts = np.zeros((n_v, 2))
    for near, far in walk_outward(series.nominal_tilt_deg, reference_view, usable):
        d = pos[:, far] - pos[:, near]
        ok = np.isfinite(d[:, 0])
        shifts[far] = shifts[near] + (d[ok].mean(axis=0) if ok.any() else 0.0)
    return interpolate_over_tilt(shifts, series.nominal_tilt_deg, usable)


def interpolate_views(views, nominal_tilt_deg, source, columns=(TILT, ROT, SCALE, DX, DY, DMAG, SKEW)):
    """Fill the views not in ``source`` by linear interpolation over nominal tilt.

    Tilts are interpolated as deviations from nominal.  Returns a copy.
    """
    views = views.copy()
    source = np.asarray(source, dtype=bool)
    if source.all():
        return views
    nominal = np.deg2rad(nominal_tilt_deg)
    for col in columns:
        offset = nominal if col == TILT else 0.0
        filled = interpolate_over_tilt(views[:, col] - offset, nominal, source) + offset
        views[~source, col] = filled[~source]
    return views


def initial_state(series, options, shifts_px=None):
    """Starting parameters for the initial stage.

    Parameters
    ----------
    series : Series
    options : AlignOptions
    shifts_px : ndarray, shape (n_views, 2), optional
        Coarse shifts (from images or markers); default: from the markers.

    Returns
    -------
    AlignmentState
        Tilts nominal, scales 1, rotation from the sheet, the coarse
        shifts, and markers placed from the reference view (or from their
        observation nearest in tilt, de-tilted with z = 0).
    """
    ref = choose_reference_view(series, options.reference_view)
    if shifts_px is None:
        shifts_px = coarse_shifts_from_markers(series, ref)
    shifts_px = np.asarray(shifts_px, dtype=float) - shifts_px[ref]
    n_v = series.n_views
    views = np.zeros((n_v, N_VIEW))
    views[:, TILT] = np.deg2rad(series.nominal_tilt_deg)
    views[:, ROT] = np.deg2rad(series.tilt_axis_deg)
    views[:, SCALE] = 1.0
    views[:, [DX, DY]] = shifts_px
    obs = series.obs
    c = np.asarray(series.centre_xy_px)
    # de-rotate every observation into (u, v)
    rinv = projection.rotation_matrix(-views[obs.view_index, ROT])
    uv = np.einsum("nij,nj->ni", rinv, obs.xy_px - c - views[obs.view_index][:, [DX, DY]])
    tilt = views[obs.view_index, TILT]
    # per marker: the observation with the smallest |tilt - tilt_ref| wins
    key = np.abs(tilt - views[ref, TILT])
    order = np.lexsort((key, obs.marker_index))
    first = order[np.r_[True, np.diff(obs.marker_index[order]) != 0]]
    points = np.zeros((obs.n_markers, 3))
    points[obs.marker_index[first], 0] = uv[first, 0] / np.cos(tilt[first])
    points[obs.marker_index[first], 1] = uv[first, 1]
    return AlignmentState(views, points, np.ones(len(obs.view_index)), ref, ())


def coarse_stage(prepared, options=AlignOptions(), coarse_options=CoarseOptions(), views=None):
    """The coarse stage: coarse shifts and the starting state of the L-M stages.

    Without images the shifts come from the markers
    (:func:`coarse_shifts_from_markers`).  With ``views`` (the raw stack)
    they come from cross-correlation (:func:`tiltflow.coarse.coarse_align`);
    pairs with weak peaks are placed by their markers instead, and the
    tilt-axis angle refined from the images seeds the L-M stages when its
    bootstrap uncertainty is below :data:`AXIS_SEED_MAX_UNCERTAINTY_DEG`
    (the markers decide the final rotation).

    Parameters
    ----------
    prepared : tiltflow.model.Prepared
        Markers live in the frame of ``prepared.prexg`` when it is given
        (picked on a prealigned stack); images are raw.
    options : AlignOptions
    coarse_options : CoarseOptions
    views : sequence of ndarray (ny, nx), optional
        The raw views (e.g. a memory-mapped :class:`tiltflow.io.mrc.Stack`).

    Returns
    -------
    state : AlignmentState
    coarse_xf : ndarray, shape (n_views, 6)
        Translations mapping each raw view onto the reference view (IMOD
        ``.xf`` convention, like a ``.prexg``).
    report : dict
        ``source`` ("markers" or "images"), ``start_tilt_axis_deg`` and,
        from images, ``seconds``, ``binning``, ``peak``, ``weak_views``,
        ``axis_search``.
    """
    series = prepared.series
    ref = choose_reference_view(series, options.reference_view)
    marker_shifts = coarse_shifts_from_markers(series, ref)
    report = {"source": "markers"}
    raw_shifts = marker_shifts
    if prepared.prexg is not None:  # raw shifts = prexg^-1 applied to the marker-frame shifts
        raw_shifts = projection.apply_xf(projection.invert_xf(prepared.prexg), marker_shifts, (0.0, 0.0))
    start_axis = series.tilt_axis_deg
    if views is not None:
        from .coarse import coarse_align

        t0 = time.perf_counter()
        usable = ~series.excluded
        counts = series.markers_per_view()
        fallback = {(near, far): raw_shifts[far] - raw_shifts[near]
                    for near, far in walk_outward(series.nominal_tilt_deg, ref, usable)
                    if counts[near] and counts[far]}
        result = coarse_align(views, series.nominal_tilt_deg, series.tilt_axis_deg, ref, coarse_options, usable,
                              fallback_steps_px=fallback)
        seconds = time.perf_counter() - t0
        raw_shifts = result.shifts_px
        report = {
            "source": "images",
            "seconds": seconds,
            "binning": result.binning,
            "peak": [float(p) if np.isfinite(p) else None for p in result.peak],
            "weak_views": result.weak_views,
            "axis_search": result.axis_search,
        }
        if result.axis_search and result.axis_search["uncertainty_deg"] < AXIS_SEED_MAX_UNCERTAINTY_DEG:
            start_axis = result.axis_search["estimate_deg"]
        log.info("coarse from images: %.2f s, binning %d, weak views %s", seconds, result.binning, result.weak_views)
    shifts = raw_shifts
    if prepared.prexg is not None:  # marker-frame shifts = prexg applied to raw shifts
        shifts = projection.apply_xf(prepared.prexg, raw_shifts, (0.0, 0.0))
    state = initial_state(dataclasses.replace(series, tilt_axis_deg=float(start_axis)), options, shifts_px=shifts)
    coarse_xf = np.zeros((series.n_views, 6))
    coarse_xf[:, 0] = coarse_xf[:, 3] = 1.0
    coarse_xf[:, 4:] = -(raw_shifts - raw_shifts[ref])
    report["start_tilt_axis_deg"] = float(start_axis)
    log.info("coarse: reference view %d, shifts up to %.1f px", state.reference_view, np.abs(coarse_xf[:, 4:]).max())
    return state, coarse_xf, report


def _gauge_marker(series, fit_weight=None):
    """The marker whose 3D position is held: the one with most (weighted-in) observations."""
    used = np.ones(len(series.obs.marker_index)) if fit_weight is None else (fit_weight > 0).astype(float)
    counts = np.bincount(series.obs.marker_index, used, minlength=series.obs.n_markers)
    return int(np.argmax(counts))


def rejected_markers(series, fit_weight):
    """Markers none of whose observations keep a weight in the fit, shape (n_markers,) bool.

    Their 3D positions are held (nothing determines them) and they are
    reported; their observations stay in the tables with weight 0.
    """
    return weighted_observations_per_marker(series, fit_weight) == 0


def weighted_observations_per_marker(series, weight):
    """Number of observations with weight > 0 of each marker, shape (n_markers,)."""
    return np.bincount(series.obs.marker_index, (weight > 0).astype(float), minlength=series.obs.n_markers)


def group_weights(n_members, anchor, size):
    """IMOD-style automapping of a grouped parameter over ``n_members`` views in tilt order.

    Group centres sit every ``size`` members starting from ``anchor`` (so
    that the anchor -- the reference view -- is a centre), plus the first
    and last member when they lie at least ``size / 2`` beyond the
    outermost centre; a member's value is linearly interpolated between
    the two centres around it (held at the outermost centre's value
    beyond it).

    Parameters
    ----------
    n_members : int
    anchor : int
        Position (0-based, in tilt order) of the member that must be a centre.
    size : int
        Members per group.

    Returns
    -------
    weights : ndarray, shape (n_members, n_centres)
    centres : ndarray of int, shape (n_centres,)
        Positions of the centres.
    """
    centres = list(range(anchor % size, n_members, size))
    if centres[0] >= size / 2:
        centres.insert(0, 0)
    if n_members - 1 - centres[-1] >= size / 2:
        centres.append(n_members - 1)
    centres = np.asarray(centres)
    pos = np.arange(n_members)
    weights = np.zeros((n_members, len(centres)))
    k = np.clip(np.searchsorted(centres, pos, side="right") - 1, 0, max(len(centres) - 2, 0))
    if len(centres) == 1:
        weights[:, 0] = 1.0
        return weights, centres
    a, b = centres[k], centres[k + 1]
    f = np.clip((pos - a) / (b - a), 0.0, 1.0)
    weights[pos, k] = 1.0 - f
    weights[pos, k + 1] += f
    return weights, centres


#: How each grouped column reads its group size and which views follow it.
_GROUP_SIZE = {ROT: "rotation_group", TILT: "tilt_group", SCALE: "scale_group", DMAG: "stretch_group",
               SKEW: "skew_group"}


def stage_groups(stage, series, state, options, distortion=None):
    """The grouped columns of a stage: ``column -> (weights (n_views, n_centres), free (n_centres,), centre_views)``.

    ``weights`` rows of views that do not follow the groups are 0; the
    centre at the reference view is held where the gauge holds that
    view's value (scale; tilt with free positions; stretch and skew).
    ``distortion`` overrides ``options.distortion``.
    """
    stage = get_stage(stage) if isinstance(stage, str) else stage
    distortion = options.distortion if distortion is None else distortion
    strong, _, _ = series.view_classes()
    ref = state.reference_view
    columns = {}
    if options.rotation == "grouped":
        columns[ROT] = (strong | (series.markers_per_view() == 2), False)
    if stage.scale and options.scale == "grouped":
        columns[SCALE] = (strong, True)
    if stage.tilt and options.tilt == "grouped":
        columns[TILT] = (strong, stage.points)
    if stage.distortion and distortion == "grouped":
        columns[DMAG] = (strong, True)
        columns[SKEW] = (strong, True)
    order = np.argsort(series.nominal_tilt_deg, kind="stable")
    groups = {}
    for col, (members, hold_ref) in columns.items():
        members = members.copy()
        members[ref] = True
        ordered = order[members[order]]  # member views in tilt order
        anchor = int(np.flatnonzero(ordered == ref)[0])
        w, centres = group_weights(len(ordered), anchor, getattr(options, _GROUP_SIZE[col]))
        weights = np.zeros((series.n_views, len(centres)))
        weights[ordered] = w
        free = np.ones(len(centres), dtype=bool)
        if hold_ref:
            free[np.flatnonzero(centres == anchor)] = False
        groups[col] = (weights, free, ordered[centres])
    return groups


def regularise_groups(views, groups, nominal_tilt_deg):
    """Views whose grouped parameters follow their groups exactly (a copy).

    Each grouped column takes, at every view that follows the groups, the
    interpolation of its values at the group centres (tilts: of their
    change from nominal), so that the solve moves a true grouped model.
    """
    views = views.copy()
    nominal = np.deg2rad(nominal_tilt_deg)
    for col, (weights, _, centre_views) in groups.items():
        rows = np.flatnonzero(weights.any(axis=1))
        offset = nominal if col == TILT else np.zeros(len(views))
        values = views[centre_views, col] - offset[centre_views]
        views[rows, col] = weights[rows] @ values + offset[rows]
    return views


def stage_layout(stage, series, state, options, fit_weight=None, distortion=None):
    """The free parameters of a stage, from its declaration (gauge: :mod:`tiltflow.stages`).

    Parameters
    ----------
    stage : tiltflow.stages.Stage or str
    series : Series
    state : AlignmentState
        Gives the reference view.
    options : AlignOptions
    fit_weight : ndarray, shape (n_obs,), optional
        Weights in the fit: markers none of whose observations keep a
        weight (:func:`rejected_markers`) have their positions held.
    distortion : str, optional
        Overrides ``options.distortion`` (the mode a stage fell back to).

    Returns
    -------
    Layout
    """
    stage = get_stage(stage) if isinstance(stage, str) else stage
    distortion = options.distortion if distortion is None else distortion
    strong, weak, empty = series.view_classes()
    has_obs = ~empty
    ref = state.reference_view
    n_v, n_m = series.n_views, series.obs.n_markers
    view_free = np.zeros((n_v, N_VIEW), dtype=bool)
    view_free[has_obs, DX] = True
    view_free[has_obs, DY] = True
    point_free = np.zeros((n_m, 3), dtype=bool)
    shared = []
    if options.rotation in ("per_view", "grouped"):
        # two markers (4 coordinates) also determine a rotation besides the shifts
        view_free[strong | (series.markers_per_view() == 2), ROT] = True
    elif options.rotation == "single":
        view_free[has_obs, ROT] = True
        shared.append(ROT)
    if stage.points:
        point_free[:, :] = True
        if stage.hold_reference_xy:
            in_ref = np.unique(series.obs.marker_index[series.obs.view_index == ref])
            point_free[in_ref, :2] = False
        point_free[_gauge_marker(series, fit_weight), :] = False
        if fit_weight is not None:
            point_free[rejected_markers(series, fit_weight)] = False
    if stage.scale and options.scale in ("per_view", "grouped"):
        view_free[strong, SCALE] = True
        view_free[ref, SCALE] = False  # the reference view keeps scale 1 throughout
    if stage.tilt and options.tilt != "fixed":
        view_free[strong, TILT] = True
        if stage.points:  # tilts and positions free: one view's tilt fixes the rotation about the axis
            view_free[ref, TILT] = False
    if stage.distortion and distortion != "off":
        view_free[strong, DMAG] = view_free[strong, SKEW] = True
        view_free[ref, DMAG] = view_free[ref, SKEW] = False  # a common stretch or shear is the specimen's
    groups = stage_groups(stage, series, state, options, distortion)
    for col, (weights, *_) in groups.items():
        view_free[:, col] &= weights.any(axis=1)
    return Layout.from_masks(view_free, point_free, shared, groups)


def measured_to_unknowns(layout, fit_weight):
    """IMOD's ratio of measured values (two per weighted observation) to unknowns."""
    return 2.0 * float(np.count_nonzero(fit_weight > 0)) / max(layout.n_params, 1)


def tie_weak_views(series, views):
    """Set tilt and scale of weak and empty views from their neighbours, the
    rotation of views with fewer than 2 markers, and the shifts of empty
    views.  Returns a copy."""
    strong, weak, empty = series.view_classes()
    views = interpolate_views(projection.full_views(views), series.nominal_tilt_deg, strong, (TILT, SCALE, DMAG, SKEW))
    views = interpolate_views(views, series.nominal_tilt_deg, series.markers_per_view() >= 2, (ROT,))
    return interpolate_views(views, series.nominal_tilt_deg, ~empty, (DX, DY))


def recentre(series, views, points):
    """Move the 3D origin to the marker centroid, compensating the shifts.

    Exact: predictions are unchanged.  Returns ``(views, points)`` copies.
    """
    t = points.mean(axis=0)
    return translate(views, points, t)


def translate(views, points, t_xyz_px):
    """Re-express the solution with the 3D origin moved to ``t_xyz_px``."""
    t = np.asarray(t_xyz_px, dtype=float)
    views = projection.full_views(views).copy()
    n = len(views)
    linear = views.copy()
    linear[:, [DX, DY]] = 0.0
    d = projection.project(t[None, :], linear, np.zeros(n, dtype=int), np.arange(n), (0.0, 0.0))
    views[:, [DX, DY]] += d
    return views, points - t


def output_frame(series, views, points):
    """Re-express the solution so that the aligned frame keeps the raw field of view.

    The x, y origin is chosen so that the view shifts of the views with
    observations have zero mean in the least-squares sense; z keeps the
    marker centroid at 0.  Predictions are unchanged.
    Returns ``(views, points)``.
    """
    _, _, empty = series.view_classes()
    use = np.flatnonzero(~empty)
    views = projection.full_views(views)
    # d_j(t) = d_j + P_j t with P_j the linear part of view j's projection: linear in (t_x, t_y)
    _, _, jp = projection.project_with_jacobian(np.zeros((1, 3)), views, np.zeros(len(use), dtype=int), use, (0.0, 0.0))
    a = jp[:, :, :2].reshape(-1, 2)
    b = -views[use][:, [DX, DY]].reshape(-1)
    t, *_ = np.linalg.lstsq(a, b, rcond=None)
    return translate(views, points, [t[0], t[1], 0.0])


def robust_weights(resid_xy_px, k=9.0, view_index=None, view_rank=None, window=ROBUST_VIEW_WINDOW):
    """Tukey bisquare weights of residual vectors (IMOD's robust scheme).

    The residual scale is estimated robustly as ``sigma = median(|r|) /
    1.1774`` (the median of a 2D Gaussian residual length is
    ``sqrt(2 ln 2) sigma``); weights are ``(1 - (|r| / (k sigma))^2)^2``
    below the cut-off and 0 above it.

    With ``view_index`` and ``view_rank``, each observation's scale is the
    larger of the global one and that of its group of views (the views
    within ``window`` places of its own in tilt order), as IMOD scales its
    robust fit by groups of views: where one bad contour has dragged a few
    views, their good points keep their weight (their residuals are judged
    against their own group's, larger, scale) while the contour's points,
    far beyond both, are still rejected.

    Parameters
    ----------
    resid_xy_px : ndarray, shape (n_obs, 2)
    k : float
        Cut-off in units of sigma.
    view_index : ndarray of int, shape (n_obs,), optional
    view_rank : ndarray of int, shape (n_views,), optional
        Place of each view in tilt order.
    window : int

    Returns
    -------
    ndarray, shape (n_obs,)
        Weights in [0, 1].
    """
    length = np.sqrt(np.einsum("ij,ij->i", resid_xy_px, resid_xy_px))  # (np.hypot is 5x slower)
    if not len(length):
        return np.ones(0)
    to_sigma = 1.0 / np.sqrt(2.0 * np.log(2.0))
    sigma = np.full(len(length), np.median(length) * to_sigma)
    if view_index is not None:
        view_rank = np.asarray(view_rank)
        n_ranks = len(view_rank)
        rank = view_rank[view_index]
        # stable sort on small integers (radix sort); a window is a contiguous run of the sorted lengths,
        # from the first observation of rank r - window to the last of rank r + window
        order = np.argsort(rank.astype(np.int16 if n_ranks < 2**15 else np.int64), kind="stable")
        first = np.zeros(n_ranks + 1, dtype=np.int64)
        np.cumsum(np.bincount(rank, minlength=n_ranks), out=first[1:])
        ranks = np.flatnonzero(first[1:] > first[:-1])  # the ranks observed
        lo = first[np.maximum(ranks - window, 0)]
        hi = first[np.minimum(ranks + window + 1, n_ranks)]
        local = np.zeros(n_ranks)
        local[ranks] = window_medians(length[order], lo, hi) * to_sigma
        sigma = np.maximum(sigma, local[rank])
    if not np.all(sigma > 0):
        return np.ones(len(length))
    z = length / (k * sigma)
    return np.where(z < 1.0, (1.0 - z**2) ** 2, 0.0)


def _retie_weak_views(series, views, points, weight, layout, options):
    """Re-tie weak views to their neighbours' new values and re-fit what they solve.

    Weak views hold tilt and scale interpolated from their neighbours, which
    the stage has just moved; their shifts (and the rotation of 2-marker
    views) are re-fitted with everything else held.  Empty views are
    interpolated entirely.
    """
    views = tie_weak_views(series, views)
    _, weak, _ = series.view_classes()
    if not weak.any():
        return views
    view_free = layout.view_free & weak[:, None]
    view_free[:, [TILT, SCALE, DMAG, SKEW]] = False
    if options.rotation != "per_view":
        view_free[:, ROT] = False
    if not view_free.any():
        return views
    sub = Layout.from_masks(view_free, np.zeros((series.obs.n_markers, 3), dtype=bool))
    sol = solve_bundle(series.obs.with_weight(weight), views, points, sub, options.lm)
    return sol.views


def stage_distortion(stage, series, state, options, fit_weight):
    """The distortion mode a stage solves: ``options.distortion``, or ``"off"`` when the stage does
    not free distortion or when the measured values per unknown would fall below
    ``options.distortion_min_ratio`` with it (logged as a warning, with the ratio)."""
    stage = get_stage(stage) if isinstance(stage, str) else stage
    if not stage.distortion or options.distortion == "off":
        return "off"
    layout = stage_layout(stage, series, state, options, fit_weight)
    ratio = measured_to_unknowns(layout, fit_weight)
    if ratio < options.distortion_min_ratio:
        log.warning("stage %s: distortion (%s) NOT solved: %d measured values for %s unknowns with it is a "
                    "ratio of %.2f, below align.distortion_min_ratio %.2f (too few markers); solving without it",
                    stage.name, options.distortion, 2 * int(np.count_nonzero(fit_weight > 0)), layout.n_params,
                    ratio, options.distortion_min_ratio)
        return "off"
    return options.distortion


def run_stage(stage, series, state, options, threads=1):
    """Run one L-M stage from ``state``.

    Parameters
    ----------
    stage : tiltflow.stages.Stage or str
        The stage's declaration (or its name).
    series : Series
    state : AlignmentState
    options : AlignOptions
    threads : int
        BLAS threads of the solve (:func:`tiltflow.solver.blas_threads`; the
        job's threads).

    Returns
    -------
    AlignmentState
        With the stage's solution (centroid gauge), the robust factors
        (unchanged by a stage that is not robust) and its report appended.
    """
    stage = get_stage(stage) if isinstance(stage, str) else stage
    warm_up(len(series.obs.view_index))  # JIT loading is not solve time
    with blas_threads(threads):
        return _run_stage(stage, series, state, options)


def _run_stage(stage, series, state, options):
    """:func:`run_stage` inside its BLAS thread limit."""
    t0 = time.perf_counter()
    views = tie_weak_views(series, state.views)
    if stage.reset:
        views[:, SCALE] = 1.0
        views[:, TILT] = np.deg2rad(series.nominal_tilt_deg)
        if options.rotation == "single":
            views[:, ROT] = np.mean(views[:, ROT])
        views[:, [DMAG, SKEW]] = 0.0
    points = state.points_xyz_px
    robust = options.robust and stage.robust
    # a stage that is not robust fits with the input weights alone and passes the factors on
    factor = state.robust_weight if robust else np.ones(len(series.obs.view_index))
    distortion = stage_distortion(stage, series, state, options, series.obs.weight * factor)
    if stage.distortion and distortion == "off":
        views[:, [DMAG, SKEW]] = 0.0
    views = regularise_groups(views, stage_groups(stage, series, state, options, distortion), series.nominal_tilt_deg)
    rank = np.empty(series.n_views, dtype=int)
    rank[np.argsort(series.nominal_tilt_deg, kind="stable")] = np.arange(series.n_views)
    robust_rounds = 0

    def reweight(resid_xy_px):
        """Tukey weights at a nearly converged state (None once they settle or after MAX_ROBUST_ROUNDS)."""
        nonlocal robust_rounds, factor
        if robust_rounds >= MAX_ROBUST_ROUNDS:
            return None
        new_factor = robust_weights(resid_xy_px, options.robust_k, series.obs.view_index, rank)
        # a marker left with fewer than MIN_OBSERVATIONS_PER_MARKER points is fitted by its own position
        # alone (its residuals say nothing): it is rejected whole, as the import drops such markers
        kept = weighted_observations_per_marker(series, new_factor)
        new_factor[(kept < MIN_OBSERVATIONS_PER_MARKER)[series.obs.marker_index]] = 0.0
        robust_rounds += 1
        change = np.max(np.abs(new_factor - factor)) if len(new_factor) else 0.0
        factor = new_factor
        if change < ROBUST_SETTLED:
            return None
        return series.obs.weight * new_factor

    obs = series.obs.with_weight(series.obs.weight * factor)
    layout = stage_layout(stage, series, state, options, obs.weight, distortion)
    sol = solve_bundle(obs, views, points, layout, options.lm, reweight=reweight if robust else None)
    views, points, iterations = sol.views, sol.points_xyz_px, sol.report.iterations
    if robust and rejected_markers(series, series.obs.weight * factor).any():
        # markers the re-weighting rejected whole: the layout holds them (reported as held)
        layout = stage_layout(stage, series, state, options, series.obs.weight * factor, distortion)
    views, points = recentre(series, views, points)
    fit_weight = series.obs.weight * factor
    views = _retie_weak_views(series, views, points, fit_weight, layout, options)
    seconds = time.perf_counter() - t0
    rms, mean = residual_stats(series, views, points, fit_weight)
    report = StageReport(
        name=stage.name, rms=rms, mean_residual=mean, iterations=iterations, seconds=seconds,
        status=sol.report.status, message=sol.report.message, n_params=sol.n_params,
        eliminated=sol.eliminated, robust_rounds=robust_rounds,
        distortion=distortion if stage.distortion else "off",
        measured_to_unknowns=measured_to_unknowns(layout, fit_weight),
    )
    log.info("stage %s: rms %.4f px, mean residual %.4f px, %d iterations, %.4f s (%s)",
             stage.name, rms, mean, iterations, seconds, sol.report.message)
    robust_weight = factor if robust else state.robust_weight
    return AlignmentState(views, points, robust_weight, state.reference_view, state.stages + (report,))


def align(series, options=AlignOptions(), shifts_px=None, threads=1):
    """All stages in order (what the workflow runs rule by rule).

    With distortion asked for (and ``options.distortion_test``), the stages
    that free it are solved a second time without it, and distortion is kept
    only if it predicts left-out points significantly better
    (:func:`tiltflow.selection.choose_distortion`).

    Returns
    -------
    AlignmentState
    """
    # imported here: selection builds on this module (and on diagnostics, which does too)
    from .selection import choose_distortion

    state = initial_state(series, options, shifts_px)
    start = None
    for stage in STAGES:
        if stage.name == "polish" and not options.polish:
            continue
        if stage.distortion and start is None:
            start = state
        state = run_stage(stage, series, state, options, threads)
    if options.distortion_test and start is not None and state.stages[-1].distortion != "off":
        state = choose_distortion(series, state, start, options, threads)
    return state
