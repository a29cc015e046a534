"""Coarse alignment of a tilt series by cross-correlation (what IMOD's tiltxcorr does).

For consecutive views in tilt order, the view nearer zero tilt is stretched
by ``cos(theta_far) / cos(theta_near)`` perpendicular to the tilt axis,
*about the point where the tilt axis lies in that view* (image centre plus
the view's shift found so far), both views are tapered at the edges and
band-pass filtered, and the peak of their FFT cross-correlation gives the
shift between them with sub-pixel precision.  Shifts accumulate outwards
from the reference (zero-tilt) view.

The tilt-axis angle is refined by searching the angle that maximises the
mean normalised correlation of stretched pairs at high tilt (where a wrong
stretch direction hurts most); its uncertainty is the spread of the best
angle over bootstrap resamples of the pairs.

Everything here works on arrays: ``views`` is ``(n_views, ny, nx)``,
positions are ``(x, y)`` in IMOD pixel convention (pixel centres at
``i + 0.5``), shifts are raw-image pixels.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import scipy.fft

from ._image_kernels import affine_bilinear

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CoarseOptions:
    """Parameters of the cross-correlation coarse alignment.

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
        Number of views (beyond 15 degrees of tilt, evenly spread) compared
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
        if not self.axis_search_range_deg > 0:
            raise ValueError(f"axis_search_range_deg must be > 0, got {self.axis_search_range_deg!r}")


@dataclasses.dataclass(frozen=True)
class CoarseResult:
    """Outcome of :func:`coarse_align`.

    Attributes
    ----------
    shifts_px : ndarray, shape (n_views, 2)
        Shift of each view relative to the reference view, raw pixels
        (the content of view j sits at ``p + shift_j`` when it is at ``p``
        in the reference view, on the tilt axis).
    peak : ndarray, shape (n_views,)
        Normalised correlation peak of the pair that placed each view
        (1 for the reference view, NaN for views not correlated).
    weak_views : list of int
        Views whose peak was weak (see ``CoarseOptions.weak_peak_ratio``).
    tilt_axis_deg : float
        The tilt-axis angle used for the final pass (the refined one when
        the search ran).
    axis_search : dict or None
        ``estimate_deg``, ``uncertainty_deg``, ``start_deg``, ``angles_deg``,
        ``score`` of the search.
    binning : int
    reference_view : int
    """

    shifts_px: np.ndarray
    peak: np.ndarray
    weak_views: list
    tilt_axis_deg: float
    axis_search: dict | None
    binning: int
    reference_view: int


def auto_binning(shape, target=512):
    """Smallest power of two that brings ``max(shape)`` to <= ``target``."""
    b = 1
    while max(shape) / b > target:
        b *= 2
    return b


def bin_image(img, b):
    """Average ``b x b`` blocks (the image is cropped to a multiple of ``b``)."""
    if b == 1:
        return np.asarray(img, dtype=np.float32)
    ny, nx = (img.shape[0] // b) * b, (img.shape[1] // b) * b
    return img[:ny, :nx].reshape(ny // b, b, nx // b, b).mean(axis=(1, 3), dtype=np.float64).astype(np.float32)


def taper_window(shape, fraction):
    """Separable window: 1 inside, cosine fall-off to 0 over ``fraction`` of each side."""
    def ramp(n):
        w = np.ones(n)
        k = int(round(fraction * n))
        if k > 0:
            t = (np.arange(k) + 0.5) / k
            w[:k] = 0.5 - 0.5 * np.cos(np.pi * t)
            w[n - k:] = w[:k][::-1]
        return w

    return np.outer(ramp(shape[0]), ramp(shape[1])).astype(np.float32)


def bandpass(shape, sigma1, radius2, sigma2):
    """Real-FFT band-pass filter of an image of ``shape``, shape ``(ny, nx // 2 + 1)``."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    r = np.sqrt(fx**2 + fy**2)
    f = np.ones_like(r)
    if sigma1 > 0:
        f *= 1.0 - np.exp(-(r**2) / (2 * sigma1**2))
    if sigma2 > 0:
        f *= np.where(r <= radius2, 1.0, np.exp(-((r - radius2) ** 2) / (2 * sigma2**2)))
    elif radius2 > 0:
        f *= r <= radius2
    return f


def preprocess(img, window, clip_sd=3.0):
    """Zero-mean, unit-variance, outlier-clipped, tapered view (float32).

    Values beyond ``clip_sd`` robust standard deviations (median absolute
    deviation) are clipped: gold beads are far darker than the specimen
    and, sitting on the section's surfaces, would otherwise pull the
    correlation of high-tilt pairs towards one surface's parallax.
    """
    sample = img[::4, ::4]  # the robust scale needs no more than 1/16 of the pixels
    med = float(np.median(sample))
    sd = 1.4826 * float(np.median(np.abs(sample - med)))
    if not sd > 0:
        sd = float(img.std()) or 1.0
    x = np.clip((img - med) / sd, -clip_sd, clip_sd) if clip_sd else (img - med) / sd
    return ((x - (x * window).sum() / window.sum()) * window).astype(np.float32)


def stretch(img, factor, axis_angle_rad, about_xy):
    """Stretch ``img`` by ``factor`` perpendicular to the tilt axis, about a point.

    Parameters
    ----------
    img : ndarray, shape (ny, nx)
    factor : float
        Scale applied along ``(cos a, sin a)`` (perpendicular to the axis).
    axis_angle_rad : float
        Tilt-axis angle ``a`` (IMOD RotationAngle convention).
    about_xy : (float, float)
        Fixed point, IMOD pixel coordinates of ``img``.

    Returns
    -------
    ndarray, shape (ny, nx)
        ``out(p) = img(a + T^-1 (p - a))`` with ``T = I + (factor - 1) n n^T``,
        linear interpolation, zero outside.
    """
    n = np.array([np.cos(axis_angle_rad), np.sin(axis_angle_rad)])
    tinv = np.eye(2) + (1.0 / factor - 1.0) * np.outer(n, n)  # in (x, y)
    a = np.asarray(about_xy, dtype=float)
    # index (r, c) <-> (x, y) = (c + 0.5, r + 0.5)
    perm = np.array([[0, 1], [1, 0]])
    m = perm @ tinv @ perm  # acts on (r, c)
    a_rc = a[::-1] - 0.5
    offset = a_rc - m @ a_rc
    out = np.empty(img.shape, dtype=np.float32)
    affine_bilinear(np.ascontiguousarray(img, dtype=np.float32), m, offset, out)
    return out


def xcorr_shift(fixed, moving, filt, moving_ft=None):
    """Shift ``s`` (x, y) with ``moving(p) ~ fixed(p - s)``, and the normalised peak.

    Both images are already preprocessed; ``filt`` is the band-pass of
    :func:`bandpass` for their shape.  ``moving_ft``, if given, is the
    filtered ``rfft2`` of ``moving`` (reused between passes).
    """
    ff = scipy.fft.rfft2(fixed, workers=-1) * filt
    fm = scipy.fft.rfft2(moving, workers=-1) * filt if moving_ft is None else moving_ft
    cc = scipy.fft.irfft2(fm * np.conj(ff), s=fixed.shape, workers=-1)
    norm = np.sqrt(_power(ff, fixed.shape) * _power(fm, fixed.shape))
    r, c = np.unravel_index(np.argmax(cc), cc.shape)
    peak = float(cc[r, c] / norm) if norm > 0 else 0.0
    dr = _gauss3(cc[(r - 1) % cc.shape[0], c], cc[r, c], cc[(r + 1) % cc.shape[0], c])
    dc = _gauss3(cc[r, (c - 1) % cc.shape[1]], cc[r, c], cc[r, (c + 1) % cc.shape[1]])
    ny, nx = cc.shape
    sy = r + dr
    sx = c + dc
    if sy > ny / 2:
        sy -= ny
    if sx > nx / 2:
        sx -= nx
    return np.array([sx, sy]), peak


def _power(f, shape):
    """Sum of squares of the real image whose rfft2 is ``f`` (Parseval)."""
    w = np.full(f.shape[1], 2.0)
    w[0] = 1.0
    if shape[1] % 2 == 0:
        w[-1] = 1.0
    return float((np.abs(f) ** 2 * w).sum() / (shape[0] * shape[1]))


def _gauss3(a, b, c):
    """Sub-pixel peak offset from three samples: a Gaussian (log-parabola) fit,
    which does not pull a correlation peak towards whole pixels the way a
    plain parabola does; the parabola when a sample is not positive."""
    if a > 0 and b > 0 and c > 0:
        la, lb, lc = np.log(a), np.log(b), np.log(c)
        den = la - 2 * lb + lc
        if den < 0:
            return float(np.clip(0.5 * (la - lc) / den, -0.5, 0.5))
    return _parabola(a, b, c)


def _parabola(a, b, c):
    den = a - 2 * b + c
    return 0.0 if den == 0 else float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))


def pair_order(tilt_deg, reference_view, usable):
    """Pairs ``(near, far)`` in tilt order walking outwards from the reference view.

    Views not ``usable`` are skipped (the next usable view pairs with the
    last usable one).
    """
    order = np.argsort(tilt_deg, kind="stable")
    pos = int(np.flatnonzero(order == reference_view)[0])
    pairs = []
    for step in (1, -1):
        last = reference_view
        k = pos + step
        while 0 <= k < len(order):
            v = int(order[k])
            if usable[v]:
                pairs.append((last, v))
                last = v
            k += step
    return pairs


def measure_shift(fixed, moving_image, window, filt, moving=None, cache=None):
    """Shift ``s`` (x, y) with ``moving(p) ~ fixed(p - s)``, unbiased by the taper.

    ``fixed`` is preprocessed (tapered with ``window``); ``moving_image`` is
    the raw (binned) moving view.  The first estimate uses ``moving``
    tapered with the same window; coinciding window edges pull that peak
    towards zero, so the moving view is tapered again with the window moved
    by the (rounded) estimate and correlated once more.

    ``cache`` (a dict) keeps the filtered transforms of the moving view's
    tapers between calls.

    Returns
    -------
    shift : ndarray (2,)
    peak : float
        Normalised correlation at the peak.
    """
    cache = {} if cache is None else cache

    def transform(k):
        key = (id(moving_image), int(k[0]), int(k[1]))
        if key not in cache:
            img = moving if (moving is not None and not any(k)) else preprocess(moving_image, _shifted(window, k))
            cache[key] = scipy.fft.rfft2(img, workers=-1) * filt
        return cache[key]

    d, peak = xcorr_shift(fixed, None, filt, transform((0, 0)))
    k = np.round(d).astype(int)
    if k.any():
        d2, peak2 = xcorr_shift(fixed, None, filt, transform(k))
        if np.all(np.abs(d2 - d) < 2.0):  # the same peak, refined
            d, peak = d2, peak2
    return d, peak


def _shifted(window, k):
    """``window`` moved by whole pixels ``k = (kx, ky)``, zero where it was not defined."""
    out = np.zeros_like(window)
    ny, nx = window.shape
    kx, ky = int(np.clip(k[0], -nx, nx)), int(np.clip(k[1], -ny, ny))
    src = window[max(0, -ky): ny - max(0, ky), max(0, -kx): nx - max(0, kx)]
    out[max(0, ky): max(0, ky) + src.shape[0], max(0, kx): max(0, kx) + src.shape[1]] = src
    return out


def _chain(prepared, binned, window, tilt_rad, axis_rad, pairs, binning, centre_xy, filt, n_views, reference_view,
           cache):
    """Accumulate shifts along ``pairs``; returns (shifts raw px, peaks).

    Each pair is correlated twice: the second time the far view is tapered
    with the window moved by the first estimate, so that the two windows'
    edges do not coincide (coinciding edges pull the peak towards zero).
    """
    shifts = np.zeros((n_views, 2))
    peaks = np.full(n_views, np.nan)
    peaks[reference_view] = 1.0
    c_b = np.asarray(centre_xy) / binning
    for near, far in pairs:
        f = np.cos(tilt_rad[far]) / np.cos(tilt_rad[near])
        about = c_b + shifts[near] / binning
        s = stretch(prepared[near], f, axis_rad, about)
        d, peak = measure_shift(s, binned[far], window, filt, prepared[far], cache)
        shifts[far] = shifts[near] + d * binning
        peaks[far] = peak
    return shifts, peaks


def coarse_align(views, tilt_deg, tilt_axis_deg, reference_view, options=CoarseOptions(), usable=None,
                 fallback_steps_px=None):
    """Cross-correlation coarse alignment of a tilt series.

    Parameters
    ----------
    views : sequence of ndarray, each (ny, nx), or ndarray (n_views, ny, nx)
        Raw views (any real dtype); only ``views[i]`` is accessed, one at a
        time, so a memory-mapped stack works.
    tilt_deg : ndarray, shape (n_views,)
        Nominal tilt angles.
    tilt_axis_deg : float
        Starting tilt-axis angle (IMOD RotationAngle convention).
    reference_view : int
        The view all shifts are relative to (usually nearest zero tilt).
    options : CoarseOptions
    usable : ndarray of bool, shape (n_views,), optional
        False for views to leave out (excluded views); their shifts are
        interpolated over tilt.
    fallback_steps_px : dict, optional
        ``{(near, far): step (2,)}`` from another source (the markers) used
        instead of the correlation for pairs whose peak is weak.

    Returns
    -------
    CoarseResult
    """
    tilt_deg = np.asarray(tilt_deg, dtype=float)
    n = len(tilt_deg)
    usable = np.ones(n, dtype=bool) if usable is None else np.asarray(usable, dtype=bool)
    if not usable[reference_view]:
        raise ValueError(f"reference_view {reference_view} is not usable")
    first = np.asarray(views[reference_view])
    binning = options.binning or auto_binning(first.shape)
    ny, nx = first.shape
    centre = (nx / 2.0, ny / 2.0)
    binned_shape = (ny // binning, nx // binning)
    window = taper_window(binned_shape, options.taper_fraction)
    prepared, binned = {}, {}
    for v in np.flatnonzero(usable):
        binned[int(v)] = bin_image(np.asarray(views[v], dtype=np.float32), binning)
        prepared[int(v)] = preprocess(binned[int(v)], window)
    filt = bandpass(binned_shape, options.filter_sigma1, options.filter_radius2, options.filter_sigma2)
    tilt_rad = np.deg2rad(tilt_deg)
    pairs = pair_order(tilt_deg, reference_view, usable)
    axis = float(tilt_axis_deg)
    cache = {}
    args = (prepared, binned, window, tilt_rad)
    shifts, peaks = _chain(*args, np.deg2rad(axis), pairs, binning, centre, filt, n, reference_view, cache)
    search = None
    if options.axis_search and len(pairs) >= 4:
        search = search_tilt_axis(binned, tilt_rad, axis, reference_view, shifts / binning, options)
        del binned
        axis = search["estimate_deg"]
        shifts, peaks = _chain(*args, np.deg2rad(axis), pairs, binning, centre, filt, n, reference_view, cache)
    finite = peaks[np.isfinite(peaks) & (np.arange(n) != reference_view)]
    median = float(np.median(finite)) if len(finite) else 1.0
    weak = [far for near, far in pairs if peaks[far] < options.weak_peak_ratio * median]
    if weak:
        log.warning("coarse: weak correlation peaks for views %s (peaks %s; median %.3f)",
                    weak, [round(float(peaks[v]), 3) for v in weak], median)
        if fallback_steps_px:
            replaced = []
            for near, far in pairs:  # in walking order, so earlier fixes propagate
                if far in weak and (near, far) in fallback_steps_px:
                    delta = np.asarray(fallback_steps_px[(near, far)]) - (shifts[far] - shifts[near])
                    # move this view and everything placed from it further out
                    moved = _downstream(pairs, far)
                    shifts[moved] += delta
                    replaced.append(far)
            if replaced:
                log.warning("coarse: views %s placed by their markers instead", replaced)
    if (~usable).any():
        src = np.flatnonzero(usable)
        order = np.argsort(tilt_deg[src])
        for k in range(2):
            shifts[~usable, k] = np.interp(tilt_deg[~usable], tilt_deg[src][order], shifts[src, k][order])
    return CoarseResult(shifts, peaks, weak, axis, search, binning, int(reference_view))


def _downstream(pairs, view):
    """``view`` and every view placed from it (further out along the chain)."""
    out = {view}
    changed = True
    while changed:
        changed = False
        for near, far in pairs:
            if near in out and far not in out:
                out.add(far)
                changed = True
    return sorted(out)


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
            return float(fine_angles[i] + 0.5 * _parabola(curve[i - 1], curve[i], curve[i + 1]))
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
