"""Projection matching ("autofocus"): view shifts as phase errors against re-projections.

A shift of a projection multiplies its Fourier transform by a phase ramp.
Reconstruct from the current alignment, re-project every view, read each
view's remaining shift off the phase difference between data and
re-projection, correct, repeat until the largest update is small.

This module works on *sinograms*: ``sino[view, s]``, the projections of
one x-z slice (or of a slab summed along the tilt axis) at tilt angles
``angle_rad`` about the axis, detector coordinate ``s`` in pixels centred
at ``(n_s - 1) / 2``.  The projection model is tiltflow's: a point ``(x, z)``
of the slice lands at ``s = x cos(theta) + z sin(theta)``.  Slices are
``img[z, x]``, centred the same way.

Reconstructions: filtered back-projection (``"wbp"``), SIRT (``"sirt"``)
and SIRT with a total-variation proximal step (``"tv"``, Chambolle's dual
projection for the TV prox).  With WBP the view being matched is left out
of the reconstruction it is compared with (its own filtered
back-projection is subtracted), so a view is never matched against itself.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

log = logging.getLogger(__name__)

RECONSTRUCTIONS = ("wbp", "sirt", "tv")
#: Anderson acceleration starts once the largest update is below this (the linear regime).
ANDERSON_START_PX = 2.0


class Anderson:
    """Anderson acceleration of the fixed-point iteration ``d <- d + g(d)``.

    Shift errors that vary slowly from view to view are nearly consistent
    with a (slightly wrong) reconstruction, so plain iterations remove only
    a few per cent of them per round; mixing the last ``memory`` updates
    (a small least-squares problem) removes them in a few rounds.
    """

    def __init__(self, memory):
        self.memory = int(memory)
        self.d, self.g = [], []

    def step(self, d, g):
        """The next step from ``d`` given the update ``g`` there."""
        self.d.append(np.array(d, dtype=float))
        self.g.append(np.array(g, dtype=float))
        self.d, self.g = self.d[-(self.memory + 1):], self.g[-(self.memory + 1):]
        if self.memory == 0 or len(self.g) < 2:
            return g
        dg = np.diff(np.array(self.g), axis=0).T  # (n, m)
        dd = np.diff(np.array(self.d), axis=0).T
        gamma = np.linalg.lstsq(dg, g, rcond=1e-10)[0]
        return g - (dd + dg) @ gamma


@dataclasses.dataclass(frozen=True)
class MatchOptions:
    """Parameters of :func:`match_shifts`.

    Attributes
    ----------
    reconstruction : {"wbp", "sirt", "tv"}
    max_iterations : int
        Reconstruct / re-project / estimate rounds at most.
    tolerance_px : float
        Stop when the largest shift update is below this.
    damping : float
        Fraction of each estimated shift that is applied (0 < damping <= 1).
    max_frequency : float
        Highest spatial frequency (cycles/pixel, <= 0.5) used to estimate shifts.
    sirt_iterations : int
        SIRT (or SIRT-TV) iterations per reconstruction.
    tv_weight : float
        Weight of the total-variation prox, relative to the image's range.
    anderson_memory : int
        Updates mixed by Anderson acceleration (0: plain damped iterations).
    """

    reconstruction: str = "wbp"
    max_iterations: int = 40
    tolerance_px: float = 0.05
    damping: float = 1.0
    max_frequency: float = 0.25
    sirt_iterations: int = 30
    tv_weight: float = 0.02
    anderson_memory: int = 5

    def __post_init__(self):
        if self.reconstruction not in RECONSTRUCTIONS:
            raise ValueError(f"reconstruction must be one of {RECONSTRUCTIONS}, got {self.reconstruction!r}")
        if not 0 < self.damping <= 1:
            raise ValueError(f"damping must be in (0, 1], got {self.damping}")
        if not 0 < self.max_frequency <= 0.5:
            raise ValueError(f"max_frequency must be in (0, 0.5] cycles/pixel, got {self.max_frequency}")


@dataclasses.dataclass(frozen=True)
class MatchResult:
    """Result of :func:`match_shifts`.

    Attributes
    ----------
    shifts_px : ndarray, shape (n_views,)
        Estimated shift of each view along ``s`` (data = true projection moved by this).
    ncc_before, ncc_after : ndarray, shape (n_views,)
        Normalised cross-correlation of each view with its re-projection in
        the first and the last round.
    updates_px : list of float
        Largest shift update of each round.
    converged : bool
    reconstruction : ndarray, shape (n_z, n_x)
        The last reconstruction.
    """

    shifts_px: np.ndarray
    ncc_before: np.ndarray
    ncc_after: np.ndarray
    updates_px: list
    converged: bool
    reconstruction: np.ndarray


def _centre(n):
    return (n - 1) / 2.0


def project(img, angle_rad, n_s=None):
    """Parallel-beam projections (bilinear, ray-driven at unit steps).

    ``img[z, x]`` gives ``(n_views, n_s)``; a stack of slices ``img[band, z, x]``
    gives ``(n_bands, n_views, n_s)``.
    """
    from ._image_kernels import project_slices

    img = np.asarray(img, dtype=np.float64)
    vol = img[None] if img.ndim == 2 else img
    n_s = vol.shape[2] if n_s is None else int(n_s)
    angle_rad = np.asarray(angle_rad, dtype=np.float64)
    out = np.empty((vol.shape[0], len(angle_rad), n_s))
    project_slices(np.ascontiguousarray(vol), np.cos(angle_rad), np.sin(angle_rad), n_s, out)
    return out[0] if img.ndim == 2 else out


def backproject(sino, angle_rad, shape):
    """Unfiltered back-projection of ``sino[view, s]`` onto a ``shape = (n_z, n_x)`` slice
    (of ``sino[band, view, s]`` onto ``(n_bands, n_z, n_x)``)."""
    from ._image_kernels import backproject_slices

    sino = np.asarray(sino, dtype=np.float64)
    stack = sino[None] if sino.ndim == 2 else sino
    angle_rad = np.asarray(angle_rad, dtype=np.float64)
    out = np.empty((stack.shape[0], int(shape[0]), int(shape[1])))
    backproject_slices(np.ascontiguousarray(stack), np.cos(angle_rad), np.sin(angle_rad), int(shape[0]),
                       int(shape[1]), out)
    return out[0] if sino.ndim == 2 else out


def _own_reprojection(filtered, angle_rad, shape):
    from ._image_kernels import own_reprojection

    stack = filtered[None] if filtered.ndim == 2 else filtered
    angle_rad = np.asarray(angle_rad, dtype=np.float64)
    out = np.empty(stack.shape)
    own_reprojection(np.ascontiguousarray(stack), np.cos(angle_rad), np.sin(angle_rad), int(shape[0]),
                     int(shape[1]), out)
    return out[0] if filtered.ndim == 2 else out


def ramp_filter(sino):
    """Ram-Lak filter with a Hann roll-off along ``s`` (zero-padded to twice the length)."""
    n_s = sino.shape[-1]
    pad = 2 * n_s
    k = np.fft.rfftfreq(pad)
    filt = 2 * np.abs(k) * (0.5 + 0.5 * np.cos(np.pi * k / 0.5))
    return np.fft.irfft(np.fft.rfft(sino, pad, axis=-1) * filt, pad, axis=-1)[..., :n_s]


def _tv_prox(img, weight, iterations=20):
    """``argmin_u 0.5 |u - img|^2 + weight TV(u)`` (isotropic TV; Chambolle's dual projection)."""
    px = np.zeros_like(img)
    pz = np.zeros_like(img)
    tau = 0.125
    for _ in range(iterations):
        div = (px - np.roll(px, 1, axis=1)) + (pz - np.roll(pz, 1, axis=0))
        u = div - img / weight
        gx = np.roll(u, -1, axis=1) - u
        gz = np.roll(u, -1, axis=0) - u
        norm = 1 + tau * np.hypot(gx, gz)
        px = (px + tau * gx) / norm
        pz = (pz + tau * gz) / norm
    div = (px - np.roll(px, 1, axis=1)) + (pz - np.roll(pz, 1, axis=0))
    return img - weight * div


def sirt(sino, angle_rad, shape, iterations=30, tv_weight=0.0, x0=None):
    """SIRT (row/column-sum preconditioned Landweber), non-negative; with ``tv_weight`` > 0 every
    update is followed by a TV prox of that weight times the data's range (SIRT-TV)."""
    ones_img = np.ones(shape)
    row = project(ones_img, angle_rad, sino.shape[1])
    col = backproject(np.ones_like(sino), angle_rad, shape)
    r = np.where(row > 1e-9, 1.0 / np.maximum(row, 1e-9), 0.0)
    c = np.where(col > 1e-9, 1.0 / np.maximum(col, 1e-9), 0.0)
    x = np.zeros(shape) if x0 is None else x0.copy()
    weight = tv_weight * float(np.ptp(sino) / max(np.mean(row[row > 0]), 1e-9)) if tv_weight > 0 else 0.0
    for _ in range(iterations):
        x = x + c * backproject(r * (sino - project(x, angle_rad, sino.shape[1])), angle_rad, shape)
        np.maximum(x, 0.0, out=x)
        if weight > 0:
            x = _tv_prox(x, weight)
    return x


def shift_rows(sino, shift_px):
    """Move each row of ``sino`` (or of each band) by ``shift_px[j]`` pixels along ``s``
    (Fourier shift, zero-padded)."""
    n_s = sino.shape[-1]
    pad = 2 * n_s
    k = np.fft.rfftfreq(pad)
    ramp = np.exp(-2j * np.pi * k[None, :] * np.asarray(shift_px, dtype=float)[:, None])
    return np.fft.irfft(np.fft.rfft(sino, pad, axis=-1) * ramp, pad, axis=-1)[..., :n_s]


def estimate_shifts(data, reference, max_frequency=0.25):
    """Shift of each row of ``data`` relative to the same row of ``reference``, pixels.

    ``data[j](s) ~ reference[j](s - shift[j])``.  The integer part from the
    peak of the band-limited cross-correlation, the rest from the phase
    difference: a weighted least-squares slope of ``arg(D conj(R))``
    against frequency over ``0 < k <= max_frequency`` (weights
    ``|D||R|``), with the phase taken relative to the integer estimate so
    that it does not wrap.
    """
    n_s = data.shape[-1]
    pad = 2 * n_s
    k = np.fft.rfftfreq(pad)
    band = (k > 0) & (k <= max_frequency)
    if data.ndim == 3:  # bands (n_bands, n_views, n_s) sharing one shift per view: pool their spectra
        cross = (np.fft.rfft(data, pad, axis=-1) * np.conj(np.fft.rfft(reference, pad, axis=-1))).sum(axis=0)
        return _shift_from_cross(cross, k, band, pad)
    # no mean removal: a pedestal over the window would not move with the content (k = 0 is
    # outside the band anyway); rows are zero-padded to twice their length
    cross = np.fft.rfft(data, pad, axis=1) * np.conj(np.fft.rfft(reference, pad, axis=1))
    return _shift_from_cross(cross, k, band, pad)


def _shift_from_cross(cross, k, band, pad):
    """Shift per row from cross-power spectra ``cross[view, k]`` (see :func:`estimate_shifts`)."""
    cross_band = np.where(band[None, :], cross, 0.0)
    cc = np.fft.irfft(cross_band, pad, axis=1)
    peak = np.argmax(cc, axis=1)
    lag = np.where(peak > pad // 2, peak - pad, peak).astype(float)
    ramp = np.exp(2j * np.pi * k[None, :] * lag[:, None])
    phase = np.angle(cross * ramp)  # what is left after removing the integer shift
    w = np.abs(cross) * band[None, :]
    kk = 2 * np.pi * k[None, :]
    slope = -(w * kk * phase).sum(axis=1) / np.maximum((w * kk * kk).sum(axis=1), 1e-30)
    return lag + slope


def ncc_rows(a, b):
    """Normalised cross-correlation of each row of ``a`` with the same row of ``b``
    (for bands ``(n_bands, n_views, n_s)``: of each view's bands together)."""
    if a.ndim == 3:
        a = np.moveaxis(a, 0, 1).reshape(a.shape[1], -1)
        b = np.moveaxis(b, 0, 1).reshape(b.shape[1], -1)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    return np.where(den > 0, (a * b).sum(axis=1) / np.maximum(den, 1e-30), 0.0)


def reproject(sino, angle_rad, shape, options: MatchOptions, previous=None):
    """Reconstruct ``sino`` and re-project every view; with WBP each view is re-projected from
    the reconstruction without its own contribution (no reference bias).  SIRT and TV start
    from ``previous`` (the last round's reconstruction; WBP ignores it).  Returns
    ``(reprojections, reconstruction)``; bands ``(n_bands, n_views, n_s)`` are reconstructed
    as ``(n_bands, n_z, n_x)``.

    Leaving a view out: the re-projection of a view's own filtered back-projection at its
    own angle is subtracted (computed without forming the image).
    """
    n_s = sino.shape[-1]
    if options.reconstruction == "wbp":
        filtered = ramp_filter(sino)
        scale = np.pi / (2 * len(angle_rad))
        vol = backproject(filtered, angle_rad, shape) * scale
        return project(vol, angle_rad, n_s) - scale * _own_reprojection(filtered, angle_rad, shape), vol
    tv = options.tv_weight if options.reconstruction == "tv" else 0.0
    if sino.ndim == 3:  # SIRT: each band its own slice
        prev = [None] * len(sino) if previous is None else previous
        vol = np.stack([sirt(b, angle_rad, shape, options.sirt_iterations, tv, x0=p) for b, p in zip(sino, prev)])
    else:
        vol = sirt(sino, angle_rad, shape, options.sirt_iterations, tv, x0=previous)
    return project(vol, angle_rad, n_s), vol


def match_shifts(sino, angle_rad, shape, options=MatchOptions(), shifts_px=None):
    """Estimate per-view shifts of a sinogram by projection matching.

    Parameters
    ----------
    sino : ndarray, shape (n_views, n_s) or (n_bands, n_views, n_s)
        Measured projections, each moved along ``s`` by an unknown shift
        (with bands: slices at several places along the tilt axis, moved together).
    angle_rad : ndarray, shape (n_views,)
    shape : tuple of int
        ``(n_z, n_x)`` of the reconstructed slice.
    options : MatchOptions
    shifts_px : ndarray, shape (n_views,), optional
        Starting estimate (e.g. from cross-correlation); zeros by default.

    Returns
    -------
    MatchResult
        Updates leave the object where it is: their component along
        ``(cos theta, sin theta)`` (an object translation) is removed.
    """
    sino = np.asarray(sino, dtype=float)
    angle_rad = np.asarray(angle_rad, dtype=float)
    if sino.ndim not in (2, 3) or sino.shape[-2] != len(angle_rad):
        raise ValueError(f"sino must have shape (n_views={len(angle_rad)}, n_s) or (n_bands, n_views, n_s), "
                         f"got {sino.shape}")
    shifts = np.zeros(len(angle_rad)) if shifts_px is None else np.asarray(shifts_px, dtype=float).copy()
    # gauge: moving the object by (x0, z0) moves view j by x0 cos + z0 sin; updates keep it put
    gauge = np.column_stack([np.cos(angle_rad), np.sin(angle_rad)])
    updates, ncc_first, vol = [], None, None
    accelerate = Anderson(options.anderson_memory)
    converged = False
    for it in range(options.max_iterations):
        corrected = shift_rows(sino, -shifts)
        reproj, vol = reproject(corrected, angle_rad, shape, options, vol)
        ncc = ncc_rows(corrected, reproj)
        if ncc_first is None:
            ncc_first = ncc
        delta = options.damping * estimate_shifts(corrected, reproj, options.max_frequency)
        delta -= gauge @ np.linalg.lstsq(gauge, delta, rcond=None)[0]
        raw = float(np.max(np.abs(delta)))
        step = accelerate.step(shifts, delta) if raw < ANDERSON_START_PX else delta
        shifts = shifts + step
        updates.append(float(np.max(np.abs(step))))
        log.debug("projection matching round %d: largest update %.3f px, mean NCC %.4f", it + 1, updates[-1],
                  ncc.mean())
        if updates[-1] < options.tolerance_px:
            converged = True
            break
    corrected = shift_rows(sino, -shifts)
    reproj, vol = reproject(corrected, angle_rad, shape, options, vol)
    if not converged:
        log.warning("projection matching did not converge in %d rounds: last largest update %.3f px "
                    "(tolerance %.3f px); the last estimate is kept", options.max_iterations, updates[-1],
                    options.tolerance_px)
    return MatchResult(shifts, ncc_first, ncc_rows(corrected, reproj), updates, converged, vol)

