"""Coarse alignment from images: known shifts, stretch geometry, acceptance on simulated stacks."""

import numpy as np
import pytest

from tiltflow import coarse, imaging, simulate, tiltorder
from tiltflow.options import CoarseOptions

SIZE = 384


def blob_image(rng, shape, n=300):
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]] + 0.5
    img = np.zeros(shape)
    for x, y, s, a in zip(rng.uniform(0, shape[1], n), rng.uniform(0, shape[0], n), rng.uniform(1.5, 6, n),
                          rng.exponential(1.0, n)):
        img += a * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * s * s))
    return img


@pytest.mark.parametrize("shift", [(3.3, -7.6), (-20.25, 11.5), (0.4, 0.0)])
@pytest.mark.parametrize("shape", [(256, 256), (150, 200)])
def test_xcorr_recovers_known_subpixel_shifts(shift, shape):
    rng = np.random.default_rng(0)
    big = blob_image(rng, (shape[0] + 60, shape[1] + 60))
    import scipy.ndimage

    fixed = big[30:30 + shape[0], 30:30 + shape[1]]
    moved = scipy.ndimage.shift(big, (shift[1], shift[0]), order=3)[30:30 + shape[0], 30:30 + shape[1]]
    w = imaging.taper_window(shape, 0.1)
    filt = imaging.bandpass(shape, 0.01, 0.25, 0.05)
    d, peak = imaging.measure_shift(imaging.preprocess(fixed, w), moved, w, filt)
    np.testing.assert_allclose(d, shift, atol=0.15)
    assert peak > 0.5


def test_stretch_acts_perpendicular_to_the_axis_about_the_given_point():
    ys, xs = np.mgrid[0:200, 0:300] + 0.5
    p = np.array([200.0, 60.0])
    img = np.exp(-((xs - p[0]) ** 2 + (ys - p[1]) ** 2) / (2 * 3.0**2))
    a, f, alpha = np.array([150.0, 100.0]), 0.8, np.deg2rad(30)
    out = imaging.stretch(img, f, alpha, a)
    w = out / out.sum()
    centre = np.array([(w * xs).sum(), (w * ys).sum()])
    n = np.array([np.cos(alpha), np.sin(alpha)])
    np.testing.assert_allclose(centre, a + (np.eye(2) + (f - 1) * np.outer(n, n)) @ (p - a), atol=0.05)


@pytest.mark.parametrize("axis_deg", [84.0, -6.0])
def test_simulated_stack_shifts_and_tilt_axis(axis_deg):
    """384 x 384, 61 views +-60, random-walk drift up to +-120 px, noisy (200 counts/px),
    a 60 px thick slab with beads on both surfaces; the axis search starts 5 degrees off."""
    spec = simulate.SimulationSpec(n_views=61, n_markers=20, n_full_tracks=20, width=SIZE, height=SIZE,
                                   thickness_px=60.0, tilt_axis_deg=axis_deg, shift_max_px=120.0, seed=7)
    sim = simulate.simulate(spec)
    stack = simulate.render_stack(sim, 60.0, simulate.RenderSpec(n_blobs=1500, dose=200.0, seed=7))
    ref = 30
    res = coarse.coarse_align(stack, sim.nominal_tilt_deg, axis_deg + 5.0, ref)
    err = simulate.shift_error_px(res.shifts_px, sim.views[:, 3:] - sim.views[ref, 3:], sim.views[:, 0], axis_deg)
    true_axis = np.rad2deg(sim.views[:, 1]).mean()
    print(f"axis {axis_deg}: shift error {err:.3f} px RMS, axis estimate {res.tilt_axis_deg:.2f} "
          f"(truth {true_axis:.2f}, +- {res.axis_search['uncertainty_deg']:.2f})")
    assert np.abs(res.shifts_px).max() > 50  # the drift was real
    assert err <= 1.0
    assert abs(res.tilt_axis_deg - true_axis) <= 1.0
    assert res.weak_views == []


def test_weak_views_are_reported_and_placed_by_markers():
    spec = simulate.SimulationSpec(n_views=31, n_markers=10, n_full_tracks=10, width=256, height=256,
                                   thickness_px=40.0, tilt_axis_deg=10.0, shift_max_px=30.0, seed=3)
    sim = simulate.simulate(spec)
    stack = simulate.render_stack(sim, 40.0, simulate.RenderSpec(n_blobs=700, dose=500.0, seed=3))
    rng = np.random.default_rng(1)
    stack[25] = rng.normal(100.0, 10.0, stack[25].shape)  # a ruined view
    ref = 15
    truth = sim.views[:, 3:] - sim.views[ref, 3:]
    steps = {(n, f): truth[f] - truth[n] for n, f in tiltorder.walk_outward(sim.nominal_tilt_deg, ref, np.ones(31, bool))}
    res = coarse.coarse_align(stack, sim.nominal_tilt_deg, 10.0, ref,
                              CoarseOptions(axis_search=False), fallback_steps_px=steps)
    assert 25 in res.weak_views
    assert np.abs(res.shifts_px[25] - truth[25]).max() < 3.0  # placed by the markers, not the noise


def test_excluded_views_are_interpolated():
    spec = simulate.SimulationSpec(n_views=21, n_markers=8, n_full_tracks=8, width=192, height=192,
                                   thickness_px=30.0, tilt_axis_deg=0.0, shift_max_px=10.0, seed=4)
    sim = simulate.simulate(spec)
    stack = simulate.render_stack(sim, 30.0, simulate.RenderSpec(n_blobs=400, dose=1000.0, seed=4))
    usable = np.ones(21, dtype=bool)
    usable[[0, 12]] = False
    read = []

    class Recording:
        """The stack, recording which views are read."""

        def __len__(self):
            return len(stack)

        def __getitem__(self, v):
            read.append(int(v))
            return stack[v]

    res = coarse.coarse_align(Recording(), sim.nominal_tilt_deg, 0.0, 10, CoarseOptions(axis_search=False), usable)
    assert 12 not in read and 0 not in read and set(read) == set(range(1, 21)) - {12}  # excluded views never read
    assert np.isnan(res.peak[12])
    np.testing.assert_allclose(res.shifts_px[12], 0.5 * (res.shifts_px[11] + res.shifts_px[13]), atol=1e-9)


def test_options_are_checked():
    with pytest.raises(ValueError, match="binning must be"):
        CoarseOptions(binning=3)
    with pytest.raises(ValueError, match="taper_fraction"):
        CoarseOptions(taper_fraction=0.7)
