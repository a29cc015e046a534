"""The per-series results: IMOD transforms, tilts, 3D positions, fiducial
table and summary, computed from a prepared series and its final state."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from . import projection
from .align import output_frame, rejected_markers, residual_summary
from .diagnostics import covariance, leave_out, standard_errors
from .model import AlignmentState, Prepared, Table
from .options import AlignOptions
from .projection import DMAG, ROT, SCALE, SKEW, TILT
from .stages import get_stage
from .surfaces import fit_surfaces

log = logging.getLogger(__name__)

FIDUCIAL_COLUMNS = ["marker", "view", "tilt", "x", "y", "x_fit", "y_fit", "resid_x", "resid_y", "weight"]


@dataclasses.dataclass(frozen=True)
class SeriesResult:
    """Everything written to ``results/{series}/``.

    Attributes
    ----------
    views : ndarray, shape (n_views, 7)
        Final view parameters in the output frame.
    points_xyz_px : ndarray, shape (n_markers, 3)
        Final marker positions in the output frame (origin on the tilt axis
        at the centre of the aligned images).
    xf : ndarray, shape (n_views, 6)
        Raw (or, without ``prexg``, marker-image) to aligned transforms.
    tilt_deg : ndarray, shape (n_views,)
    contour_ids : ndarray of int, shape (n_markers,)
        Ids for the ``.xyz`` file (the marker id where it is an integer).
    fiducials : Table
        The marker x view grid, columns :data:`FIDUCIAL_COLUMNS`.
    summary : dict
        ``summary.json``.
    views_table, markers_table, large_residuals : Table
        ``views.tsv``, ``markers.tsv`` and ``large_residuals.tsv``.
    observations : Table
        One row per observation in input order: ``x y view resid_x resid_y``
        (IMOD's ``.resid``).
    zfac : ndarray, shape (n_views, 2)
        IMOD's ``.zfac`` (:func:`tiltflow.projection.z_factors`; 0 without distortion).
    """

    views: np.ndarray
    points_xyz_px: np.ndarray
    xf: np.ndarray
    tilt_deg: np.ndarray
    contour_ids: np.ndarray
    fiducials: Table
    summary: dict
    views_table: Table = None
    markers_table: Table = None
    large_residuals: Table = None
    observations: Table = None
    zfac: np.ndarray = None


def contour_ids(marker_ids):
    """Integer ids for IMOD files: the marker ids if all are integers, else 1..n."""
    try:
        ids = np.array([int(m) for m in marker_ids])
        if len(set(ids.tolist())) == len(ids):
            return ids
    except ValueError:
        pass
    return np.arange(1, len(marker_ids) + 1)


def grid_prediction(series, views, points):
    """The model's prediction for every (marker, view) pair, shape (n_markers * n_views, 2).

    Row ``m * n_views + v`` is marker ``m`` in view ``v``.
    """
    n_m, n_v = series.obs.n_markers, series.n_views
    mi, vi = np.meshgrid(np.arange(n_m), np.arange(n_v), indexing="ij")
    return projection.project(points, views, mi.ravel(), vi.ravel(), series.centre_xy_px)


def fiducial_table(prepared: Prepared, views, points, weight, fit=None):
    """One row per (marker, view) of the whole grid.

    ``x y`` are empty where the marker was not observed, ``x_fit y_fit``
    are the model's prediction everywhere, ``resid = fit - observed``
    (IMOD's sign), ``weight`` the observation's weight in the final fit
    (0 for points in excluded views; empty where not observed).  ``fit``
    is :func:`grid_prediction`, if already computed.
    """
    s = prepared.series
    n_m, n_v = s.obs.n_markers, s.n_views
    mi, vi = np.meshgrid(np.arange(n_m), np.arange(n_v), indexing="ij")
    mi, vi = mi.ravel(), vi.ravel()
    fit = grid_prediction(s, views, points) if fit is None else fit
    obs_xy = np.full((n_m * n_v, 2), np.nan)
    w = np.full(n_m * n_v, np.nan)
    flat = s.obs.marker_index * n_v + s.obs.view_index
    obs_xy[flat] = s.obs.xy_px
    w[flat] = weight
    resid = fit - obs_xy
    return Table({
        "marker": s.marker_ids[mi],
        "view": vi,
        "tilt": np.rad2deg(views[vi, TILT]),
        "x": obs_xy[:, 0],
        "y": obs_xy[:, 1],
        "x_fit": fit[:, 0],
        "y_fit": fit[:, 1],
        "resid_x": resid[:, 0],
        "resid_y": resid[:, 1],
        "weight": w,
    })


def build_result(prepared: Prepared, state: AlignmentState, options=AlignOptions(), series_name="", coarse=None):
    """Compute all per-series outputs from the final state.

    ``options`` says which parameters the model has (for the leave-out
    error, which re-fits the full model without each observation);
    ``coarse`` is the coarse stage's report (source, peaks, axis search).
    """
    s = prepared.series
    weight = state.fit_weight(s.obs)
    cov = covariance(s, state, options)
    loo = leave_out(s, state, options, cov)
    views, points = output_frame(s, state.views, state.points_xyz_px)
    xf = projection.views_to_xf(views)
    if prepared.prexg is not None:
        xf = projection.xf_product(prepared.prexg, xf)
    tilt_deg = np.rad2deg(views[:, TILT])
    grid = grid_prediction(s, views, points)
    fid = fiducial_table(prepared, views, points, weight, grid)
    resid = grid[s.obs.marker_index * s.n_views + s.obs.view_index] - s.obs.xy_px  # fit - observed, (n_obs, 2)
    used = weight > 0
    rms, mean = residual_summary(resid, used)
    strong, weak, empty = s.view_classes()
    measured, unknowns = 2 * int(used.sum()), int(cov.layout.n_params)
    summary = {
        "series": series_name,
        "stages": [st.to_dict() for st in state.stages],
        "rms": rms,
        "mean_residual": mean,
        "solve_seconds": float(sum(st.seconds for st in state.stages)),
        "leave_out_error": loo.error,
        "leave_out_error_imod": loo.imod_error,
        "leave_out_undetermined": int(loo.undetermined.sum()),
        "n_markers": int(s.obs.n_markers),
        "n_views": int(s.n_views),
        "n_observations": int(len(s.obs.view_index)),
        "n_observations_used": int(used.sum()),
        # IMOD's "ratio of total measured values to all unknowns": 2 coordinates per used point
        # against the full model's free parameters (views and 3D points, gauge held)
        "measured_to_unknowns": {"measured": measured, "unknowns": unknowns,
                                 "ratio": measured / unknowns if unknowns else None},
        "n_views_aligned": int((~empty).sum()),
        "reference_view": int(state.reference_view),
        "tilt_axis_deg_mean": float(np.rad2deg(np.mean(views[~empty, ROT]))),
        "tilt_offset_deg_mean": float(np.mean(tilt_deg[~empty] - s.nominal_tilt_deg[~empty])),
        "scale_range": [float(views[~empty, SCALE].min()), float(views[~empty, SCALE].max())],
        "image_size": [int(s.width), int(s.height)],
        "pixel_size_angstrom": prepared.pixel_size_angstrom,
        "dropped_markers": prepared.dropped_markers,
        "weak_views": prepared.weak_views,
        "weak_view_handling": "shifts (and with 2 markers the rotation) solved; tilt and scale tied to the neighbouring views (interpolated over tilt)",
        "empty_views": prepared.empty_views,
        "excluded_views": prepared.excluded_views,
        "empty_view_handling": "all parameters interpolated over tilt from neighbouring views",
        "rejected_markers": [
            {"marker": str(s.marker_ids[m]), "observations": int((s.obs.marker_index == m).sum()),
             "reason": "the robust fit gave every observation weight 0 (a mis-clicked contour?); its position is "
                       "held, its points are in large_residuals.tsv with weight 0"}
            for m in np.flatnonzero(rejected_markers(s, weight))
        ],
        "downweighted_observations": int(((weight > 0) & (weight < 0.5)).sum()),
        "downweighted": [
            {"marker": str(s.marker_ids[s.obs.marker_index[k]]), "view": int(s.obs.view_index[k]),
             "weight": float(weight[k])}
            for k in np.flatnonzero(weight < 0.5)
        ],
        "status": state.stages[-1].message if state.stages else "",
        "distortion": _distortion_summary(state, views, ~empty),
    }
    if coarse:
        summary["coarse"] = coarse
        search = coarse.get("axis_search")
        if search:
            summary["tilt_axis_image_deg"] = search["estimate_deg"]
            summary["tilt_axis_image_uncertainty_deg"] = search["uncertainty_deg"]
    for item in summary["rejected_markers"]:
        log.warning("marker %s: all %d observations rejected by the robust fit; dropped from the solution",
                    item["marker"], item["observations"])
    se = standard_errors(s, state, options, cov)
    surf = fit_surfaces(points) if s.obs.n_markers >= 3 else None
    if surf is not None:
        summary["surfaces"] = surf.to_dict()
    views_table, markers_table, large = _tables(prepared, weight, views, points, resid, loo, se, surf)
    summary["n_large_residuals"] = large.n_rows
    observations = Table({"x": s.obs.xy_px[:, 0], "y": s.obs.xy_px[:, 1], "view": s.obs.view_index,
                          "resid_x": resid[:, 0], "resid_y": resid[:, 1]})
    return SeriesResult(views, points, xf, tilt_deg, contour_ids(s.marker_ids), fid, summary,
                        views_table, markers_table, large, observations, projection.z_factors(views))


def _distortion_summary(state, views, aligned):
    """``summary.json`` -> ``distortion``: the mode solved and the range of stretch and skew."""
    solved = [st.distortion for st in state.stages if st.distortion != "off"]
    fell_back = [st.name for st in state.stages if st.distortion == "off" and get_stage(st.name).distortion]
    out = {
        "mode": state.stages[-1].distortion if state.stages else "off",
        "dmag_range": [float(views[aligned, DMAG].min()), float(views[aligned, DMAG].max())],
        "skew_range_deg": [float(np.rad2deg(views[aligned, SKEW].min())), float(np.rad2deg(views[aligned, SKEW].max()))],
        "measured_to_unknowns_last_stage": state.stages[-1].measured_to_unknowns if state.stages else None,
    }
    if solved and fell_back:
        out["note"] = f"stages {fell_back} solved without distortion"
    test = state.stages[-1].distortion_test if state.stages else None
    if test is not None:
        # the leave-out test (tiltflow.selection): the solution not used, and which predicts better
        out["test"] = test
        out["requested"] = test["mode"]
        if test["kept"]:
            out["without"] = {"stage": test["stage"], "mean_residual": test["mean_residual_without"],
                              "rms": test["rms_without"], "leave_out_error": test["leave_out_without"],
                              "leave_out_ratio_with_to_without": test["leave_out_ratio_with_to_without"]}
        else:
            out["note"] = (f"distortion ({test['mode']}) was solved but not kept: it did not predict left-out points "
                           f"significantly better (z {test['z']:+.2f}, ratio {test['leave_out_ratio_with_to_without']:.3f})")
    return out


#: IMOD's ResidualReportCriterion: residuals this many SD above the mean (of the used points) are listed,
#: weight-0 points included.
LARGE_RESIDUAL_SD = 3.0


def _tables(prepared, weight, views, points, r, loo, se, surf):
    """``views.tsv``, ``markers.tsv`` and ``large_residuals.tsv`` as tables.

    ``weight`` (n_obs,) is each observation's weight in the fit, ``r``
    (n_obs, 2) its residual ``fit - observed`` in the output frame.
    """
    s = prepared.series
    o = s.obs
    length = np.hypot(r[:, 0], r[:, 1])
    loo_len = np.hypot(loo.resid_xy_px[:, 0], loo.resid_xy_px[:, 1])
    loo_len = np.where(loo.undetermined, np.nan, loo_len)
    used = weight > 0

    def per(index, n, values, mask):
        num = np.bincount(index[mask], values[mask], minlength=n)
        den = np.bincount(index[mask], minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.maximum(den, 1), np.nan), den

    n_v, n_m = s.n_views, o.n_markers
    mean_v, count_v = per(o.view_index, n_v, length, used)
    loo_v, _ = per(o.view_index, n_v, np.nan_to_num(loo_len), used & np.isfinite(loo_len))
    strong, weak, empty = s.view_classes()
    status = np.where(s.excluded, "excluded", np.where(empty, "interpolated", np.where(weak, "tied", "solved")))
    views_table = Table({
        "view": np.arange(n_v),
        "tilt_nominal": s.nominal_tilt_deg,
        "tilt": np.rad2deg(views[:, TILT]),
        "rotation": np.rad2deg(views[:, ROT]),
        "scale": views[:, SCALE],
        "dx": views[:, 3],
        "dy": views[:, 4],
        "n_markers": count_v,
        "mean_residual": mean_v,
        "leave_out_error": loo_v,
        "se_tilt": np.rad2deg(se.views[:, TILT]),
        "se_rotation": np.rad2deg(se.views[:, ROT]),
        "se_scale": se.views[:, SCALE],
        "se_dx": se.views[:, 3],
        "se_dy": se.views[:, 4],
        "status": status,
        "dmag": views[:, DMAG],
        "skew": np.rad2deg(views[:, SKEW]),
        "se_dmag": se.views[:, DMAG],
        "se_skew": np.rad2deg(se.views[:, SKEW]),
    })
    mean_m, count_m = per(o.marker_index, n_m, length, used)
    loo_m, _ = per(o.marker_index, n_m, np.nan_to_num(loo_len), used & np.isfinite(loo_len))
    if surf is not None and surf.n_surfaces == 2:
        surface = np.where(surf.surface == 1, "top", "bottom")
    else:
        surface = np.full(n_m, "")
    markers_table = Table({
        "marker": s.marker_ids,
        "x": points[:, 0] + s.width / 2.0,
        "y": points[:, 1] + s.height / 2.0,
        "z": points[:, 2],
        "n_obs": count_m,
        "mean_residual": mean_m,
        "leave_out_error": loo_m,
        "se_x": se.points_xyz_px[:, 0],
        "se_y": se.points_xyz_px[:, 1],
        "se_z": se.points_xyz_px[:, 2],
        "surface": surface,
    })
    # IMOD's criterion on the points that are used; points the robust fit rejected (weight 0) are
    # judged by the same threshold, so the worst points are never missing from the list
    mu, sd = (float(np.mean(length[used])), float(np.std(length[used]))) if used.any() else (0.0, 0.0)
    big = length > mu + LARGE_RESIDUAL_SD * sd
    order = np.argsort(-length[big])
    k = np.flatnonzero(big)[order]
    large = Table({
        "marker": s.marker_ids[o.marker_index[k]],
        "view": o.view_index[k],
        "x": o.xy_px[k, 0],
        "y": o.xy_px[k, 1],
        "resid_x": r[k, 0],
        "resid_y": r[k, 1],
        "resid": length[k],
        "sd_above_mean": (length[k] - mu) / sd if sd > 0 else np.zeros(len(k)),
        "weight": weight[k],
    })
    return views_table, markers_table, large
