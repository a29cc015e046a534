"""Image primitives shared by the coarse alignment, the tilt-axis search and the reconstruction.

Binning, edge tapers, band-pass filters, robust normalisation, the stretch
perpendicular to the tilt axis, and FFT cross-correlation with a sub-pixel
peak.  Images are ``(ny, nx)`` arrays; positions are ``(x, y)`` in IMOD
pixel convention (pixel centres at ``i + 0.5``).
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from ._image_kernels import affine_bilinear


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
    return parabola_peak(a, b, c)


def parabola_peak(a, b, c):
    """Sub-pixel offset (clipped to +-0.5) of the vertex of the parabola through three samples."""
    den = a - 2 * b + c
    return 0.0 if den == 0 else float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))


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
