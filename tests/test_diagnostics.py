"""Diagnostics: leave-out error vs real prediction error, calibrated standard errors, surfaces."""

import numpy as np
import pytest
from conftest import realdata, series_from_sim

from tiltflow import align, diagnostics, model, projection, simulate, surfaces


def assert_matches_refits(series, state, options, lo, count):
    """``count`` leave-out residuals equal the residual of a polish re-fit without that observation."""
    n = len(series.obs.weight)
    for k in np.random.default_rng(1).choice(n, count, replace=False):
        w = np.ones(n)
        w[k] = 0.0
        s2 = model.Series(series.obs.with_weight(w), series.marker_ids, series.nominal_tilt_deg,
                          series.tilt_axis_deg, series.width, series.height, series.excluded)
        refit = align.run_stage("polish", s2, model.AlignmentState(state.views, state.points_xyz_px, np.ones(n),
                                                                    state.reference_view), options)
        o = series.obs
        p = projection.project(refit.points_xyz_px, refit.views, o.marker_index[k:k + 1], o.view_index[k:k + 1],
                               o.centre_xy_px)[0]
        np.testing.assert_allclose(lo.resid_xy_px[k], p - o.xy_px[k], atol=0.005)


def test_leave_out_matches_brute_force_refits(small_sim):
    series = series_from_sim(small_sim)
    options = align.AlignOptions(robust=False)  # leave-out is defined at fixed weights
    state = align.align(series, options)
    lo = diagnostics.leave_out(series, state, options)
    assert_matches_refits(series, state, options, lo, 8)
    assert lo.error > lo.imod_error  # IMOD's version (alignment held) is optimistic


def test_diagnostics_with_markers_eliminated_do_not_depend_on_the_chunking(monkeypatch):
    """More markers than views (markers eliminated, as in patch tracking): the hat blocks and standard
    errors formed a few groups at a time equal those formed at once, and the refits."""
    spec = simulate.SimulationSpec(n_views=21, n_markers=150, n_full_tracks=20, track_fraction=(0.3, 0.9),
                                   noise_px=0.5, seed=7)
    series = series_from_sim(simulate.simulate(spec))
    options = align.AlignOptions(robust=False)
    state = align.align(series, options)
    cov = diagnostics.covariance(series, state, options)
    assert cov.normal.structure.eliminate == "points"
    one, se_one = diagnostics.leave_out(series, state, options, cov), diagnostics.standard_errors(
        series, state, options, cov)
    monkeypatch.setattr(diagnostics, "CHUNK_BYTES", 3 * cov.w.shape[1] * cov.w.shape[2] * 8)  # 3 groups a chunk
    assert len(list(diagnostics._group_chunks(cov))) == 50
    many, se_many = diagnostics.leave_out(series, state, options, cov), diagnostics.standard_errors(
        series, state, options, cov)
    np.testing.assert_allclose(many.resid_xy_px, one.resid_xy_px, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(many.leverage, one.leverage, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(se_many.views, se_one.views, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(se_many.points_xyz_px, se_one.points_xyz_px, rtol=1e-10, atol=1e-14)
    assert_matches_refits(series, state, options, many, 4)


@pytest.mark.parametrize("spec", [
    simulate.SimulationSpec(n_views=61, n_markers=20, n_full_tracks=6, noise_px=0.5, seed=31),
    simulate.SimulationSpec(n_views=61, n_markers=20, n_full_tracks=6, noise_px=0.5, tilt_offset_deg=1.0,
                            tilt_jitter_deg=0.3, mag_drift=0.02, seed=32),
    simulate.SimulationSpec(n_views=61, n_markers=28, n_full_tracks=0, track_fraction=(0.45, 0.85),
                            noise_px=0.5, seed=33),
], ids=["paper_like", "tilt_errors", "no_full_track"])
def test_leave_out_error_predicts_withheld_errors(spec):
    """Within +-15 % of the actual error of predictions of withheld observations."""
    sim = simulate.simulate(spec)
    rng = np.random.default_rng(0)
    held = np.zeros(len(sim.marker), dtype=bool)
    held[rng.choice(len(held), len(held) // 10, replace=False)] = True
    fit = sim.__class__(**{**sim.__dict__, "marker": sim.marker[~held], "view": sim.view[~held],
                           "xy_px": sim.xy_px[~held]})
    series = series_from_sim(fit)
    options = align.AlignOptions()
    state = align.align(series, options)
    lo = diagnostics.leave_out(series, state, options)
    pred = projection.project(state.points_xyz_px, state.views, sim.marker[held], sim.view[held], sim.centre_xy_px)
    actual = float(np.mean(np.hypot(*(pred - sim.xy_px[held]).T)))
    print(f"leave-out error {lo.error:.4f} px, actual withheld error {actual:.4f} px, "
          f"IMOD-style {lo.imod_error:.4f} px")
    assert abs(lo.error / actual - 1) <= 0.15


def test_standard_errors_are_calibrated():
    """Over repeated simulations, (solved - true) / SE has a spread near 1 for tilt and rotation."""
    z_tilt, z_rot = [], []
    for seed in range(12):
        spec = simulate.SimulationSpec(n_views=41, n_markers=14, n_full_tracks=14, noise_px=0.5,
                                       tilt_jitter_deg=0.3, mag_drift=0.01, seed=100 + seed)
        sim = simulate.simulate(spec)
        series = series_from_sim(sim)
        options = align.AlignOptions()
        state = align.align(series, options)
        se = diagnostics.standard_errors(series, state, options)
        ref = state.reference_view
        d_tilt = (state.views[:, 0] - state.views[ref, 0]) - (sim.views[:, 0] - sim.views[ref, 0])
        free = se.views[:, 0] > 0
        z_tilt.extend((d_tilt[free] / se.views[free, 0]).tolist())
        z_rot.extend(((state.views[:, 1] - sim.views[:, 1]) / se.views[:, 1]).tolist())
    s_tilt, s_rot = np.std(z_tilt), np.std(z_rot)
    print(f"spread of error / SE: tilt {s_tilt:.3f}, rotation {s_rot:.3f} ({len(z_tilt)} and {len(z_rot)} values)")
    assert 0.8 <= s_tilt <= 1.25
    assert 0.8 <= s_rot <= 1.25


def test_two_planes_are_recovered():
    rng = np.random.default_rng(3)
    xy = rng.uniform(-300, 300, (30, 2))
    top = rng.random(30) < 0.5
    slope_x, slope_y = np.tan(np.deg2rad(2.0)), np.tan(np.deg2rad(-1.0))
    z = np.where(top, 60.0, -40.0) + slope_x * xy[:, 0] + slope_y * xy[:, 1] + rng.normal(0, 1.0, 30)
    fit = surfaces.fit_surfaces(np.column_stack([xy, z]))
    assert fit.n_surfaces == 2 and np.array_equal(fit.surface == 1, top)
    assert fit.thickness_px == pytest.approx(100.0, abs=1.5)
    # 1 px of scatter on 30 beads: slopes to about 0.15 degrees
    assert fit.tilt_offset_deg == pytest.approx(-2.0, abs=0.25)
    assert fit.x_axis_tilt_deg == pytest.approx(1.0, abs=0.25)
    assert fit.z_shift_px == pytest.approx(-10.0, abs=1.0)


def test_surfaces_of_bba_match_imod():
    """IMOD's aligna.log: 14 bottom / 11 top, thickness 80.33, X-axis tilt needed 2.07,
    incremental tilt angle change 0.34."""
    from tiltflow import outputs
    from tiltflow.model import SeriesSpec
    from tiltflow.prepare import prepare

    p = prepare(SeriesSpec("BBa", str(realdata("imod-BB/BBa.fid")), str(realdata("imod-BB/BBa.rawtlt")), -12.5,
                           width=512, height=512, prexg=str(realdata("imod-BB/BBa.prexg")), tilt_offset_deg=-0.5))
    result = outputs.build_result(p, align.align(p.series))
    s = result.summary["surfaces"]
    print(s)
    assert (s["n_bottom"], s["n_top"]) == (14, 11)
    assert s["thickness_px"] == pytest.approx(80.33, rel=0.02)
    assert s["x_axis_tilt_deg"] == pytest.approx(2.07, abs=0.2)
    assert s["tilt_offset_deg"] == pytest.approx(0.34, abs=0.2)
    assert list(result.views_table.columns)[:9] == ["view", "tilt_nominal", "tilt", "rotation", "scale", "dx", "dy",
                                                    "n_markers", "mean_residual"]
    assert (result.markers_table["surface"] == "top").sum() == 11
