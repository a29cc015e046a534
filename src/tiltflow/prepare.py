"""From a sheet row (:class:`tiltflow.model.SeriesSpec`) to a validated :class:`tiltflow.model.Prepared` series."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from .io import InputError, is_mdoc, read_markers, read_mdoc, read_tilts, read_xf
from .io.mrc import Stack
from .model import (MIN_MARKERS_PER_VIEW, MIN_OBSERVATIONS_PER_MARKER, Observations, Prepared, Series,
                    SeriesSpec)

log = logging.getLogger(__name__)

#: A tilt file must hold at least this many distinct angles ...
MIN_DISTINCT_TILTS = 3
#: ... spanning at least this many degrees (else tilts and 3D positions are not determined).
MIN_TILT_RANGE_DEG = 5.0
#: A tilt-axis angle given both in the sheet and in the ``.mdoc`` may differ by at most this (degrees).
MAX_AXIS_DISAGREEMENT_DEG = 1.0


def read_tilt_list(spec: SeriesSpec):
    """The nominal tilts of a row, and the row with its tilt-axis angle resolved.

    ``tilts`` is a ``.rawtlt``/``.tlt`` or a SerialEM ``.mdoc``; the
    ``.mdoc``'s ``Tilt axis angle`` stands in for an empty sheet cell, and
    must agree with a given one within :data:`MAX_AXIS_DISAGREEMENT_DEG`.

    Returns
    -------
    tilt_deg : ndarray (n_views,)
    spec : SeriesSpec
        With ``tilt_axis_deg`` set.
    mdoc : MdocTilts or None
    """
    if not is_mdoc(spec.tilts):
        if spec.tilt_axis_deg is None:
            raise InputError(f"sheet row {spec.name}: tilt_axis_angle is empty; it is required unless tilts is a "
                             f"SerialEM .mdoc whose title line gives it (tilts = {spec.tilts})")
        return read_tilts(spec.tilts), spec, None
    mdoc = read_mdoc(spec.tilts)
    axis = spec.tilt_axis_deg
    if mdoc.tilt_axis_deg is None and axis is None:
        raise InputError(f"{spec.tilts}: no 'Tilt axis angle = ...' title line, and the sheet's tilt_axis_angle "
                         f"(row {spec.name}) is empty; give one of them")
    if axis is None:
        axis = mdoc.tilt_axis_deg
    elif mdoc.tilt_axis_deg is not None:
        diff = (axis - mdoc.tilt_axis_deg + 180.0) % 360.0 - 180.0
        if abs(diff) > MAX_AXIS_DISAGREEMENT_DEG:
            raise InputError(
                f"{spec.tilts}: title line says Tilt axis angle = {mdoc.tilt_axis_deg:g} but the sheet's "
                f"tilt_axis_angle (row {spec.name}) is {axis:g}; they differ by {abs(diff):.2f} degrees "
                f"(expected at most {MAX_AXIS_DISAGREEMENT_DEG:g}: leave the sheet's cell empty to use the mdoc's)")
    return mdoc.tilt_deg, dataclasses.replace(spec, tilt_axis_deg=float(axis)), mdoc


def image_size_from_stack(path):
    """``(nx, ny, nz, pixel_size_angstrom)`` from an MRC header (no data read)."""
    with Stack(path) as st:
        return st.shape[1], st.shape[0], st.n_views, st.pixel_size_angstrom


def prepare(spec: SeriesSpec) -> Prepared:
    """Read and validate the inputs of one series.

    Raises
    ------
    InputError
        Anything inconsistent, naming the file, the line or view, what was
        expected and what was found.
    """
    missing = [f"{column} {path}" for column, path in (("markers", spec.markers), ("tilts", spec.tilts),
                                                        ("stack", spec.stack), ("prexg", spec.prexg))
               if path and not Path(path).is_file()]
    if missing:
        raise InputError(f"sheet row {spec.name}: file(s) not found: {'; '.join(missing)} "
                         f"(relative paths resolve against the working directory {Path.cwd()})")
    tilts, spec, mdoc = read_tilt_list(spec)
    n_views = len(tilts)
    distinct = np.unique(np.round(tilts, 3))
    if len(distinct) < MIN_DISTINCT_TILTS or np.ptp(tilts) < MIN_TILT_RANGE_DEG:
        raise InputError(
            f"{spec.tilts}: {n_views} tilt angles with {len(distinct)} distinct value(s) spanning "
            f"{np.ptp(tilts):.2f} degrees; a tilt series needs at least {MIN_DISTINCT_TILTS} distinct angles "
            f"spanning at least {MIN_TILT_RANGE_DEG:g} degrees"
        )
    if not spec.markers and not spec.stack:
        raise InputError(f"sheet row {spec.name}: markers is empty and no stack is given; a series needs a "
                         "marker model, or a stack to be aligned from its images")
    table = read_markers(spec.markers) if spec.markers else None
    pixel = None
    if spec.stack:
        nx, ny, nz, pixel = image_size_from_stack(spec.stack)
        if nz != n_views:
            raise InputError(
                f"{spec.stack}: the stack has {nz} views but {spec.tilts} lists {n_views} tilt angles; "
                "expected one tilt angle per view"
            )
        if spec.width and spec.height and (spec.width, spec.height) != (nx, ny):
            raise InputError(
                f"sheet row {spec.name}: width x height {spec.width} x {spec.height} contradicts the stack "
                f"{spec.stack} ({nx} x {ny})"
            )
        width, height = nx, ny
    elif spec.width and spec.height:
        width, height = int(spec.width), int(spec.height)
    else:
        hint = f" (the model header says {table.size_xy[0]} x {table.size_xy[1]})" if table.size_xy else ""
        raise InputError(
            f"sheet row {spec.name}: no stack, so width and height are required to place the image centre{hint}"
        )
    if spec.pixel_size_angstrom:
        pixel = float(spec.pixel_size_angstrom)
    elif mdoc is not None and mdoc.pixel_size_angstrom:
        pixel = mdoc.pixel_size_angstrom  # the acquisition's record
    elif not (pixel and pixel > 0):
        pixel = table.pixel_size if table is not None and table.pixel_size and table.pixel_size > 0 else 1.0
    if width <= 0 or height <= 0:
        raise InputError(f"sheet row {spec.name}: width and height must be > 0, got {width} x {height}")

    excluded = np.zeros(n_views, dtype=bool)
    for v in spec.exclude_views:
        if not 0 <= v < n_views:
            raise InputError(
                f"sheet row {spec.name}: exclude_views lists view {v}; expected 0-based views 0..{n_views - 1} "
                f"({spec.tilts} has {n_views})"
            )
        excluded[v] = True

    prexg = None
    if spec.prexg:
        prexg = read_xf(spec.prexg)
        if len(prexg) != n_views:
            raise InputError(f"{spec.prexg}: has {len(prexg)} transforms; expected one per view ({n_views}, from {spec.tilts})")
    if table is None:
        return _images_only(spec, tilts, width, height, pixel, excluded, prexg)
    _validate_points(table, n_views, width, height, spec.tilts)

    keep = ~excluded[table.view]
    ignored = int((~keep).sum())
    # drop markers with too few observations (after exclusions)
    ids, inverse = np.unique(table.marker[keep], return_inverse=True)
    counts = np.bincount(inverse, minlength=len(ids))
    dropped = {str(i): int(c) for i, c in zip(ids, counts) if c < MIN_OBSERVATIONS_PER_MARKER}
    for mid, c in dropped.items():
        log.warning("%s: marker %s has %d observation(s) (< %d); dropped", spec.markers, mid, c, MIN_OBSERVATIONS_PER_MARKER)
    good = counts >= MIN_OBSERVATIONS_PER_MARKER
    # keep marker order as first seen in the file
    sel = keep.copy()
    sel[keep] = good[inverse]
    marker_col = table.marker[sel]
    first_seen = {}
    for m in marker_col:
        first_seen.setdefault(m, len(first_seen))
    marker_ids = np.array(list(first_seen.keys()))
    marker_index = np.array([first_seen[m] for m in marker_col], dtype=np.int64)
    obs = Observations(
        marker_index=marker_index,
        view_index=table.view[sel],
        xy_px=table.xy_px[sel],
        weight=np.ones(int(sel.sum())),
        n_markers=len(marker_ids),
        n_views=n_views,
        centre_xy_px=(width / 2.0, height / 2.0),
    )
    if obs.n_markers == 0:
        raise InputError(
            f"{spec.markers}: no marker has {MIN_OBSERVATIONS_PER_MARKER} or more observations in the views kept; "
            "nothing to align"
        )
    series = Series(
        obs=obs,
        marker_ids=marker_ids,
        nominal_tilt_deg=tilts + spec.tilt_offset_deg,
        tilt_axis_deg=float(spec.tilt_axis_deg),
        width=width,
        height=height,
        excluded=excluded,
    )
    per_view = series.markers_per_view()
    strong = per_view >= MIN_MARKERS_PER_VIEW
    if strong.sum() < 2:
        raise InputError(
            f"{spec.markers}: only {int(strong.sum())} view(s) have {MIN_MARKERS_PER_VIEW} or more markers; "
            "at least 2 are needed to align"
        )
    weak = [int(v) for v in np.flatnonzero((per_view > 0) & ~strong)]
    empty = [int(v) for v in np.flatnonzero((per_view == 0) & ~excluded)]
    for v in weak:
        log.warning("view %d has %d marker(s) (< %d): its shifts (and with 2 markers its rotation) are solved, "
                    "its tilt and scale are tied to the neighbouring views", v, per_view[v], MIN_MARKERS_PER_VIEW)
    for v in empty:
        log.warning("view %d has no markers: all its parameters are interpolated from the neighbouring views", v)
    return Prepared(
        series=series,
        raw_tilt_deg=tilts,
        prexg=prexg,
        pixel_size_angstrom=float(pixel),
        dropped_markers=dropped,
        weak_views=weak,
        empty_views=empty,
        excluded_views=[int(v) for v in np.flatnonzero(excluded)],
        ignored_observations=ignored,
        stack=spec.stack,
    )


def _images_only(spec, tilts, width, height, pixel, excluded, prexg):
    """A marker-free series: no observations; aligned from its stack (:mod:`tiltflow.image_align`)."""
    if prexg is not None:
        log.warning("sheet row %s: prexg %s is ignored: a marker-free series is aligned from its raw stack",
                    spec.name, spec.prexg)
    obs = Observations(marker_index=np.zeros(0, dtype=np.int64), view_index=np.zeros(0, dtype=np.int64),
                       xy_px=np.zeros((0, 2)), weight=np.zeros(0), n_markers=0, n_views=len(tilts),
                       centre_xy_px=(width / 2.0, height / 2.0))
    series = Series(obs=obs, marker_ids=np.zeros(0, dtype=np.int64), nominal_tilt_deg=tilts + spec.tilt_offset_deg,
                    tilt_axis_deg=float(spec.tilt_axis_deg), width=width, height=height, excluded=excluded)
    return Prepared(series=series, raw_tilt_deg=tilts, prexg=None, pixel_size_angstrom=float(pixel),
                    dropped_markers={}, weak_views=[], empty_views=[],
                    excluded_views=[int(v) for v in np.flatnonzero(excluded)], ignored_observations=0,
                    stack=spec.stack)


def _validate_points(table, n_views, width, height, tilts_path):
    path = table.path
    bad = np.flatnonzero((table.view < 0) | (table.view >= n_views))
    if len(bad):
        k = bad[0]
        raise InputError(
            f"{path}: {table.where[k]}: view {table.view[k]} is outside the tilt list "
            f"({tilts_path} has {n_views} views, expected 0..{n_views - 1}); {len(bad)} such point(s)"
        )
    finite = np.isfinite(table.xy_px).all(axis=1)
    if not finite.all():
        k = np.flatnonzero(~finite)[0]
        raise InputError(f"{path}: {table.where[k]}: coordinates {tuple(table.xy_px[k])} are not finite numbers")
    x, y = table.xy_px[:, 0], table.xy_px[:, 1]
    out = (x < 0) | (x > width) | (y < 0) | (y > height)
    if out.any():
        k = np.flatnonzero(out)[0]
        raise InputError(
            f"{path}: {table.where[k]}: point ({x[k]:.2f}, {y[k]:.2f}) lies outside the {width} x {height} image "
            f"(expected 0 <= x <= {width}, 0 <= y <= {height}); {int(out.sum())} such point(s)"
        )
    order = np.lexsort((table.view, table.marker))
    m, v = table.marker[order], table.view[order]
    dup = np.flatnonzero((m[1:] == m[:-1]) & (v[1:] == v[:-1]))
    if len(dup):
        a, b = order[dup[0]], order[dup[0] + 1]
        raise InputError(
            f"{path}: marker {table.marker[a]} has two points in view {table.view[a]} "
            f"({table.where[a]} and {table.where[b]}); expected at most one per view; {len(dup)} such duplicate(s)"
        )
