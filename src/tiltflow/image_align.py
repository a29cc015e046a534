"""Alignment of a series without markers, from its images: coarse cross-correlation (with the
tilt-axis search), then projection matching coarse to fine (:mod:`tiltflow.stackmatch`).

The markers' model reduces to tilts held at nominal (+ the sheet's offset), one tilt-axis angle
(from the images' axis search) and one shift per view; scale 1.  The outputs are those of a
marker series without the marker tables: ``.xf``, ``.tlt``, ``coarse.xf``, ``views.tsv``,
``summary.json`` (``"alignment": "images"``, key ``projection_matching``).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from . import projection
from .model import Prepared, Table
from .options import CoarseOptions
from .projection import DX, DY, ROT, SCALE, TILT
from .stackmatch import MIN_VIEWS, StackMatchOptions, match_stack

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ImageAlignment:
    """Result of :func:`align_from_images`.

    Attributes
    ----------
    views : ndarray, shape (n_views, 5)
        View parameters (:data:`tiltflow.projection.VIEW_COLUMNS`).
    xf, coarse_xf : ndarray, shape (n_views, 6)
        IMOD transforms raw -> aligned, and the coarse translations.
    tilt_deg : ndarray, shape (n_views,)
    views_table : Table
        ``views.tsv``.
    summary : dict
        ``summary.json``.
    """

    views: np.ndarray
    xf: np.ndarray
    coarse_xf: np.ndarray
    tilt_deg: np.ndarray
    views_table: Table
    summary: dict


def reference_view(tilt_deg, usable):
    """The usable view nearest zero tilt."""
    cand = np.flatnonzero(usable)
    return int(cand[np.argmin(np.abs(np.asarray(tilt_deg)[cand]))])


def align_from_images(prepared: Prepared, views, coarse_options=CoarseOptions(), options=StackMatchOptions(),
                      name="series"):
    """Align a marker-free series from its raw views.

    Parameters
    ----------
    prepared : Prepared
        A series without observations (``prepared.series.obs.n_markers == 0``).
    views : sequence of ndarray (ny, nx)
        The raw stack (e.g. a memory-mapped :class:`tiltflow.io.mrc.Stack`).
    coarse_options : CoarseOptions
    options : StackMatchOptions
    name : str
        Series name for messages and the summary.

    Returns
    -------
    ImageAlignment

    Raises
    ------
    ValueError
        Too few usable views or views too small, naming the series.
    """
    from .coarse import coarse_align

    s = prepared.series
    usable = ~s.excluded
    if usable.sum() < MIN_VIEWS:
        raise ValueError(f"{name}: alignment from images needs at least {MIN_VIEWS} usable views, "
                         f"got {int(usable.sum())}")
    ref = reference_view(s.nominal_tilt_deg, usable)
    t0 = time.perf_counter()
    coarse = coarse_align(views, s.nominal_tilt_deg, s.tilt_axis_deg, ref, coarse_options, usable)
    coarse_seconds = time.perf_counter() - t0
    axis = float(coarse.tilt_axis_deg)
    t0 = time.perf_counter()
    match = match_stack(views, s.nominal_tilt_deg, axis, coarse.shifts_px, options, usable, name)
    match_seconds = time.perf_counter() - t0
    shifts = match.shifts_px - match.shifts_px[ref]
    coarse_shifts = coarse.shifts_px - coarse.shifts_px[ref]
    params = np.zeros((s.n_views, 5))
    params[:, TILT] = np.deg2rad(s.nominal_tilt_deg)
    params[:, ROT] = np.deg2rad(axis)
    params[:, SCALE] = 1.0
    params[:, [DX, DY]] = shifts
    xf = projection.views_to_xf(params)
    coarse_xf = np.zeros((s.n_views, 6))
    coarse_xf[:, 0] = coarse_xf[:, 3] = 1.0
    coarse_xf[:, 4:] = -coarse_shifts
    applied = shifts - coarse_shifts
    status = np.where(s.excluded, "excluded (interpolated)", "matched")
    table = Table({
        "view": np.arange(s.n_views),
        "tilt_nominal": s.nominal_tilt_deg,
        "tilt": s.nominal_tilt_deg,
        "rotation": np.full(s.n_views, axis),
        "scale": np.ones(s.n_views),
        "dx": shifts[:, 0],
        "dy": shifts[:, 1],
        "coarse_dx": coarse_shifts[:, 0],
        "coarse_dy": coarse_shifts[:, 1],
        "match_dx": applied[:, 0],
        "match_dy": applied[:, 1],
        "coarse_peak": coarse.peak,
        "ncc_before": match.ncc_before,
        "ncc_after": match.ncc_after,
        "status": status,
    })
    ok = usable & np.isfinite(match.ncc_after)
    pm = {
        "converged": match.converged,
        "thickness_px": match.thickness_px,
        "levels": match.levels,
        "seconds": match_seconds,
        "mean_ncc_before": float(np.nanmean(match.ncc_before[ok])),
        "mean_ncc_after": float(np.nanmean(match.ncc_after[ok])),
        "min_ncc_after": float(np.nanmin(match.ncc_after[ok])),
        "worst_view": int(np.flatnonzero(ok)[np.nanargmin(match.ncc_after[ok])]),
        "max_shift_applied_px": float(np.abs(applied[usable]).max()),
        "options": dataclasses.asdict(options),
    }
    if not match.converged:
        log.warning("%s: projection matching did not converge at every level; the last estimate is kept "
                    "(summary.json -> projection_matching -> levels)", name)
    rounds = sum(level["rounds"] for level in match.levels)
    summary = {
        "series": name,
        "alignment": "images",
        "stages": [{"name": "projection_matching", "rms": None, "mean_residual": None, "iterations": rounds,
                    "seconds": match_seconds}],
        "rms": None,
        "mean_residual": None,
        "solve_seconds": coarse_seconds + match_seconds,
        "leave_out_error": None,
        "n_markers": 0,
        "n_views": int(s.n_views),
        "n_observations": 0,
        "n_views_aligned": int(usable.sum()),
        "reference_view": ref,
        "tilt_axis_deg_mean": axis,
        "tilt_offset_deg_mean": float(np.mean(s.nominal_tilt_deg - prepared.raw_tilt_deg)),
        "scale_range": [1.0, 1.0],
        "image_size": [int(s.width), int(s.height)],
        "pixel_size_angstrom": prepared.pixel_size_angstrom,
        "excluded_views": prepared.excluded_views,
        "coarse": {"source": "images", "seconds": coarse_seconds, "binning": coarse.binning,
                   "peak": [float(p) if np.isfinite(p) else None for p in coarse.peak],
                   "weak_views": coarse.weak_views, "axis_search": coarse.axis_search},
        "projection_matching": pm,
        "status": "converged" if match.converged else "projection matching did not converge (last estimate kept)",
    }
    if coarse.axis_search:
        summary["tilt_axis_image_deg"] = coarse.axis_search["estimate_deg"]
        summary["tilt_axis_image_uncertainty_deg"] = coarse.axis_search["uncertainty_deg"]
    return ImageAlignment(params, xf, coarse_xf, s.nominal_tilt_deg.copy(), table, summary)


#: A view's image correction is kept only when it exceeds this many standard deviations of what
#: it would be by chance (the matching's own scatter and the marker solution's standard error).
ACCEPT_SIGMAS = 3.0


@dataclasses.dataclass(frozen=True)
class MarkerRefinement:
    """Result of :func:`refine_with_markers`.

    Attributes
    ----------
    xf : ndarray, shape (n_views, 6)
        The marker solution's transforms with the accepted corrections.
    proposed_px, applied_px : ndarray, shape (n_views, 2)
        Per view, the shift correction the images propose (gauge removed)
        and the one applied (zero where not accepted), aligned-frame pixels
        (x across the tilt axis, y along it); the aligned content moves by
        ``-applied`` (``D' = D - applied``).
    threshold_px : ndarray, shape (n_views,)
        The length a proposal must exceed to be accepted.
    accepted : ndarray of bool, shape (n_views,)
    ncc_before, ncc_after : ndarray, shape (n_views,)
        Leave-one-out NCC of each view with its re-projection (finest level)
        with the marker shifts and with the matched shifts.
    report : dict
        ``summary.json`` -> ``projection_matching``.
    """

    xf: np.ndarray
    proposed_px: np.ndarray
    applied_px: np.ndarray
    threshold_px: np.ndarray
    accepted: np.ndarray
    ncc_before: np.ndarray
    ncc_after: np.ndarray
    report: dict


def refine_with_markers(views, xf, tilt_deg, usable, se_px, solved, options=StackMatchOptions(), name="series"):
    """Per-view shift corrections of a marker solution from its images (the markers stay the
    authority for tilt, rotation and scale).

    Projection matching starts from the marker solution (its transforms and
    solved tilts) and proposes a shift correction per view.  What no
    alignment can determine -- a common offset across the axis, ``x0 cos
    t + z0 sin t`` and a common offset along it -- is fitted on the views the
    markers solve and removed.  The scatter of the remaining proposals on
    those views is the matching's own noise ``sigma`` (robust: median length
    / 1.1774, at least 0.02 px).  A view's correction is accepted only when
    its length exceeds ``ACCEPT_SIGMAS * sqrt(sigma^2 + se^2)`` (``se`` the
    marker solution's standard error of that view's shift; 0 where the
    markers do not determine it) *and* its leave-one-out NCC improves; a
    well-aligned series is therefore left as the markers solved it, and
    views the markers got wrong (interpolated, tied, mis-tracked) are moved.

    Parameters
    ----------
    views : sequence of ndarray (ny, nx)
        The raw stack.
    xf : ndarray, shape (n_views, 6)
        The marker solution's raw -> aligned transforms (``{series}.xf``).
    tilt_deg : ndarray, shape (n_views,)
        Its solved tilts.
    usable : ndarray of bool, shape (n_views,)
    se_px : ndarray, shape (n_views,)
        Standard error of each view's shift (aligned-frame pixels; NaN where undetermined).
    solved : ndarray of bool, shape (n_views,)
        Views whose shifts the markers solve (the gauge and the noise are fitted on them).
    options : StackMatchOptions
    name : str

    Returns
    -------
    MarkerRefinement
    """
    xf = np.asarray(xf, dtype=float)
    n = len(xf)
    a = xf[:, :4].reshape(n, 2, 2)
    linear = np.linalg.inv(a)
    start = -np.einsum("nij,nj->ni", linear, xf[:, 4:])
    t0 = time.perf_counter()
    match = match_stack(views, tilt_deg, 0.0, start, options, usable, name, linear=linear)
    seconds = time.perf_counter() - t0
    proposed = np.einsum("nij,nj->ni", a, match.shifts_px - start)
    fit = np.asarray(solved, dtype=bool) & np.asarray(usable, dtype=bool)
    if fit.sum() < 4:
        fit = np.asarray(usable, dtype=bool)
    t = np.deg2rad(np.asarray(tilt_deg, dtype=float))
    basis = np.column_stack([np.ones(n), np.cos(t), np.sin(t)])
    coef = np.linalg.lstsq(basis[fit], proposed[fit, 0], rcond=None)[0]
    proposed[:, 0] -= basis @ coef
    proposed[:, 1] -= proposed[fit, 1].mean()
    length = np.hypot(proposed[:, 0], proposed[:, 1])
    sigma = max(0.02, float(np.median(length[fit])) / np.sqrt(2.0 * np.log(2.0)))  # median of a 2D Gaussian length
    se = np.nan_to_num(np.asarray(se_px, dtype=float), nan=0.0, posinf=0.0)
    threshold = ACCEPT_SIGMAS * np.sqrt(sigma**2 + se**2)
    better = np.nan_to_num(match.ncc_after, nan=-1.0) > np.nan_to_num(match.ncc_before, nan=1.0)
    accepted = np.asarray(usable, dtype=bool) & (length > threshold) & better
    applied = np.where(accepted[:, None], proposed, 0.0)
    new = xf.copy()
    new[:, 4:] -= applied
    for j in np.flatnonzero(accepted):
        log.info("%s: view %d moved by (%.2f, %.2f) px from its images (threshold %.2f px, NCC %.3f -> %.3f)",
                 name, j, applied[j, 0], applied[j, 1], threshold[j], match.ncc_before[j], match.ncc_after[j])
    report = {
        "with_markers": True,
        "converged": match.converged,
        "thickness_px": match.thickness_px,
        "levels": match.levels,
        "seconds": seconds,
        "noise_px": sigma,
        "accept_sigmas": ACCEPT_SIGMAS,
        "accepted_views": [int(j) for j in np.flatnonzero(accepted)],
        "max_shift_applied_px": float(np.abs(applied).max()) if accepted.any() else 0.0,
        "mean_ncc_before": float(np.nanmean(match.ncc_before)),
        "mean_ncc_after": float(np.nanmean(match.ncc_after)),
        "options": dataclasses.asdict(options),
    }
    log.info("%s: image refinement of the marker solution: %d of %d views corrected (noise %.3f px)",
             name, int(accepted.sum()), int(np.sum(usable)), sigma)
    return MarkerRefinement(new, proposed, applied, threshold, accepted, match.ncc_before, match.ncc_after, report)


def refine_marker_result(prepared: Prepared, result, views, options=StackMatchOptions(), name="series"):
    """A marker :class:`tiltflow.outputs.SeriesResult` refined from the raw ``views``
    (:func:`refine_with_markers` with the result's standard errors and solved views,
    then :func:`with_image_refinement`)."""
    table = result.views_table
    se = np.hypot(table["se_dx"], table["se_dy"]) / table["scale"]
    solved = np.asarray(table["status"]) == "solved"
    refinement = refine_with_markers(views, result.xf, result.tilt_deg, ~prepared.series.excluded, se, solved,
                                     options, name)
    return with_image_refinement(result, refinement, prepared)


def with_image_refinement(result, refinement: MarkerRefinement, prepared: Prepared):
    """A marker :class:`tiltflow.outputs.SeriesResult` with the accepted image corrections:
    ``.xf``, the views' shifts, ``views.tsv`` columns (``match_dx``, ``match_dy``, proposed,
    threshold, NCC before/after, ``image_correction``) and ``summary.json`` ->
    ``projection_matching`` (with the marker residuals the corrections cost)."""
    from .align import residual_summary

    o = prepared.series.obs
    views = result.views.copy()
    lin = projection.rotation_matrix(views[:, ROT]) * views[:, SCALE][:, None, None]
    views[:, [DX, DY]] += np.einsum("nij,nj->ni", lin, refinement.applied_px)
    resid = projection.project(result.points_xyz_px, views, o.marker_index, o.view_index, o.centre_xy_px) - o.xy_px
    used = result.fiducials["weight"][o.marker_index * prepared.series.n_views + o.view_index] > 0
    rms, mean = residual_summary(resid, used)
    table = dict(result.views_table)
    table.update({
        "dx": views[:, DX], "dy": views[:, DY],
        "match_dx": refinement.applied_px[:, 0], "match_dy": refinement.applied_px[:, 1],
        "proposed_dx": refinement.proposed_px[:, 0], "proposed_dy": refinement.proposed_px[:, 1],
        "correction_threshold": refinement.threshold_px,
        "ncc_before": refinement.ncc_before, "ncc_after": refinement.ncc_after,
        "image_correction": np.where(refinement.accepted, "applied", "kept markers"),
    })
    summary = dict(result.summary)
    summary["projection_matching"] = {**refinement.report, "marker_rms_with_corrections": rms,
                                      "marker_mean_residual_with_corrections": mean}
    return dataclasses.replace(result, xf=refinement.xf, views=views, views_table=Table(table), summary=summary)
