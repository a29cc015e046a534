"""The tilt-axis angle from the images: common lines of de-foreshortened views.

For parallel projection, the integral of a view across the tilt axis is
the projection of the specimen onto the axis, the same for every tilt once
the view is stretched back to zero-tilt geometry; a wrong axis angle moves
features along the axis by ``x (1 - cos theta) delta``.  The search
maximises the agreement of these profiles with the reference view's.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.fft

from .imaging import parabola_peak, auto_binning, bandpass, bin_image, stretch

log = logging.getLogger(__name__)


def axis_profile(img_filtered, angle_rad, centre_xy, mask):
    """Projection of an image onto the tilt-axis direction (the common line).

    Parallel projection makes the integral of a view along the direction
    perpendicular to the tilt axis the same for every tilt: it is the
    projection of the specimen onto the axis.  Returns the profile in 1-px
    bins along ``(-sin a, cos a)`` through ``centre_xy``.
    """
    ny, nx = img_filtered.shape
    ys, xs = np.mgrid[0:ny, 0:nx]
    t = (xs + 0.5 - centre_xy[0]) * -np.sin(angle_rad) + (ys + 0.5 - centre_xy[1]) * np.cos(angle_rad)
    r = int(np.ceil(np.hypot(nx, ny))) + 2
    t = np.clip(t[mask] + r, 0, 2 * r - 1)
    i0 = np.floor(t).astype(int)
    w = t - i0
    v = img_filtered[mask]
    # linear splatting: no preference for angles that line up with the pixel grid
    return np.bincount(i0, v * (1 - w), minlength=2 * r + 2) + np.bincount(i0 + 1, v * w, minlength=2 * r + 2)


def _profile_score(pa, pb):
    """Normalised correlation of two aligned profiles."""
    a = pa - pa.mean()
    b = pb - pb.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


#: High-pass sigma (cycles per pixel at the search's resolution) of the axis search.
AXIS_SEARCH_SIGMA1 = 0.03
#: Low-pass radius of the axis search: pixel-level noise, which linear interpolation smooths
#: differently along different directions, would bias the angle.
AXIS_SEARCH_RADIUS2 = 0.15
#: Views beyond this tilt are compared with the reference view (sensitivity grows with 1 - cos tilt).
AXIS_SEARCH_MIN_TILT_DEG = 25.0
#: Largest image side used by the axis search.
AXIS_SEARCH_SIZE = 256
#: Radius of the search window, as a fraction of the smaller side.
AXIS_SEARCH_RADIUS = 0.45


def search_tilt_axis(binned, tilt_rad, start_deg, reference_view, shifts_binned_px, options, n_boot=200, seed=0):
    """Tilt-axis angle from common lines of de-foreshortened views.

    Every view is stretched back to zero-tilt geometry (by
    ``cos(theta_ref) / cos(theta)`` perpendicular to the candidate axis,
    about its axis point), windowed by the same soft-edged disc around its
    axis point, band-passed and projected onto the candidate axis.  For
    parallel projection these profiles are the projection of the specimen
    onto the tilt axis and agree between views -- the parallax of the
    specimen's thickness runs perpendicular to the axis and is integrated
    out -- while a wrong angle shifts features along the axis by
    ``x (1 - cos theta) delta``.  The score is the mean normalised
    correlation of each view's profile with the reference view's.

    Parameters
    ----------
    binned : dict view -> ndarray (ny, nx)
        Binned views.
    tilt_rad : ndarray, shape (n_views,)
    start_deg : float
    reference_view : int
    shifts_binned_px : ndarray, shape (n_views, 2)
        Shifts from a first correlation pass, in binned pixels (they place
        each view's axis point).
    options : CoarseOptions

    Returns
    -------
    dict
        ``estimate_deg``, ``uncertainty_deg`` (bootstrap over views),
        ``start_deg``, ``angles_deg``, ``score``.
    """
    candidates = [v for v in sorted(binned) if v != reference_view and abs(tilt_rad[v]) > np.deg2rad(AXIS_SEARCH_MIN_TILT_DEG)]
    keep = np.unique(np.linspace(0, len(candidates) - 1, min(len(candidates), options.axis_search_pairs)).round())
    views = [candidates[int(i)] for i in keep] if candidates else []
    # the search runs at <= AXIS_SEARCH_SIZE px: the angle needs a few hundred pixels, not more
    b = auto_binning(binned[reference_view].shape, AXIS_SEARCH_SIZE)
    small = {v: bin_image(binned[v], b) for v in views + [reference_view]}
    shape = small[reference_view].shape
    ny, nx = shape
    ys, xs = np.mgrid[0:ny, 0:nx]
    c_img = np.array([nx / 2.0, ny / 2.0])
    # profiles need detail along the axis, not a smooth correlation peak: high-pass only
    filt = bandpass(shape, AXIS_SEARCH_SIGMA1, AXIS_SEARCH_RADIUS2, 0.05)
    radius = AXIS_SEARCH_RADIUS * min(nx, ny)
    normed = {}
    for v, img in small.items():
        normed[v] = (img - img.mean()) / (img.std() or 1.0)
    axis_pt = {v: c_img + shifts_binned_px[v] / b for v in small}

    rotated = {}

    def window(v, a):
        # a full cosine bell across the axis: features that the specimen's parallax moves
        # perpendicular to the axis change weight smoothly instead of crossing an edge
        if a not in rotated:
            ca, sa = np.cos(a), np.sin(a)
            rotated.clear()
            rotated[a] = ((xs + 0.5) * ca + (ys + 0.5) * sa, -(xs + 0.5) * sa + (ys + 0.5) * ca)
        u0, t0 = rotated[a]
        ca, sa = np.cos(a), np.sin(a)
        u = u0 - (axis_pt[v][0] * ca + axis_pt[v][1] * sa)
        t = t0 - (-axis_pt[v][0] * sa + axis_pt[v][1] * ca)
        bell = np.cos(0.5 * np.pi * np.clip(u / radius, -1.0, 1.0)) ** 2
        edge = np.clip((radius - np.abs(t)) / (0.2 * radius), 0.0, 1.0)
        return bell * (0.5 - 0.5 * np.cos(np.pi * edge))

    def profile(v, a):
        f = np.cos(tilt_rad[reference_view]) / np.cos(tilt_rad[v])
        img = stretch(normed[v], f, a, axis_pt[v]) if v != reference_view else normed[v]
        w = window(v, a)
        img = (img - (img * w).sum() / w.sum()) * w
        img = scipy.fft.irfft2(scipy.fft.rfft2(img, workers=-1) * filt, s=shape, workers=-1)
        return axis_profile(img, a, axis_pt[v], w > 0)

    def scores(angle_deg):
        a = np.deg2rad(angle_deg)
        ref = profile(reference_view, a)
        return [_profile_score(ref, profile(v, a)) for v in views]

    r = options.axis_search_range_deg
    table = {float(a): scores(a) for a in start_deg + np.arange(-r, r + 1e-9, 2.0)}
    best = max(table, key=lambda a: np.mean(table[a]))
    # a uniform fine grid around the best coarse angle; interpolation uses it alone
    fine_angles = best + np.arange(-2.0, 2.01, 0.5)
    fine = np.array([table[float(a)] if float(a) in table else scores(a) for a in fine_angles])
    for a, row in zip(fine_angles, fine):
        table[float(a)] = list(row)
    angles = np.array(sorted(table))
    mean = np.array([np.mean(table[a]) for a in angles])

    def peak_of(curve):
        i = int(np.argmax(curve))
        if 0 < i < len(curve) - 1:
            return float(fine_angles[i] + 0.5 * parabola_peak(curve[i - 1], curve[i], curve[i + 1]))
        return float(fine_angles[i])

    fine_mean = fine.mean(axis=1)
    estimate = peak_of(fine_mean)
    rng = np.random.default_rng(seed)
    boots = [peak_of(fine[:, rng.integers(0, fine.shape[1], fine.shape[1])].mean(axis=1)) for _ in range(n_boot)]
    result = {
        "start_deg": float(start_deg),
        "estimate_deg": estimate,
        "uncertainty_deg": float(np.std(boots)),
        "angles_deg": angles.tolist(),
        "score": mean.tolist(),
    }
    log.info("tilt-axis search: %.2f deg (started at %.2f), bootstrap uncertainty %.2f deg",
             estimate, start_deg, result["uncertainty_deg"])
    return result
