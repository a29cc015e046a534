"""Parameter sets of every algorithm, as small frozen dataclasses.

This module imports nothing heavier than the standard library, so that the
workflow can turn its config into options while it builds the DAG without
loading numpy's friends (numba, scipy, matplotlib).  The numerics import
their options from here.

The defaults here are *the* defaults: ``config/schemas/config.schema.yaml``,
the shipped ``config/config.yaml`` and ``config/README.md`` must state the
same values (``tests/test_config.py`` fails when they drift).  The mapping
from config keys to fields is :data:`tiltflow.workflow.config.OPTION_FIELDS`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

ROTATION_MODES = ("per_view", "grouped", "single", "fixed")
SCALE_MODES = ("per_view", "grouped", "fixed")
TILT_MODES = ("per_view", "grouped", "fixed")
DISTORTION_MODES = ("off", "grouped", "per_view")
#: Group-size fields of :class:`AlignOptions` (IMOD's *DefaultGrouping defaults).
GROUP_FIELDS = ("rotation_group", "tilt_group", "scale_group", "stretch_group", "skew_group")


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class LMOptions:
    """Options of the Levenberg-Marquardt loop.

    Attributes
    ----------
    max_iterations : int
        Maximum number of accepted or rejected steps (each costs one
        residual evaluation).
    ftol : float
        Stop when an accepted step reduces the cost by less than
        ``ftol * cost`` (and the model predicted as little).
    xtol : float
        Stop when the scaled step is shorter than ``xtol * (|x| + xtol)``.
    gtol : float
        Stop when the largest scaled gradient component is below ``gtol``.
    initial_damping : float
        Starting ``mu`` relative to the Marquardt scaling.
    """

    max_iterations: int = 200
    ftol: float = 1e-10
    xtol: float = 1e-10
    gtol: float = 1e-10
    initial_damping: float = 1e-4

    def __post_init__(self):
        if not (_is_int(self.max_iterations) and self.max_iterations >= 1):
            raise ValueError(f"max_iterations must be an integer >= 1, got {self.max_iterations!r}")
        for name in ("ftol", "xtol", "gtol"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not (math.isfinite(self.initial_damping) and self.initial_damping > 0):
            raise ValueError(f"initial_damping must be > 0, got {self.initial_damping!r}")


@dataclasses.dataclass(frozen=True)
class AlignOptions:
    """What the fiducial alignment solves for.

    Attributes
    ----------
    rotation : {"per_view", "grouped", "single", "fixed"}
        In-plane rotation (tilt-axis angle): one per view, grouped (solved
        at group centres of ``rotation_group`` views in tilt order and
        linearly interpolated between them, as IMOD's automapping), one for
        all views, or held at the sheet's ``tilt_axis_angle``.
    scale : {"per_view", "grouped", "fixed"}
        Magnification per view or grouped (reference view held at 1), or
        all 1.
    tilt : {"per_view", "grouped", "fixed"}
        Tilt angles per view, grouped (the change from nominal), or held
        at nominal (+ the sheet's ``tilt_offset``).  A single offset for all views is not offered:
        rotating the specimen and all tilts together leaves every
        projection unchanged, so markers cannot determine it (the
        two-surface analysis in ``summary.json`` suggests one; put it in
        the sheet's ``tilt_offset``).
    distortion : {"off", "grouped", "per_view"}
        In-plane distortion of the section: X-stretch (IMOD ``dmag``) and
        skew per view or grouped (``stretch_group``, ``skew_group``),
        held at 0 in the reference view (gauge); solved in the stages that
        free the tilts (:mod:`tiltflow.stages`).
    rotation_group, tilt_group, scale_group, stretch_group, skew_group : int
        Views per group of a grouped parameter (IMOD's defaults 5, 5, 4,
        7, 11).
    distortion_min_ratio : float
        Distortion is solved only when the ratio of measured values (2 per
        weighted observation) to unknowns with it stays at or above this;
        below, the stage runs without distortion and says so (IMOD's
        "ratio of total measured values to all unknowns").
    distortion_test : bool
        Test whether distortion generalises: the stages that free it are
        also solved without it, and distortion is kept only when it lowers
        the leave-one-out error by at least ``distortion_significance``
        standard errors of the paired per-observation difference
        (:mod:`tiltflow.selection`); otherwise the solution without it is
        used (warned).  False keeps distortion untested (one solve, as
        tiltalign).
    distortion_significance : float
        Standard errors (>= 0) the leave-out error must fall by.
    reference_view : int or None
        0-based view whose scale (and tilt) fix the gauge and whose markers
        seed the initial stage; None picks the view nearest zero tilt.
    polish : bool
        Run the joint stage with everything free at the end.
    robust : bool
        Down-weight outliers with Tukey's bisquare (IMOD's scheme) in the
        stages declared robust (:mod:`tiltflow.stages`).
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
    distortion: str = "off"
    rotation_group: int = 5
    tilt_group: int = 5
    scale_group: int = 4
    stretch_group: int = 7
    skew_group: int = 11
    distortion_min_ratio: float = 4.0
    distortion_test: bool = True
    distortion_significance: float = 2.0
    reference_view: int | None = None
    polish: bool = True
    robust: bool = True
    robust_k: float = 9.0
    lm: LMOptions = LMOptions()

    def __post_init__(self):
        if self.distortion is False:  # YAML reads an unquoted off as false
            object.__setattr__(self, "distortion", "off")
        if self.tilt == "offset":
            raise ValueError(
                "tilt 'offset' cannot be solved from markers (a global tilt offset leaves every projection "
                "unchanged); give it in the sheet's tilt_offset column (summary.json -> surfaces suggests one), "
                "or use tilt: per_view or fixed"
            )
        for name, allowed in (("rotation", ROTATION_MODES), ("scale", SCALE_MODES), ("tilt", TILT_MODES),
                              ("distortion", DISTORTION_MODES)):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        for name in GROUP_FIELDS:
            value = getattr(self, name)
            if not (_is_int(value) and value >= 2):
                raise ValueError(f"{name} must be an integer >= 2 (views per group), got {value!r}")
        if not (math.isfinite(self.distortion_min_ratio) and self.distortion_min_ratio >= 1):
            raise ValueError(f"distortion_min_ratio must be a finite number >= 1, got {self.distortion_min_ratio!r}")
        if not (isinstance(self.distortion_significance, (int, float)) and not isinstance(self.distortion_significance, bool)
                and math.isfinite(self.distortion_significance) and self.distortion_significance >= 0):
            raise ValueError("distortion_significance must be a finite number >= 0 (standard errors), "
                             f"got {self.distortion_significance!r}")
        if self.reference_view is not None and not (_is_int(self.reference_view) and self.reference_view >= 0):
            raise ValueError(f"reference_view must be None or an integer >= 0, got {self.reference_view!r}")
        if not self.robust_k > 0:
            raise ValueError(f"robust_k must be > 0, got {self.robust_k!r}")


@dataclasses.dataclass(frozen=True)
class CoarseOptions:
    """Parameters of the cross-correlation coarse alignment and the tilt-axis search.

    Attributes
    ----------
    binning : int
        Binning of the views before correlating (0 = automatic: the
        smallest power of two that brings the larger side to <= 512 px).
    taper_fraction : float
        Width of the cosine edge taper, as a fraction of each side.
    filter_sigma1 : float
        Gaussian high-pass sigma, cycles per (binned) pixel (IMOD FilterSigma1).
    filter_radius2, filter_sigma2 : float
        Low-pass: flat to ``radius2``, then Gaussian fall-off with
        ``sigma2`` (cycles per binned pixel; IMOD FilterRadius2/Sigma2).
    weak_peak_ratio : float
        A pair whose normalised peak is below this fraction of the median
        peak is reported as weak.
    axis_search : bool
        Refine the tilt-axis angle from the images.
    axis_search_range_deg : float
        Search +- this range around the given angle.
    axis_search_pairs : int
        Number of views (beyond 25 degrees of tilt, evenly spread) compared
        with the reference view in the search.
    """

    binning: int = 0
    taper_fraction: float = 0.1
    filter_sigma1: float = 0.015
    filter_radius2: float = 0.12
    filter_sigma2: float = 0.05
    weak_peak_ratio: float = 0.5
    axis_search: bool = True
    axis_search_range_deg: float = 8.0
    axis_search_pairs: int = 12

    def __post_init__(self):
        if self.binning not in (0, 1, 2, 4, 8, 16):
            raise ValueError(f"binning must be 0 (auto), 1, 2, 4, 8 or 16; got {self.binning!r}")
        if not 0 <= self.taper_fraction < 0.5:
            raise ValueError(f"taper_fraction must be in [0, 0.5), got {self.taper_fraction!r}")
        for name in ("filter_sigma1", "filter_radius2", "filter_sigma2"):
            if not 0 <= getattr(self, name) <= 0.5:
                raise ValueError(f"{name} must be in [0, 0.5] cycles/pixel, got {getattr(self, name)!r}")
        if not 0 <= self.weak_peak_ratio <= 1:
            raise ValueError(f"weak_peak_ratio must be in [0, 1], got {self.weak_peak_ratio!r}")
        if not self.axis_search_range_deg > 0:
            raise ValueError(f"axis_search_range_deg must be > 0, got {self.axis_search_range_deg!r}")


@dataclasses.dataclass(frozen=True)
class ReconOptions:
    """Geometry and filter of the weighted back-projection.

    Attributes
    ----------
    thickness_px : int
        Tomogram thickness in unbinned pixels.
    binning : int
        1, 2, 4 or 8: views are binned by averaging once, voxels are
        ``binning`` pixels wide.
    z_offset_px : float
        Unbinned pixels by which the slab centre sits above the tilt axis
        (IMOD's AxisZShift); with ``flatten``, above the section's middle.
    flatten : bool
        Place the volume along the section found by the surface analysis
        of a marker alignment (``summary.json`` -> ``surfaces``): rotated
        by its X-axis tilt and tilt offset so that the section is level,
        and shifted so that its middle is the tomogram's middle.  Series
        aligned without markers are reconstructed unflattened (warned).
    lowpass_cutoff : float
        Radial low-pass cut-off, cycles per (binned) pixel (IMOD RADIAL first value).
    lowpass_sigma : float
        Gaussian fall-off beyond the cut-off (IMOD RADIAL second value).
    sirt_iterations : int
        0 for the plain ramp; ``n > 0`` for the filter that makes the
        back-projection behave like ``n`` Landweber (SIRT-like) iterations.
    taper_fraction : float
        Edge taper of each view, fraction of each side.
    slab_rows : int
        Rows (binned y) reconstructed at a time.
    oversampling : int
        Table samples per binned pixel along each projection line; sample
        positions are exact to ``1 / (2 oversampling)`` pixel.
    dtype : {"float32", "float16"}

    The defaults (thickness 200 unbinned px, binning 2) are what the
    shipped config has always given every user: a quick-look tomogram a
    quarter the size of an unbinned one, which is what a batch of dozens of
    series is first inspected with.
    """

    thickness_px: int = 200
    binning: int = 2
    z_offset_px: float = 0.0
    flatten: bool = False
    lowpass_cutoff: float = 0.35
    lowpass_sigma: float = 0.035
    sirt_iterations: int = 0
    taper_fraction: float = 0.05
    slab_rows: int = 64
    oversampling: int = 16
    dtype: str = "float32"

    def __post_init__(self):
        if self.binning not in (1, 2, 4, 8):
            raise ValueError(f"binning must be 1, 2, 4 or 8; got {self.binning!r}")
        if not (_is_int(self.thickness_px) and self.thickness_px >= self.binning):
            raise ValueError(f"thickness_px must be an integer >= binning, got {self.thickness_px!r}")
        if self.dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be float32 or float16, got {self.dtype!r}")
        if self.slab_rows < 1:
            raise ValueError(f"slab_rows must be >= 1, got {self.slab_rows!r}")
        if not 0 < self.lowpass_cutoff <= 0.5:
            raise ValueError(f"lowpass_cutoff must be in (0, 0.5] cycles/pixel, got {self.lowpass_cutoff!r}")
        if not 1 <= self.oversampling <= 256:
            raise ValueError(f"oversampling must be in [1, 256] samples per pixel, got {self.oversampling!r}")
        if self.sirt_iterations < 0:
            raise ValueError(f"sirt_iterations must be >= 0, got {self.sirt_iterations!r}")


@dataclasses.dataclass(frozen=True)
class MatchingOptions:
    """Projection matching of series aligned from their images (config ``projection_matching``).

    Attributes
    ----------
    finest_size_px : int
        Larger side of the finest level (binned by powers of two to fit);
        two coarser levels, each binned twice more, come first.
    thickness_px : float
        Thickness of the reconstructed slab, unbinned pixels (it must hold
        the whole specimen); 0 measures it from the images.
    band_height_px : float
        Unbinned rows summed into each band along the tilt axis.
    reconstruction : str
        ``wbp`` (each view left out of its own reference), ``sirt`` or ``tv``.
    max_iterations : int
        Rounds (reconstruct, re-project, estimate) per level at most.
    tolerance_px : float
        A level stops when the largest shift update is below this (its pixels).
    with_markers : bool
        Also refine series that have markers and a stack
        (:func:`tiltflow.image_align.refine_with_markers`).
    """

    finest_size_px: int = 256
    thickness_px: float = 0.0
    band_height_px: float = 4.0
    reconstruction: str = "wbp"
    max_iterations: int = 20
    tolerance_px: float = 0.05
    with_markers: bool = False

    def __post_init__(self):
        if self.reconstruction not in ("wbp", "sirt", "tv"):
            raise ValueError(f"reconstruction must be wbp, sirt or tv; got {self.reconstruction!r}")
        if self.finest_size_px < 128:
            raise ValueError(f"finest_size_px must be >= 128, got {self.finest_size_px!r}")
        if self.thickness_px < 0:
            raise ValueError(f"thickness_px must be >= 0 (0: measured), got {self.thickness_px!r}")
        if self.band_height_px <= 0:
            raise ValueError(f"band_height_px must be > 0, got {self.band_height_px!r}")
        if self.max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {self.max_iterations!r}")
        if not self.tolerance_px > 0:
            raise ValueError(f"tolerance_px must be > 0, got {self.tolerance_px!r}")
