"""Staged alignment: options, gauge handling, weak and empty views, robust fitting."""

import numpy as np
import pytest
from conftest import series_from_sim

from tiltflow import align, model, projection, simulate


def predictions(series, state):
    o = series.obs
    return projection.project(state.points_xyz_px, state.views, o.marker_index, o.view_index, o.centre_xy_px)


def test_gauge_changes_leave_predictions_unchanged(small_sim):
    series = series_from_sim(small_sim)
    state = align.align(series)
    before = predictions(series, state)
    v, p = align.output_frame(series, state.views, state.points_xyz_px)
    np.testing.assert_allclose(predictions(series, model.AlignmentState(v, p, state.robust_weight, 0)), before, atol=1e-8)
    np.testing.assert_allclose(p[:, 2].mean(), 0.0, atol=1e-9)
    # the output frame's x, y origin minimises the sum of squared view shifts: any move raises it
    best = np.sum(v[:, 3:] ** 2)
    for t in ([1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0], [0.3, -0.2, 0]):
        moved, _ = align.translate(v, p, t)
        assert np.sum(moved[:, 3:] ** 2) > best
    assert best < np.sum(state.views[:, 3:] ** 2)
    np.testing.assert_allclose(state.points_xyz_px.mean(axis=0), 0.0, atol=1e-9)  # centroid gauge


def test_options_are_obeyed():
    spec = simulate.SimulationSpec(n_views=41, n_markers=12, n_full_tracks=12, rotation_sd_deg=0.0,
                                   noise_px=0.2, tilt_axis_deg=30.0, seed=4)
    sim = simulate.simulate(spec)
    series = series_from_sim(sim, tilt_axis_deg=31.0)
    single = align.align(series, align.AlignOptions(rotation="single", tilt="fixed", scale="fixed"))
    assert np.ptp(single.views[:, 1]) < 1e-12
    assert np.rad2deg(single.views[0, 1]) == pytest.approx(30.0, abs=0.05)
    np.testing.assert_allclose(single.views[:, 2], 1.0)
    np.testing.assert_allclose(np.rad2deg(single.views[:, 0]), series.nominal_tilt_deg, atol=1e-9)
    fixed = align.align(series, align.AlignOptions(rotation="fixed", tilt="fixed"))
    np.testing.assert_allclose(np.rad2deg(fixed.views[:, 1]), 31.0)
    np.testing.assert_allclose(np.rad2deg(fixed.views[:, 0]), series.nominal_tilt_deg, atol=1e-9)
    full = align.align(series, align.AlignOptions())
    assert full.stages[-1].rms < fixed.stages[-1].rms  # a wrong fixed axis costs accuracy
    ref = full.reference_view
    assert full.views[ref, 2] == 1.0 and ref == int(np.argmin(np.abs(series.nominal_tilt_deg)))


def test_weak_and_empty_views_are_tied_to_neighbours():
    spec = simulate.SimulationSpec(n_views=31, n_markers=10, n_full_tracks=10, noise_px=0.2, seed=9)
    sim = simulate.simulate(spec)
    keep = ~((sim.view == 10) & (sim.marker >= 2)) & ~((sim.view == 20) & (sim.marker >= 1)) & (sim.view != 25)
    sub = sim.__class__(**{**sim.__dict__, "marker": sim.marker[keep], "view": sim.view[keep], "xy_px": sim.xy_px[keep]})
    series = series_from_sim(sub)
    strong, weak, empty = series.view_classes()
    assert weak.tolist().count(True) == 2 and empty[25]
    state = align.align(series)
    v = state.views
    for j in (10, 20, 25):
        # tilt deviation and scale interpolated from the neighbours
        dev = v[:, 0] - np.deg2rad(series.nominal_tilt_deg)
        assert dev[j] == pytest.approx(0.5 * (dev[j - 1] + dev[j + 1]), abs=1e-12)
        assert v[j, 2] == pytest.approx(0.5 * (v[j - 1, 2] + v[j + 1, 2]), abs=1e-12)
    # the 2-marker view solved its rotation, the 1-marker and empty views did not
    assert v[10, 1] != pytest.approx(0.5 * (v[9, 1] + v[11, 1]), abs=1e-9)
    assert v[20, 1] == pytest.approx(0.5 * (v[19, 1] + v[21, 1]), abs=1e-12)
    # the 1-marker view's shifts fit its one marker exactly
    sel = series.obs.view_index == 20
    np.testing.assert_allclose(predictions(series, state)[sel], series.obs.xy_px[sel], atol=1e-6)


def test_robust_fitting_downweights_misclicks():
    spec = simulate.SimulationSpec(n_views=61, n_markers=20, n_full_tracks=10, noise_px=0.5, seed=21)
    sim = simulate.simulate(spec)
    rng = np.random.default_rng(5)
    bad = rng.choice(len(sim.marker), int(0.015 * len(sim.marker)), replace=False)
    xy = sim.xy_px.copy()
    angle = rng.uniform(0, 2 * np.pi, len(bad))
    xy[bad] += rng.uniform(8, 25, len(bad))[:, None] * np.column_stack([np.cos(angle), np.sin(angle)])
    noisy = sim.__class__(**{**sim.__dict__, "xy_px": xy})
    series = series_from_sim(noisy)
    state = align.align(series, align.AlignOptions(robust=True))
    is_bad = np.zeros(len(xy), dtype=bool)
    is_bad[bad] = True
    assert np.mean(state.robust_weight[is_bad] < 0.1) >= 0.9
    assert np.mean(state.robust_weight[~is_bad] < 0.1) <= 0.02
    plain = align.align(series, align.AlignOptions(robust=False))
    truth = projection.project(sim.points_xyz_px, sim.views, sim.marker, sim.view, sim.centre_xy_px)

    def err(s):
        return np.sqrt(np.mean(np.sum((predictions(series, s) - truth)[~is_bad] ** 2, axis=1)))

    assert err(state) < err(plain)


def test_robust_fit_matches_a_robust_least_squares_fit_from_the_truth():
    """1.5 % mis-clicks (8-25 px): withheld-point predictions within 15 % of a robust
    least-squares fit (scipy, Cauchy loss at the noise scale) started at the truth."""
    import scipy.optimize

    from tiltflow.solver import ScipyProblem

    spec = simulate.SimulationSpec(n_views=61, n_markers=20, n_full_tracks=8, noise_px=0.5, seed=23)
    sim = simulate.simulate(spec)
    rng = np.random.default_rng(7)
    n = len(sim.marker)
    bad = rng.choice(n, int(0.015 * n), replace=False)
    xy = sim.xy_px.copy()
    angle = rng.uniform(0, 2 * np.pi, len(bad))
    xy[bad] += rng.uniform(8, 25, len(bad))[:, None] * np.column_stack([np.cos(angle), np.sin(angle)])
    held = np.zeros(n, dtype=bool)
    held[rng.choice(np.setdiff1d(np.arange(n), bad), n // 10, replace=False)] = True
    fit = sim.__class__(**{**sim.__dict__, "marker": sim.marker[~held], "view": sim.view[~held], "xy_px": xy[~held]})
    series = series_from_sim(fit)
    options = align.AlignOptions(robust=True)
    state = align.align(series, options)
    truth = model.AlignmentState(sim.views.copy(), sim.points_xyz_px.copy(), np.ones(len(fit.marker)),
                                 state.reference_view)
    layout = align.stage_layout("polish", series, truth, options)
    problem = ScipyProblem(series.obs, sim.views, sim.points_xyz_px, layout)
    res = scipy.optimize.least_squares(problem.fun, problem.x0, jac=problem.jac, loss="cauchy",
                                       f_scale=spec.noise_px, method="trf", x_scale="jac")
    ref_views, ref_points = problem.unpack(res.x)
    true_pos = projection.project(sim.points_xyz_px, sim.views, sim.marker[held], sim.view[held], sim.centre_xy_px)

    def err(views, points):
        p = projection.project(points, views, sim.marker[held], sim.view[held], sim.centre_xy_px)
        return float(np.sqrt(np.mean(np.sum((p - true_pos) ** 2, axis=1))))

    ours, ref = err(state.views, state.points_xyz_px), err(ref_views, ref_points)
    print(f"mis-clicks: withheld error {ours:.4f} px, robust least squares from the truth {ref:.4f} px "
          f"(ratio {ours / ref:.3f})")
    assert ours <= 1.15 * ref
