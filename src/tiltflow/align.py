"""Staged fiducial alignment (Jou et al.): coarse, initial, main, tilt, polish.

Every stage is a pure function ``(series, state, options) -> state``; the
workflow runs each as its own rule and stores the state between them.

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
from .projection import DX, DY, ROT, SCALE, TILT
from .solver import Layout, LMOptions, Observations, solve_bundle, warm_up

log = logging.getLogger(__name__)

STAGES = ("initial", "main", "tilt", "polish")
ROTATION_MODES = ("per_view", "single", "fixed")
SCALE_MODES = ("per_view", "fixed")
TILT_MODES = ("per_view", "offset", "fixed")
#: Views with fewer observed markers than this are tied to their neighbours.
MIN_MARKERS_PER_VIEW = 3


@dataclasses.dataclass(frozen=True)
class AlignOptions:
    """What the alignment solves for.

    Attributes
    ----------
    rotation : {"per_view", "single", "fixed"}
        In-plane rotation (tilt-axis angle): one per view, one for all
        views, or held at the sheet's ``tilt_axis_angle``.
    scale : {"per_view", "fixed"}
        Magnification per view (reference view held at 1) or all 1.
    tilt : {"per_view", "offset", "fixed"}
        Tilt angles per view, one offset added to all nominal tilts, or
        held at nominal (+ ``tilt_offset``).
    reference_view : int or None
        0-based view whose scale (and tilt) fix the gauge and whose markers
        seed the initial stage; None picks the view nearest zero tilt.
    polish : bool
        Run the joint stage with everything free at the end.
    robust : bool
        Down-weight outliers with Tukey's bisquare (IMOD's scheme) in the
        main, tilt and polish stages.
    robust_k : float
        Tukey cut-off for residual *lengths*, in units of the robust
        per-coordinate scale.  9 keeps clean Gaussian data within 1 % of
        the plain least-squares accuracy (measured on the acceptance
        simulations; 4.685, the 1D textbook value, lost 5-13 % there) and
        still gives mis-clicks of 9 sigma or more zero weight.
    lm : LMOptions
    """

    rotation: str = "per_view"
    scale: str = "per_view"
    tilt: str = "per_view"
    reference_view: int | None = None
    polish: bool = True
    robust: bool = True
    robust_k: float = 9.0
    lm: LMOptions = LMOptions()

    def __post_init__(self):
        for name, allowed in (("rotation", ROTATION_MODES), ("scale", SCALE_MODES), ("tilt", TILT_MODES)):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        if not self.robust_k > 0:
            raise ValueError(f"robust_k must be > 0, got {self.robust_k!r}")


@dataclasses.dataclass(frozen=True)
class Series:
    """One tilt series prepared for alignment.

    Attributes
    ----------
    obs : Observations
        All usable observations; ``view_index`` indexes the input tilt list
        (excluded views have no observations), ``marker_index`` indexes
        ``marker_ids``.
    marker_ids : ndarray of int, shape (n_markers,)
        The input's marker ids.
    nominal_tilt_deg : ndarray, shape (n_views,)
        Tilt angles of the tilt file plus ``tilt_offset``.
    tilt_axis_deg : float
        Starting tilt-axis angle (IMOD RotationAngle convention).
    width, height : int
        Image size in pixels.
    excluded : ndarray of bool, shape (n_views,)
        Views left out by ``exclude_views``.
    """

    obs: Observations
    marker_ids: np.ndarray
    nominal_tilt_deg: np.ndarray
    tilt_axis_deg: float
    width: int
    height: int
    excluded: np.ndarray

    @property
    def n_views(self):
        return len(self.nominal_tilt_deg)

    @property
    def centre_xy_px(self):
        return (self.width / 2.0, self.height / 2.0)

    def markers_per_view(self):
        """Number of observed markers in each view, shape (n_views,)."""
        return np.bincount(self.obs.view_index, minlength=self.n_views)

    def view_classes(self):
        """Masks ``(strong, weak, empty)`` of views, shape (n_views,) each.

        Strong views have at least :data:`MIN_MARKERS_PER_VIEW` markers and
        get all their parameters solved; weak views (1-2 markers) get their
        shifts (and, with 2 markers, their rotation) solved, with tilt and
        scale tied to the neighbouring strong views; empty views (no
        markers, or excluded) are interpolated entirely.
        """
        n = self.markers_per_view()
        strong = n >= MIN_MARKERS_PER_VIEW
        empty = n == 0
        return strong, ~strong & ~empty, empty


@dataclasses.dataclass(frozen=True)
class StageReport:
    """Outcome of one stage (the ``stages`` entries of ``summary.json``)."""

    name: str
    rms: float
    mean_residual: float
    iterations: int
    seconds: float
    status: int = 1
    message: str = ""
    n_params: int = 0
    eliminated: str = ""
    robust_rounds: int = 0

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class AlignmentState:
    """The solution after some stages.

    Attributes
    ----------
    views : ndarray, shape (n_views, 5)
        View parameters (:data:`tiltflow.projection.VIEW_COLUMNS`), for
        every view of the tilt list.
    points_xyz_px : ndarray, shape (n_markers, 3)
        Marker positions, centroid at the origin.
    weight : ndarray, shape (n_obs,)
        Weight of each observation in the last stage (robust fitting).
    reference_view : int
    stages : tuple of StageReport
    """

    views: np.ndarray
    points_xyz_px: np.ndarray
    weight: np.ndarray
    reference_view: int
    stages: tuple = ()


def residual_stats(series, views, points, weight=None):
    """RMS per coordinate (the paper's L) and mean residual vector length.

    Observations with zero weight are left out.  Returns ``(rms, mean)``.
    """
    pred = projection.project(points, views, series.obs.marker_index, series.obs.view_index, series.centre_xy_px)
    r = pred - series.obs.xy_px
    use = np.ones(len(r), dtype=bool) if weight is None else weight > 0
    r = r[use]
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

    Walking outwards from the reference view in tilt order, each view's
    shift is the previous view's plus the mean displacement of the markers
    both views share; views sharing none keep the previous shift.

    Returns
    -------
    ndarray, shape (n_views, 2)
        Shift of each view relative to the reference view, pixels.
    """
    n_v = series.n_views
    obs = series.obs
    pos = np.full((series.obs.n_markers, n_v, 2), np.nan)
    pos[obs.marker_index, obs.view_index] = obs.xy_px
    order = np.argsort(series.nominal_tilt_deg, kind="stable")
    rank = np.empty(n_v, dtype=int)
    rank[order] = np.arange(n_v)
    shifts = np.zeros((n_v, 2))
    r0 = rank[reference_view]
    for direction in (1, -1):
        last_view = reference_view
        r = r0 + direction
        while 0 <= r < n_v:
            v = order[r]
            if series.excluded[v] or not np.isfinite(pos[:, v, 0]).any():
                shifts[v] = shifts[last_view]
                r += direction
                continue
            d = pos[:, v] - pos[:, last_view]
            ok = np.isfinite(d[:, 0])
            shifts[v] = shifts[last_view] + (d[ok].mean(axis=0) if ok.any() else 0.0)
            last_view = v
            r += direction
    return shifts


def interpolate_views(views, nominal_tilt_deg, source, columns=(TILT, ROT, SCALE, DX, DY)):
    """Fill the views not in ``source`` by linear interpolation over nominal tilt.

    Tilts are interpolated as deviations from nominal.  Returns a copy.
    """
    views = views.copy()
    src = np.flatnonzero(source)
    dst = np.flatnonzero(~np.asarray(source, dtype=bool))
    if not len(src) or not len(dst):
        return views
    nominal = np.deg2rad(nominal_tilt_deg)
    order = np.argsort(nominal[src], kind="stable")
    xs = nominal[src][order]
    for col in columns:
        ys = views[src, col][order]
        if col == TILT:
            ys = ys - xs
        vals = np.interp(nominal[dst], xs, ys)
        views[dst, col] = vals + nominal[dst] if col == TILT else vals
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
    views = np.zeros((n_v, 5))
    views[:, TILT] = np.deg2rad(series.nominal_tilt_deg)
    views[:, ROT] = np.deg2rad(series.tilt_axis_deg)
    views[:, SCALE] = 1.0
    views[:, DX:] = shifts_px
    obs = series.obs
    c = np.asarray(series.centre_xy_px)
    # de-rotate every observation into (u, v)
    rinv = projection.rotation_matrix(-views[obs.view_index, ROT])
    uv = np.einsum("nij,nj->ni", rinv, obs.xy_px - c - views[obs.view_index, DX:])
    tilt = views[obs.view_index, TILT]
    # per marker: the observation with the smallest |tilt - tilt_ref| wins
    key = np.abs(tilt - views[ref, TILT])
    order = np.lexsort((key, obs.marker_index))
    first = order[np.r_[True, np.diff(obs.marker_index[order]) != 0]]
    points = np.zeros((obs.n_markers, 3))
    points[obs.marker_index[first], 0] = uv[first, 0] / np.cos(tilt[first])
    points[obs.marker_index[first], 1] = uv[first, 1]
    return AlignmentState(views, points, obs.weight.copy(), ref, ())


def _gauge_marker(series):
    counts = np.bincount(series.obs.marker_index, minlength=series.obs.n_markers)
    return int(np.argmax(counts))


def stage_layout(stage, series, state, options):
    """The free parameters of ``stage`` (see the module docstring for the gauge).

    Returns
    -------
    layout : Layout
    """
    strong, weak, empty = series.view_classes()
    has_obs = ~empty
    ref = state.reference_view
    n_v, n_m = series.n_views, series.obs.n_markers
    view_free = np.zeros((n_v, 5), dtype=bool)
    view_free[has_obs, DX] = True
    view_free[has_obs, DY] = True
    point_free = np.zeros((n_m, 3), dtype=bool)
    shared = []
    if options.rotation == "per_view":
        # two markers (4 coordinates) also determine a rotation besides the shifts
        view_free[strong | (series.markers_per_view() == 2), ROT] = True
    elif options.rotation == "single":
        view_free[has_obs, ROT] = True
        shared.append(ROT)
    k = _gauge_marker(series)
    if stage == "initial":
        point_free[:, :] = True
        in_ref = np.unique(series.obs.marker_index[series.obs.view_index == ref])
        point_free[in_ref, :2] = False
        point_free[k, :] = False
    elif stage == "main":
        point_free[:, :] = True
        point_free[k, :] = False
        if options.scale == "per_view":
            view_free[strong, SCALE] = True
            view_free[ref, SCALE] = False
    elif stage == "tilt":
        if options.scale == "per_view":
            view_free[strong, SCALE] = True
            view_free[ref, SCALE] = False  # the reference view keeps scale 1 throughout
        if options.tilt == "per_view":
            view_free[strong, TILT] = True
        elif options.tilt == "offset":
            view_free[has_obs, TILT] = True
            shared.append(TILT)
    elif stage == "polish":
        point_free[:, :] = True
        point_free[k, :] = False
        if options.scale == "per_view":
            view_free[strong, SCALE] = True
            view_free[ref, SCALE] = False
        if options.tilt == "per_view":
            view_free[strong, TILT] = True
            view_free[ref, TILT] = False
        # a tilt offset is a pure gauge once the 3D positions are free
    else:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}; got {stage!r}")
    return Layout.from_masks(view_free, point_free, shared)


def tie_weak_views(series, views):
    """Set tilt and scale of weak and empty views from their neighbours, the
    rotation of views with fewer than 2 markers, and the shifts of empty
    views.  Returns a copy."""
    strong, weak, empty = series.view_classes()
    views = interpolate_views(views, series.nominal_tilt_deg, strong, (TILT, SCALE))
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
    views = views.copy()
    u = t[0] * np.cos(views[:, TILT]) + t[2] * np.sin(views[:, TILT])
    r = projection.rotation_matrix(views[:, ROT])
    d = views[:, SCALE][:, None] * np.einsum("nij,nj->ni", r, np.column_stack([u, np.full_like(u, t[1])]))
    views[:, DX:] += d
    return views, points - t


def output_frame(series, views, points):
    """Re-express the solution so that the aligned frame keeps the raw field of view.

    The x, y origin is chosen so that the view shifts of the views with
    observations have zero mean in the least-squares sense; z keeps the
    marker centroid at 0.  Predictions are unchanged.
    Returns ``(views, points)``.
    """
    _, _, empty = series.view_classes()
    use = ~empty
    # d_j(t) = d_j + s_j R_j (t_x cos th_j, t_y): linear in (t_x, t_y)
    r = projection.rotation_matrix(views[use, ROT]) * views[use, SCALE][:, None, None]
    a = np.stack([r[:, :, 0] * np.cos(views[use, TILT])[:, None], r[:, :, 1]], axis=2).reshape(-1, 2)
    b = -views[use][:, DX:].reshape(-1)
    t, *_ = np.linalg.lstsq(a, b, rcond=None)
    return translate(views, points, [t[0], t[1], 0.0])


def robust_weights(resid_xy_px, k=9.0):
    """Tukey bisquare weights of residual vectors (IMOD's robust scheme).

    The residual scale is estimated robustly as ``sigma = median(|r|) /
    1.1774`` (the median of a 2D Gaussian residual length is
    ``sqrt(2 ln 2) sigma``); weights are ``(1 - (|r| / (k sigma))^2)^2``
    below the cut-off and 0 above it.

    Parameters
    ----------
    resid_xy_px : ndarray, shape (n_obs, 2)
    k : float
        Cut-off in units of sigma.

    Returns
    -------
    ndarray, shape (n_obs,)
        Weights in [0, 1].
    """
    length = np.hypot(resid_xy_px[:, 0], resid_xy_px[:, 1])
    if not len(length):
        return np.ones(0)
    sigma = np.median(length) / np.sqrt(2.0 * np.log(2.0))
    if sigma <= 0:
        return np.ones(len(length))
    z = length / (k * sigma)
    w = np.where(z < 1.0, (1.0 - z**2) ** 2, 0.0)
    return w


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
    view_free = (layout.view_map >= 0) & weak[:, None]
    view_free[:, [TILT, SCALE]] = False
    if options.rotation != "per_view":
        view_free[:, ROT] = False
    if not view_free.any():
        return views
    sub = Layout.from_masks(view_free, np.zeros((series.obs.n_markers, 3), dtype=bool))
    sol = solve_bundle(series.obs.with_weight(weight), views, points, sub, options.lm)
    return sol.views


def run_stage(stage, series, state, options):
    """Run one L-M stage from ``state``.

    Returns
    -------
    AlignmentState
        With the stage's solution (centroid gauge) and its report appended.
    """
    warm_up()  # JIT loading is not solve time
    t0 = time.perf_counter()
    views = tie_weak_views(series, state.views)
    if stage == "initial":
        views[:, SCALE] = 1.0
        views[:, TILT] = np.deg2rad(series.nominal_tilt_deg)
        if options.rotation == "single":
            views[:, ROT] = np.mean(views[:, ROT])
    points = state.points_xyz_px
    layout = stage_layout(stage, series, state, options)
    base_weight = series.obs.weight
    weight = state.weight if (options.robust and stage != "initial") else base_weight
    robust_rounds = 0
    iterations = 0
    while True:
        obs = series.obs.with_weight(base_weight * weight)
        sol = solve_bundle(obs, views, points, layout, options.lm)
        views, points = sol.views, sol.points_xyz_px
        iterations += sol.report.iterations
        if not options.robust or stage == "initial" or robust_rounds >= 10:
            break
        pred = projection.project(points, views, series.obs.marker_index, series.obs.view_index, series.centre_xy_px)
        new_weight = robust_weights(pred - series.obs.xy_px, options.robust_k)
        robust_rounds += 1
        change = np.max(np.abs(new_weight - weight)) if len(weight) else 0.0
        weight = new_weight
        if change < 1e-3:
            break
    views, points = recentre(series, views, points)
    views = _retie_weak_views(series, views, points, base_weight * weight, layout, options)
    seconds = time.perf_counter() - t0
    w_eff = base_weight * weight
    rms, mean = residual_stats(series, views, points, w_eff)
    report = StageReport(
        name=stage, rms=rms, mean_residual=mean, iterations=iterations, seconds=seconds,
        status=sol.report.status, message=sol.report.message, n_params=sol.n_params,
        eliminated=sol.eliminated, robust_rounds=robust_rounds,
    )
    log.info("stage %s: rms %.4f px, mean residual %.4f px, %d iterations, %.4f s (%s)",
             stage, rms, mean, iterations, seconds, sol.report.message)
    return AlignmentState(views, points, weight, state.reference_view, state.stages + (report,))


def align(series, options=AlignOptions(), shifts_px=None):
    """All stages in order (what the workflow runs rule by rule).

    Returns
    -------
    AlignmentState
    """
    state = initial_state(series, options, shifts_px)
    for stage in STAGES:
        if stage == "polish" and not options.polish:
            continue
        state = run_stage(stage, series, state, options)
    return state
