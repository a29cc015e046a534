"""Projection matching: the seed's experiment (2D binary phantom, 90 projections over 180 degrees
every 2 degrees, shifts U[-20, 20] px) recovered with WBP, SIRT and TV reconstructions."""

import numpy as np
import pytest

from tiltflow import projmatch as pm

N = 128


def phantom(n):
    """A binary phantom: an ellipse with a rectangular and a round hole and a separate disc."""
    z, x = np.mgrid[:n, :n] - (n - 1) / 2
    img = np.zeros((n, n))
    img[(x / (0.30 * n)) ** 2 + (z / (0.20 * n)) ** 2 < 1] = 1
    img[(np.abs(x - 0.1 * n) < 0.06 * n) & (np.abs(z + 0.05 * n) < 0.12 * n)] = 0
    img[(x + 0.12 * n) ** 2 + (z - 0.06 * n) ** 2 < (0.05 * n) ** 2] = 0
    img[(x - 0.25 * n) ** 2 + (z + 0.22 * n) ** 2 < (0.04 * n) ** 2] = 1
    return img


@pytest.fixture(scope="module")
def experiment():
    """Projections made at twice the resolution and binned (not the matcher's own projector),
    then shifted by known amounts."""
    angles = np.deg2rad(np.arange(0, 180, 2.0))
    sino = pm.project(phantom(2 * N), angles, 2 * N).reshape(len(angles), N, 2).sum(axis=2) / 2
    true = np.random.default_rng(7).uniform(-20, 20, len(angles))
    return angles, pm.shift_rows(sino, true), true


def gauge_free_rms(est, true, angles):
    """RMS error after removing a common offset and an object translation (x0 cos + z0 sin)."""
    r = est - true
    basis = np.column_stack([np.ones_like(angles), np.cos(angles), np.sin(angles)])
    coef, *_ = np.linalg.lstsq(basis, r, rcond=None)
    return float(np.sqrt(np.mean((r - basis @ coef) ** 2)))


def check(experiment, reconstruction, limit_px):
    angles, data, true = experiment
    res = pm.match_shifts(data, angles, (N, N), pm.MatchOptions(reconstruction=reconstruction))
    err = gauge_free_rms(res.shifts_px, true, angles)
    assert res.converged and res.updates_px[-1] < 0.05
    assert err < limit_px, f"{reconstruction}: {err:.3f} px RMS after {len(res.updates_px)} rounds"
    assert res.ncc_after.mean() > 0.99 > 0.8 > res.ncc_before.mean()
    return err


def test_shifts_of_the_seed_experiment_are_recovered_with_wbp(experiment):
    # measured 0.042 px RMS in 15 rounds (each view left out of its own reference)
    check(experiment, "wbp", 0.1)


@pytest.mark.slow
@pytest.mark.parametrize("reconstruction", ["sirt", "tv"])
def test_shifts_of_the_seed_experiment_are_recovered_with_sirt_and_tv(experiment, reconstruction):
    # measured 0.110 px (SIRT, 13 rounds) and 0.100 px (TV, 10 rounds) RMS; the issue asks for 0.25
    check(experiment, reconstruction, 0.25)


def test_the_estimator_is_unbiased_at_the_truth_and_finds_known_shifts(experiment):
    angles, data, true = experiment
    clean = pm.shift_rows(data, -true)
    reproj, _ = pm.reproject(clean, angles, (N, N), pm.MatchOptions())
    assert np.abs(pm.estimate_shifts(clean, reproj)).max() < 0.05
    known = np.linspace(-7.3, 6.1, len(angles))
    est = pm.estimate_shifts(pm.shift_rows(clean, known), clean, 0.25)
    assert np.abs(est - known).max() < 0.01


def test_bad_options_and_shapes_are_refused():
    with pytest.raises(ValueError, match="reconstruction must be one of"):
        pm.MatchOptions(reconstruction="art")
    with pytest.raises(ValueError, match=r"damping must be in \(0, 1\], got 1.5"):
        pm.MatchOptions(damping=1.5)
    with pytest.raises(ValueError, match=r"sino must have shape \(n_views=3, n_s\) or \(n_bands, n_views, n_s\), got \(4, 10\)"):
        pm.match_shifts(np.zeros((4, 10)), np.zeros(3), (10, 10))


def test_a_run_that_does_not_converge_says_so_and_keeps_its_estimate(experiment, caplog):
    angles, data, true = experiment
    res = pm.match_shifts(data, angles, (N, N), pm.MatchOptions(max_iterations=2))
    assert not res.converged and len(res.updates_px) == 2
    assert "did not converge in 2 rounds" in caplog.text
    assert gauge_free_rms(res.shifts_px, true, angles) < gauge_free_rms(np.zeros_like(true), true, angles)


def test_bands_sharing_one_shift_per_view_are_matched_together(experiment):
    """Two slices (the phantom and its transpose) moved by the same shifts: one estimate per view."""
    angles, _, true = experiment
    second = pm.project(phantom(2 * N).T, angles, 2 * N).reshape(len(angles), N, 2).sum(axis=2) / 2
    first = pm.shift_rows(pm.project(phantom(2 * N), angles, 2 * N).reshape(len(angles), N, 2).sum(axis=2) / 2,
                          true)
    bands = np.stack([first, pm.shift_rows(second, true)])
    res = pm.match_shifts(bands, angles, (N, N), pm.MatchOptions())
    assert res.converged and res.shifts_px.shape == true.shape
    assert gauge_free_rms(res.shifts_px, true, angles) < 0.1
