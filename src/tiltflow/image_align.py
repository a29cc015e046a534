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
