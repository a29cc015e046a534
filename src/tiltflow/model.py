"""The data types that pass between the steps of the pipeline.

Plain frozen dataclasses on numpy arrays: the observations of a series,
the prepared series, the alignment state after each stage.  ``io/`` reads
and writes them; the algorithms take and return them.  Nothing here
imports an algorithm.

Weights have one meaning each: ``Observations.weight`` is the *input*
weight of an observation (1 for every picked point today);
``AlignmentState.robust_weight`` is the robust factor the fit gave it; the
weight in the fit is their product (:meth:`AlignmentState.fit_weight`).
"""

from __future__ import annotations

import dataclasses

import numpy as np


class Table(dict):
    """A table as columns: name -> 1-D numpy array, all of one length, in file order.

    What the TSV outputs are built from and read back as
    (:func:`tiltflow.io.tables.write_table`, :func:`~tiltflow.io.tables.read_table`);
    a plain mapping, so that jobs writing or plotting them need not import pandas.
    """

    @property
    def columns(self):
        """Column names in order."""
        return list(self)

    @property
    def n_rows(self):
        """Number of rows (0 for a table without columns)."""
        return len(next(iter(self.values()))) if self else 0

    def rows(self, mask):
        """A new table of the rows selected by a boolean mask or an index array."""
        return Table({k: np.asarray(v)[mask] for k, v in self.items()})


#: Views with fewer observed markers than this are tied to their neighbours.
MIN_MARKERS_PER_VIEW = 3
#: Markers with fewer observations than this are dropped.
MIN_OBSERVATIONS_PER_MARKER = 3


@dataclasses.dataclass(frozen=True)
class Observations:
    """Marker observations of one tilt series.

    Attributes
    ----------
    marker_index : ndarray of int, shape (n_obs,)
        Row of the marker (0-based, into the points array).
    view_index : ndarray of int, shape (n_obs,)
        Row of the view (0-based, into the view-parameter array).
    xy_px : ndarray, shape (n_obs, 2)
        Observed image positions (IMOD pixel convention).
    weight : ndarray, shape (n_obs,)
        Least-squares weight of each observation (both coordinates).
    n_markers, n_views : int
    centre_xy_px : tuple of 2 floats
        Image centre ``(nx/2, ny/2)``.
    """

    marker_index: np.ndarray
    view_index: np.ndarray
    xy_px: np.ndarray
    weight: np.ndarray
    n_markers: int
    n_views: int
    centre_xy_px: tuple

    def __post_init__(self):
        n = len(self.marker_index)
        if self.xy_px.shape != (n, 2):
            raise ValueError(f"xy_px must have shape ({n}, 2), got {self.xy_px.shape}")
        if self.view_index.shape != (n,):
            raise ValueError("marker_index, view_index and weight must have the same length")
        if n and (self.marker_index.min() < 0 or self.marker_index.max() >= self.n_markers):
            raise ValueError(f"marker_index must lie in [0, {self.n_markers}), got {self.marker_index.min()}..{self.marker_index.max()}")
        if n and (self.view_index.min() < 0 or self.view_index.max() >= self.n_views):
            raise ValueError(f"view_index must lie in [0, {self.n_views}), got {self.view_index.min()}..{self.view_index.max()}")
        if not np.all(np.isfinite(self.xy_px)):
            raise ValueError("xy_px contains NaN or Inf")
        self._check_weight(self.weight)

    def _check_weight(self, weight):
        if weight.shape != (len(self.marker_index),):
            raise ValueError("marker_index, view_index and weight must have the same length")
        if np.any(weight < 0) or not np.all(np.isfinite(weight)):
            raise ValueError("weight must be finite and >= 0")

    def with_weight(self, weight):
        """A copy with other weights (checked; the rest, checked already, is shared)."""
        weight = np.asarray(weight, dtype=float)
        self._check_weight(weight)
        copy = object.__new__(type(self))
        for field in dataclasses.fields(self):
            object.__setattr__(copy, field.name, getattr(self, field.name))
        object.__setattr__(copy, "weight", weight)
        return copy

    def subset(self, keep):
        """A copy holding only the observations where ``keep`` is True."""
        keep = np.asarray(keep, dtype=bool)
        return dataclasses.replace(
            self,
            marker_index=self.marker_index[keep],
            view_index=self.view_index[keep],
            xy_px=self.xy_px[keep],
            weight=self.weight[keep],
        )


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
    distortion: str = "off"
    measured_to_unknowns: float = float("nan")
    #: The leave-out test of distortion (:class:`tiltflow.selection.DistortionTest` as a dict), on the
    #: last stage of a run that asked for distortion; None elsewhere.
    distortion_test: dict | None = None

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class AlignmentState:
    """The solution after some stages.

    Attributes
    ----------
    views : ndarray, shape (n_views, 7)
        View parameters (:data:`tiltflow.projection.VIEW_COLUMNS`), for
        every view of the tilt list.
    points_xyz_px : ndarray, shape (n_markers, 3)
        Marker positions, centroid at the origin.
    robust_weight : ndarray, shape (n_obs,)
        Robust (Tukey) factor of each observation after the last stage, in
        [0, 1]; 1 where no robust stage has run.  The weight an observation
        has in the fit is ``series.obs.weight * robust_weight``
        (:meth:`fit_weight`).
    reference_view : int
    stages : tuple of StageReport
    """

    views: np.ndarray
    points_xyz_px: np.ndarray
    robust_weight: np.ndarray
    reference_view: int
    stages: tuple = ()

    def fit_weight(self, obs):
        """Weight of each observation of ``obs`` in the fit: input weight times robust factor, shape (n_obs,)."""
        return obs.weight * self.robust_weight


@dataclasses.dataclass(frozen=True)
class SeriesSpec:
    """One row of the tilt-series sheet, paths resolved.

    Attributes
    ----------
    name : str
    markers : str
        Marker file (IMOD model, ``model2point`` text or CSV).
    tilts : str
        ``.rawtlt``/``.tlt`` file.
    tilt_axis_deg : float or None
        IMOD ``RotationAngle``; None when ``tilts`` is a ``.mdoc`` that gives it.
    stack : str or None
        MRC stack; gives the image size and the view count.
    width, height : int or None
        Image size when there is no stack.
    prexg : str or None
        IMOD ``.prexg`` of the stack the markers were picked on.
    tilt_offset_deg : float
        Added to every nominal tilt (IMOD ``AngleOffset``).
    exclude_views : tuple of int
        0-based views to leave out.
    pixel_size_angstrom : float or None
        Overrides the pixel size from the stack or model header.
    """

    name: str
    markers: str
    tilts: str
    tilt_axis_deg: float | None
    stack: str | None = None
    width: int | None = None
    height: int | None = None
    prexg: str | None = None
    tilt_offset_deg: float = 0.0
    exclude_views: tuple = ()
    pixel_size_angstrom: float | None = None


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A validated series plus what the import decided.

    Attributes
    ----------
    series : Series
    raw_tilt_deg : ndarray, shape (n_views,)
        Tilts as in the tilt file (without ``tilt_offset``).
    prexg : ndarray, shape (n_views, 6) or None
    pixel_size_angstrom : float
    dropped_markers : dict
        Marker id -> number of observations, for markers with too few.
    weak_views, empty_views : list of int
        Views with 1-2 markers (shifts solved, tilt/rotation/scale tied to
        neighbours) and views with none (all parameters interpolated).
    excluded_views : list of int
    ignored_observations : int
        Points in excluded views.
    stack : str or None
        The MRC stack of the series, if any.
    """

    series: Series
    raw_tilt_deg: np.ndarray
    prexg: np.ndarray | None
    pixel_size_angstrom: float
    dropped_markers: dict
    weak_views: list
    empty_views: list
    excluded_views: list
    ignored_observations: int
    stack: str | None = None

