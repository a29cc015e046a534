"""Simulated fiducial tilt series with known truth (demo data and tests)."""

from __future__ import annotations

import dataclasses

import numpy as np

from . import projection


@dataclasses.dataclass(frozen=True)
class SimulationSpec:
    """Geometry and errors of a simulated tilt series.

    Attributes
    ----------
    n_views : int
    tilt_min_deg, tilt_max_deg : float
        Nominal tilt range, evenly spaced, acquired in increasing order.
    n_markers : int
    n_full_tracks : int
        Markers observed in every view; the others are seen in a random
        contiguous run of views (``track_fraction`` of the series).
    track_fraction : tuple of 2 floats
        Range of the fraction of views a partial track covers.
    width, height : int
        Image size in pixels.
    thickness_px : float
        Distance between the two bead surfaces (beads on top and bottom).
    tilt_axis_deg : float
        True mean tilt-axis angle (IMOD RotationAngle convention).
    rotation_sd_deg : float
        Per-view scatter of the in-plane rotation about the mean.
    tilt_offset_deg, tilt_jitter_deg : float
        True tilt = nominal + offset + N(0, jitter).
    mag_drift : float
        Linear scale change over the acquisition (0.02 = 2 %), plus 10 %
        of it as random scatter.
    shift_max_px : float
        View shifts are a random walk scaled to lie within +-shift_max_px.
    noise_px : float
        Standard deviation of the Gaussian picking error per coordinate.
    stretch : float
        In-plane X-stretch (IMOD ``dmag``) at the highest |tilt|, linear in
        tilt through 0 at zero tilt; with ``skew_deg`` not 0 the views
        carry distortion (7 columns).
    skew_deg : float
        Skew at the highest |tilt|, likewise.
    seed : int
    """

    n_views: int = 61
    tilt_min_deg: float = -60.0
    tilt_max_deg: float = 60.0
    n_markers: int = 20
    n_full_tracks: int = 20
    track_fraction: tuple = (0.3, 0.8)
    width: int = 1024
    height: int = 1024
    thickness_px: float = 200.0
    tilt_axis_deg: float = -12.5
    rotation_sd_deg: float = 0.1
    tilt_offset_deg: float = 0.0
    tilt_jitter_deg: float = 0.0
    mag_drift: float = 0.0
    shift_max_px: float = 20.0
    noise_px: float = 0.5
    stretch: float = 0.0
    skew_deg: float = 0.0
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class SimulatedSeries:
    """A simulated series: observations and the truth behind them.

    Attributes
    ----------
    marker, view : ndarray of int, shape (n_obs,)
        0-based marker and view of each observation.
    xy_px : ndarray, shape (n_obs, 2)
        Observed (noisy) positions.
    nominal_tilt_deg : ndarray, shape (n_views,)
    views : ndarray, shape (n_views, 5), or (n_views, 7) with distortion
        True view parameters (:data:`tiltflow.projection.VIEW_COLUMNS`).
    points_xyz_px : ndarray, shape (n_markers, 3)
        True marker positions.
    width, height : int
    tilt_axis_deg : float
        The nominal tilt-axis angle to give the aligner.
    """

    marker: np.ndarray
    view: np.ndarray
    xy_px: np.ndarray
    nominal_tilt_deg: np.ndarray
    views: np.ndarray
    points_xyz_px: np.ndarray
    width: int
    height: int
    tilt_axis_deg: float

    @property
    def centre_xy_px(self):
        return (self.width / 2.0, self.height / 2.0)


def simulate(spec: SimulationSpec) -> SimulatedSeries:
    """Draw a tilt series of marker observations from ``spec``."""
    rng = np.random.default_rng(spec.seed)
    n_v, n_m = spec.n_views, spec.n_markers
    nominal = np.linspace(spec.tilt_min_deg, spec.tilt_max_deg, n_v)
    tilt = nominal + spec.tilt_offset_deg + rng.normal(0.0, spec.tilt_jitter_deg, n_v)
    rot = spec.tilt_axis_deg + rng.normal(0.0, spec.rotation_sd_deg, n_v)
    ramp = np.linspace(-0.5, 0.5, n_v)
    scale = 1.0 + spec.mag_drift * ramp + 0.1 * spec.mag_drift * rng.normal(0.0, 1.0, n_v)
    walk = np.cumsum(rng.normal(0.0, 1.0, (n_v, 2)), axis=0)
    walk -= walk.mean(axis=0)
    peak = np.abs(walk).max()
    shifts = walk * (spec.shift_max_px / peak if peak > 0 else 0.0)
    views = np.column_stack([np.deg2rad(tilt), np.deg2rad(rot), scale, shifts])
    if spec.stretch or spec.skew_deg:
        ramp_tilt = nominal / np.abs(nominal).max()
        views = np.column_stack([views, spec.stretch * ramp_tilt, np.deg2rad(spec.skew_deg) * ramp_tilt])

    # markers spread over the central field of view, on two surfaces
    half = 0.36 * min(spec.width, spec.height)
    xy = rng.uniform(-half, half, (n_m, 2))
    side = np.where(rng.random(n_m) < 0.5, -0.5, 0.5)
    z = side * spec.thickness_px + rng.normal(0.0, 0.05 * spec.thickness_px + 1.0, n_m)
    points = np.column_stack([xy, z])

    seen = np.zeros((n_m, n_v), dtype=bool)
    seen[: spec.n_full_tracks] = True
    lo, hi = spec.track_fraction
    for i in range(spec.n_full_tracks, n_m):
        length = max(3, int(round(rng.uniform(lo, hi) * n_v)))
        start = int(rng.integers(0, n_v - length + 1))
        seen[i, start : start + length] = True
    m_idx, v_idx = np.nonzero(seen)
    centre = (spec.width / 2.0, spec.height / 2.0)
    xy_obs = projection.project(points, views, m_idx, v_idx, centre)
    xy_obs = xy_obs + rng.normal(0.0, spec.noise_px, xy_obs.shape)
    inside = (
        (xy_obs[:, 0] > 0) & (xy_obs[:, 0] < spec.width) & (xy_obs[:, 1] > 0) & (xy_obs[:, 1] < spec.height)
    )
    return SimulatedSeries(
        marker=m_idx[inside],
        view=v_idx[inside],
        xy_px=xy_obs[inside],
        nominal_tilt_deg=nominal,
        views=views,
        points_xyz_px=points,
        width=spec.width,
        height=spec.height,
        tilt_axis_deg=float(spec.tilt_axis_deg + rng.normal(0.0, 0.0)),
    )


@dataclasses.dataclass(frozen=True)
class RenderSpec:
    """How a simulated series is rendered into an image stack.

    Attributes
    ----------
    n_blobs : int
        Specimen density: Gaussian blobs in the slab, spread over a field
        larger than the image so that shifted views still see specimen.
    blob_sigma_px : tuple of 2 floats
        Range of blob sizes.
    blob_density : float
        Mean projected density of a blob (attenuation units).
    bead_sigma_px : float
        Gold-bead size (10 nm gold is ~3 px at 2 nm/px... scale to taste).
    bead_density : float
        Projected density of a bead (dark: strong attenuation).
    slab_density : float
        Uniform slab attenuation at zero tilt (grows as 1 / cos tilt).
    dose : float
        Mean counts per pixel at zero specimen attenuation; the noise is
        Poisson-like (Gaussian with variance = counts).
    seed : int
    """

    n_blobs: int = 1500
    blob_sigma_px: tuple = (2.0, 12.0)
    blob_density: float = 0.06
    bead_sigma_px: float = 2.5
    bead_density: float = 1.2
    slab_density: float = 0.3
    dose: float = 200.0
    seed: int = 0


def specimen(sim: SimulatedSeries, thickness_px, spec: RenderSpec = RenderSpec()):
    """The Gaussian blobs of a rendered series: specimen blobs, then one bead per marker.

    Returns
    -------
    centres_xyz_px : ndarray (n, 3)
    sigma_px : ndarray (n,)
    density : ndarray (n,)
        Projected density (integral along a line through the centre).
    """
    rng = np.random.default_rng(spec.seed)
    half = 0.75 * np.hypot(sim.width, sim.height)
    blobs = np.column_stack([
        rng.uniform(-half, half, (spec.n_blobs, 2)),
        rng.uniform(-thickness_px / 2, thickness_px / 2, spec.n_blobs),
    ])
    sig = np.concatenate([rng.uniform(*spec.blob_sigma_px, spec.n_blobs),
                          np.full(len(sim.points_xyz_px), spec.bead_sigma_px)])
    amp = np.concatenate([rng.exponential(spec.blob_density, spec.n_blobs),
                          np.full(len(sim.points_xyz_px), spec.bead_density)])
    return np.concatenate([blobs, sim.points_xyz_px]), sig, amp


def render_volume(centres_xyz_px, sigma_px, density, grid, shape):
    """The 3D density of Gaussian blobs sampled at voxel centres.

    Parameters
    ----------
    centres_xyz_px, sigma_px, density : from :func:`specimen`
    grid : ndarray (3, 4)
        Voxel index ``(ix, iy, iz, 1)`` -> ``(x, y, z)`` pixels (axis-aligned).
    shape : (nz, ny, nx)

    Returns
    -------
    ndarray (nz, ny, nx), float32
        Density per pixel^3 (a blob's line integral through its centre is ``density``).
    """
    nz, ny, nx = shape
    axes = [grid[0, 3] + grid[0, 0] * np.arange(nx), grid[1, 3] + grid[1, 1] * np.arange(ny),
            grid[2, 3] + grid[2, 2] * np.arange(nz)]
    vol = np.zeros(shape, dtype=np.float64)
    for (x, y, z), s, a in zip(centres_xyz_px, sigma_px, density):
        g = [np.exp(-((ax - c) ** 2) / (2 * s * s)) for ax, c in zip(axes, (x, y, z))]
        sel = [np.flatnonzero(gi > 1e-4) for gi in g]
        if any(len(si) == 0 for si in sel):
            continue
        peak = a / (np.sqrt(2 * np.pi) * s)
        block = peak * g[2][sel[2]][:, None, None] * g[1][sel[1]][None, :, None] * g[0][sel[0]][None, None, :]
        vol[np.ix_(sel[2], sel[1], sel[0])] += block
    return vol.astype(np.float32)


def render_stack(sim: SimulatedSeries, thickness_px, spec: RenderSpec = RenderSpec()):
    """Render the views of a simulated series with its true geometry.

    Beads sit at every marker's 3D position; the specimen is a slab of
    Gaussian blobs ``thickness_px`` thick.  Each 3D Gaussian projects to a
    2D Gaussian at its projected centre (exact for isotropic blobs), so the
    images follow the projection model exactly, scale, rotation and shift
    included.

    Returns
    -------
    ndarray, shape (n_views, height, width), float32
        Intensities (counts): ``dose * exp(-projected density)`` + noise.
    """
    pts, sig, amp = specimen(sim, thickness_px, spec)
    rng = np.random.default_rng(spec.seed + 1)
    n_v = sim.views.shape[0]
    xs = np.arange(sim.width) + 0.5
    ys = np.arange(sim.height) + 0.5
    out = np.empty((n_v, sim.height, sim.width), dtype=np.float32)
    idx = np.arange(len(pts))
    for j in range(n_v):
        pos = projection.project(pts, sim.views, idx, np.full(len(pts), j), sim.centre_xy_px)
        s = sig * sim.views[j, 2]
        gx = np.exp(-((xs[None, :] - pos[:, :1]) ** 2) / (2 * s[:, None] ** 2))
        gy = np.exp(-((ys[None, :] - pos[:, 1:]) ** 2) / (2 * s[:, None] ** 2))
        density = (gy * amp[:, None]).T @ gx  # (height, width)
        density += spec.slab_density / np.cos(sim.views[j, 0])
        counts = spec.dose * np.exp(-density)
        out[j] = counts + rng.normal(0.0, 1.0, counts.shape) * np.sqrt(counts)
    return out


def shift_error_px(shifts_px, true_shifts_px, tilt_rad, axis_deg):
    """RMS error of coarse shifts after removing what no coarse alignment can determine.

    Removed: a common offset, and ``x0 cos(tilt)`` and ``z0 sin(tilt)``
    across the tilt axis (the choice of the 3D point the views are
    registered on).

    Parameters
    ----------
    shifts_px, true_shifts_px : ndarray, shape (n_views, 2)
    tilt_rad : ndarray, shape (n_views,)
    axis_deg : float

    Returns
    -------
    float
        Pixels.
    """
    err = np.asarray(shifts_px) - np.asarray(true_shifts_px)
    a = np.deg2rad(axis_deg)
    across = err @ np.array([np.cos(a), np.sin(a)])
    along = err @ np.array([-np.sin(a), np.cos(a)])
    basis = np.column_stack([np.ones_like(tilt_rad), np.cos(tilt_rad), np.sin(tilt_rad)])
    across = across - basis @ np.linalg.lstsq(basis, across, rcond=None)[0]
    return float(np.sqrt(np.mean(across**2 + (along - along.mean()) ** 2)))


#: The bundled demo series (generated by the workflow's ``simulate_demo`` rule).
DEMO_SERIES = {
    # like Jou et al.'s series: 107 views -55..53, 30 markers of which 6 in every view
    "demo_paper": SimulationSpec(
        n_views=107, tilt_min_deg=-55.0, tilt_max_deg=53.0, n_markers=30, n_full_tracks=6,
        track_fraction=(0.35, 0.9), width=1024, height=1024, thickness_px=180.0,
        tilt_axis_deg=-12.5, shift_max_px=25.0, noise_px=0.5, seed=107,
    ),
    # no marker is seen in every view
    "demo_partial": SimulationSpec(
        n_views=61, tilt_min_deg=-60.0, tilt_max_deg=60.0, n_markers=28, n_full_tracks=0,
        track_fraction=(0.45, 0.85), width=1024, height=1024, thickness_px=250.0,
        tilt_axis_deg=84.0, shift_max_px=60.0, noise_px=0.4, seed=61,
    ),
    # a 1.5 deg tilt offset, 0.2 deg tilt jitter and 2 % magnification drift
    "demo_tilterr": SimulationSpec(
        n_views=81, tilt_min_deg=-60.0, tilt_max_deg=60.0, n_markers=24, n_full_tracks=10,
        track_fraction=(0.4, 0.9), width=2048, height=2048, thickness_px=300.0,
        tilt_axis_deg=-95.0, tilt_offset_deg=1.5, tilt_jitter_deg=0.2, mag_drift=0.02,
        shift_max_px=80.0, noise_px=0.6, seed=81,
    ),
    # markers and an image stack (rendered by the simulate_demo_stack rule)
    "demo_images": SimulationSpec(
        n_views=61, tilt_min_deg=-60.0, tilt_max_deg=60.0, n_markers=24, n_full_tracks=12,
        track_fraction=(0.5, 0.9), width=512, height=512, thickness_px=100.0,
        tilt_axis_deg=84.0, shift_max_px=60.0, noise_px=0.5, seed=512,
    ),
}

#: Demo series that also get an MRC stack: the render settings.
DEMO_STACKS = {
    "demo_images": RenderSpec(n_blobs=2500, dose=300.0, seed=512),
}


def marker_contours(sim):
    """The observations of a simulated series as IMOD contours, one per observed marker.

    Returns
    -------
    list of ndarray, each (n_points, 3)
        ``x, y, view`` of one marker's observations, in marker order.
    """
    contours = []
    for m in range(sim.points_xyz_px.shape[0]):
        sel = sim.marker == m
        if sel.any():
            contours.append(np.column_stack([sim.xy_px[sel], sim.view[sel]]))
    return contours


def truth_document(spec, sim):
    """The known truth of a simulated series as a JSON-ready dict (angles in degrees, pixels)."""
    return {
        "spec": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(spec).items()},
        "tilt_deg": np.rad2deg(sim.views[:, 0]).tolist(),
        "rotation_deg": np.rad2deg(sim.views[:, 1]).tolist(),
        "scale": sim.views[:, 2].tolist(),
        "shift_px": sim.views[:, 3:].tolist(),
        "points_xyz_px": sim.points_xyz_px.tolist(),
    }


def demo_stack(name):
    """The rendered views of demo series ``name`` as int16 counts, shape (n_views, ny, nx)."""
    if name not in DEMO_STACKS:
        raise ValueError(f"demo stack must be one of {', '.join(DEMO_STACKS)}; got {name!r}")
    spec = DEMO_SERIES[name]
    views = render_stack(simulate(spec), spec.thickness_px, DEMO_STACKS[name])
    return np.clip(np.round(views), -32768, 32767).astype(np.int16)


def _ncc(a, b):
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _translation_voxels(moving, fixed):
    """Translation ``d`` (voxels, ``(z, y, x)``) with ``moving(p) ~ fixed(p - d)``: the peak of
    their circular cross-correlation, refined by a parabola through its neighbours on each axis."""
    f = np.fft.rfftn(moving - moving.mean()) * np.conj(np.fft.rfftn(fixed - fixed.mean()))
    cc = np.fft.irfftn(f, s=moving.shape, axes=range(moving.ndim))
    peak = np.array(np.unravel_index(np.argmax(cc), cc.shape))
    d = peak.astype(float)
    for axis, n in enumerate(cc.shape):
        idx = [int(p) for p in peak]
        vals = []
        for step in (-1, 0, 1):
            idx[axis] = (peak[axis] + step) % n
            vals.append(cc[tuple(idx)])
        denom = vals[0] - 2 * vals[1] + vals[2]
        if denom < 0:
            d[axis] += 0.5 * (vals[0] - vals[2]) / denom
    shape = np.array(cc.shape)
    return np.where(d > shape / 2, d - shape, d)


def tomogram_fidelity(sim, line_integrals, views, thickness_px, render=RenderSpec(), binning=2, tilt_deg=None):
    """How well a tomogram reconstructed with an alignment matches the specimen, against the true geometry.

    Both the tomogram with the true geometry (``sim.views``) and the one with
    the given alignment are reconstructed by weighted back-projection (the
    workflow's :func:`tiltflow.reconstruct.reconstruct`) from the same line
    integrals, and compared by normalised cross-correlation with the
    specimen's density sampled on the same voxel grid.  The given alignment
    may place the specimen elsewhere (its gauge: a 3D translation that no
    alignment can determine); the truth is moved by the translation that
    best matches the tomogram (cross-correlation peak) before comparing.

    Parameters
    ----------
    sim : SimulatedSeries
    line_integrals : ndarray, shape (n_views, height, width)
        ``-log(counts / dose)`` of the rendered views (positive density).
    views : ndarray, shape (n_views, 5) or (n_views, 6)
        The alignment's view parameters (:data:`tiltflow.projection.VIEW_COLUMNS`),
        or its IMOD transforms (a ``{series}.xf``, with ``tilt_deg``).
    thickness_px : float
        The specimen slab thickness it was rendered with; the tomogram is 1.5 times as thick.
    render : RenderSpec
        As the stack was rendered with.
    binning : int
    tilt_deg : ndarray (n_views,), optional
        The tilts (a ``{series}.tlt``) when ``views`` are transforms.

    Returns
    -------
    dict
        ``ncc_true_geometry``, ``ncc``, ``ratio`` (``ncc / ncc_true_geometry``),
        ``translation_px`` (x, y, z, unbinned pixels, the gauge removed).
    """
    from . import reconstruct

    shape_yx = line_integrals.shape[1:]
    opts = reconstruct.ReconOptions(thickness_px=int(round(1.5 * thickness_px)), binning=binning)
    grid = reconstruct.grid_matrix(shape_yx, opts)
    shape = reconstruct.volume_shape(shape_yx, opts)
    centres, sigma, density = specimen(sim, thickness_px, render)
    truth = render_volume(centres, sigma, density, grid, shape)
    ideal, _ = reconstruct.reconstruct(line_integrals, projection.views_to_xf(sim.views),
                                       np.rad2deg(sim.views[:, 0]), opts)
    views = np.asarray(views, dtype=float)
    xf, tilt = ((views, tilt_deg) if views.shape[1] == 6
                else (projection.views_to_xf(views), np.rad2deg(views[:, 0])))
    given, _ = reconstruct.reconstruct(line_integrals, xf, tilt, opts)
    dz, dy, dx = _translation_voxels(given, truth) * binning
    moved = render_volume(centres + np.array([dx, dy, dz]), sigma, density, grid, shape)
    r_ideal, r_given = _ncc(ideal, truth), _ncc(given, moved)
    return {"ncc_true_geometry": r_ideal, "ncc": r_given, "ratio": r_given / r_ideal,
            "translation_px": [float(dx), float(dy), float(dz)]}
