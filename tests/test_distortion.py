"""Distortion (IMOD's X-stretch and skew) and grouped variables (issue 12).

Real data: with ``align.distortion: grouped`` the mean residual is at or
below tiltalign's on all four of IMOD's data sets, and withheld points are
predicted at least as well as without distortion.  Simulated data: known
stretch and skew are recovered within their standard errors.  The files:
``.xf`` + ``.zfac`` + ``.tlt`` alone give back the residuals (IMOD's
``tilt`` would reproduce the alignment), and the back-projection uses the
same model.
"""

import dataclasses
import json
import logging

import numpy as np
import pytest
from conftest import marker_row, realdata, run_steps, series_from_sim
from test_accuracy import CASES as SIMULATIONS
from test_accuracy import withhold
from test_realdata import CASES

from tiltflow import align, io, projection, simulate
from tiltflow.diagnostics import standard_errors
from tiltflow.model import SeriesSpec
from tiltflow.options import AlignOptions, ReconOptions
from tiltflow.prepare import prepare
from tiltflow.reconstruct import grid_matrix, view_matrices
from tiltflow.selection import choose_distortion, paired_z


def real_series(name):
    markers, tilts, rot, w, h, off, imod, _ = CASES[name]
    spec = SeriesSpec(name, str(realdata(markers)), str(realdata(tilts)), rot, width=w, height=h, tilt_offset_deg=off)
    return prepare(spec).series, imod


@pytest.mark.parametrize("name", ["BBa", "BBb", "midzone2a", "midzone2b"])
def test_grouped_distortion_fits_imods_data_at_least_as_well_as_tiltalign(name):
    series, imod = real_series(name)
    state = align.align(series, AlignOptions(distortion="grouped"))
    last = state.stages[-1]
    print(f"{name}: mean residual {last.mean_residual:.4f} px with grouped distortion (IMOD {imod}), "
          f"measured/unknowns {last.measured_to_unknowns:.2f}")
    assert last.distortion == "grouped"
    assert last.mean_residual <= imod
    assert last.mean_residual >= 0.85 * imod  # far lower would mean points were lost


@pytest.mark.parametrize("name", ["BBa", "midzone2a"])
def test_withheld_real_points_are_predicted_as_well_with_distortion(name):
    """10 % of the observations withheld (three draws); each fit predicts them from the rest."""
    series, _ = real_series(name)
    obs = series.obs
    rng = np.random.default_rng(1)
    errors = {"off": [], "grouped": []}
    for _ in range(3):
        held = rng.random(len(obs.view_index)) < 0.1
        fit = dataclasses.replace(series, obs=obs.subset(~held))
        for mode in errors:
            st = align.align(fit, AlignOptions(distortion=mode))
            pred = projection.project(st.points_xyz_px, st.views, obs.marker_index[held], obs.view_index[held],
                                      series.centre_xy_px)
            errors[mode].append(np.mean(np.hypot(*(pred - obs.xy_px[held]).T)))
    off, grouped = np.mean(errors["off"]), np.mean(errors["grouped"])
    print(f"{name}: withheld mean error {off:.4f} px without distortion, {grouped:.4f} px with (ratio {grouped / off:.4f})")
    assert grouped <= off


@pytest.mark.parametrize("case", sorted(SIMULATIONS))
def test_grouped_distortion_costs_at_most_2_percent_on_series_without_distortion(case, caplog):
    """The acceptance simulations (no distortion), 10 % withheld: asking for grouped distortion predicts the
    withheld points within 2 % of the model without it (the leave-out test drops distortion that only
    fits noise; the same fit kept whatever the test says costs 3-4 %)."""
    spec = SIMULATIONS[case]
    sim = simulate.simulate(spec)
    held = withhold(sim)
    fit_sim = dataclasses.replace(sim, marker=sim.marker[~held], view=sim.view[~held], xy_px=sim.xy_px[~held])
    series = series_from_sim(fit_sim, tilt_axis_deg=spec.tilt_axis_deg + 1.0)
    true_pos = projection.project(sim.points_xyz_px, sim.views, sim.marker[held], sim.view[held], sim.centre_xy_px)

    def err(state):
        p = projection.project(state.points_xyz_px, state.views, sim.marker[held], sim.view[held], sim.centre_xy_px)
        return float(np.sqrt(np.mean(np.sum((p - true_pos) ** 2, axis=1))))

    off = align.align(series, AlignOptions())
    with caplog.at_level(logging.WARNING, logger="tiltflow.selection"):
        grouped = align.align(series, AlignOptions(distortion="grouped"))
    always = align.align(series, AlignOptions(distortion="grouped", distortion_test=False))
    test = grouped.stages[-1].distortion_test
    print(f"{case}: withheld error {err(off):.4f} px off, {err(grouped):.4f} grouped (tested: kept {test['kept']}, "
          f"z {test['z']:+.2f}), {err(always):.4f} grouped kept always ({err(always) / err(off) - 1:+.1%})")
    assert err(grouped) <= 1.02 * err(off)
    assert test["mode"] == "grouped" and test["n_compared"] > 0.8 * len(series.obs.view_index)
    assert always.stages[-1].distortion == "grouped" and always.stages[-1].distortion_test is None
    if not test["kept"]:
        # the solution without distortion is exactly the run with distortion off, and the log says why
        assert grouped.stages[-1].distortion == "off"
        np.testing.assert_allclose(grouped.views, off.views, atol=1e-12)
        assert "distortion (grouped) NOT kept" in caplog.text and "align.distortion_significance" in caplog.text


def test_paired_z_is_the_mean_difference_over_its_standard_error():
    rng = np.random.default_rng(0)
    a = rng.normal(1.0, 0.1, 400)
    b = a + 0.02 + rng.normal(0.0, 0.05, 400)  # b is worse by 0.02 with 0.05 spread: z about -8
    d = a - b
    assert paired_z(a, b) == pytest.approx(d.mean() / d.std(ddof=1) * 20.0)
    assert paired_z(a, b) < -5 and paired_z(b, a) == pytest.approx(-paired_z(a, b))
    assert np.isnan(paired_z(a[:1], b[:1])) and np.isnan(paired_z(a, a))


def test_choose_distortion_wants_a_distortion_solution_and_an_earlier_start():
    series = series_from_sim(simulate.simulate(simulate.SimulationSpec(n_views=31, n_markers=12, seed=2)))
    options = AlignOptions(distortion="grouped", robust=False)
    state = align.initial_state(series, options)
    states = {}
    for name in ("initial", "main", "tilt"):
        state = states[name] = align.run_stage(name, series, state, options)
    with pytest.raises(ValueError, match="expected a state before stage tilt, got one after stage tilt"):
        choose_distortion(series, states["tilt"], states["tilt"], options)
    with pytest.raises(ValueError, match="without distortion"):
        choose_distortion(series, states["main"], states["initial"], options)
    with pytest.raises(ValueError, match="distortion_significance must be a finite number >= 0"):
        AlignOptions(distortion_significance=-1.0)


def test_the_workflow_reports_distortion_it_did_not_keep(tmp_path):
    """A series without distortion run with align.distortion: grouped: the files are the solution without
    distortion (.zfac all 0) and summary.json says what was tested and why it was not kept."""
    spec = simulate.SimulationSpec(n_views=41, n_markers=20, n_full_tracks=10, width=1024, height=1024, noise_px=0.5,
                                   seed=31)
    row = marker_row(tmp_path, simulate.simulate(spec))
    config = {"align": {"distortion": "grouped"}, "coarse": {}, "robust": True}
    out = run_steps(tmp_path, row, "grouped", config)
    plain = run_steps(tmp_path, row, "off", {"align": {}, "coarse": {}, "robust": True})
    summary = json.loads(out["summary"].read_text())
    test = summary["distortion"]["test"]
    print(f"z {test['z']:+.2f}, leave-out {test['leave_out_with']:.4f} with / {test['leave_out_without']:.4f} px "
          f"without; kept {test['kept']}")
    assert summary["distortion"]["requested"] == "grouped" and test["significance"] == 2.0
    assert test["kept"] is False and test["z"] > -2.0
    assert summary["distortion"]["mode"] == "off" and "not kept" in summary["distortion"]["note"]
    assert "without" not in summary["distortion"]
    np.testing.assert_array_equal(io.read_zfac(out["zfac"], 41), 0.0)
    np.testing.assert_allclose(io.read_xf(out["xf"]), io.read_xf(plain["xf"]), atol=1e-9)
    assert summary["leave_out_error"] == pytest.approx(test["leave_out_without"], rel=1e-9)
    stages = summary["stages"]
    assert stages[-1]["distortion_test"] == test and all(st["distortion_test"] is None for st in stages[:-1])


def distorted_sim():
    spec = simulate.SimulationSpec(n_views=61, n_markers=40, n_full_tracks=40, noise_px=0.3, thickness_px=150,
                                   stretch=0.01, skew_deg=0.5, mag_drift=0.01, seed=7)
    return simulate.simulate(spec)


def test_known_stretch_and_skew_are_recovered_within_their_standard_errors():
    sim = distorted_sim()
    series = series_from_sim(sim)
    options = AlignOptions(distortion="grouped", tilt="grouped", robust=False)  # IMOD's combination
    state = align.align(series, options)
    se = standard_errors(series, state, options)
    true = projection.full_views(sim.views)
    solved = np.ones(series.n_views, dtype=bool)
    solved[state.reference_view] = False  # held at 0 (gauge); the simulation has 0 there
    for col, name in ((projection.DMAG, "stretch"), (projection.SKEW, "skew")):
        err = state.views[solved, col] - true[solved, col]
        z = err / se.views[solved, col]
        print(f"{name}: max |error| {np.abs(err).max():.2e}, median se {np.median(se.views[solved, col]):.2e}, "
              f"RMS z {np.sqrt(np.mean(z ** 2)):.2f}, true range {np.ptp(true[:, col]):.2e}")
        assert np.all(se.views[solved, col] > 0)
        assert np.all(np.abs(z) <= 3.0)
        assert np.mean(np.abs(z) <= 2.0) >= 0.9
    # the distortion is resolved, not lost in the noise: far more than its errors
    assert np.ptp(true[:, projection.DMAG]) > 5 * np.median(se.views[solved, projection.DMAG])
    # without distortion the same series fits worse
    plain = align.align(series, dataclasses.replace(options, distortion="off"))
    assert state.stages[-1].mean_residual < 0.9 * plain.stages[-1].mean_residual


def test_too_few_markers_fall_back_without_distortion_and_say_so(caplog):
    spec = simulate.SimulationSpec(n_views=41, n_markers=5, n_full_tracks=5, noise_px=0.3, stretch=0.01, seed=3)
    series = series_from_sim(simulate.simulate(spec))
    with caplog.at_level(logging.WARNING, logger="tiltflow.align"):
        state = align.align(series, AlignOptions(distortion="per_view", distortion_min_ratio=4.0))
    last = state.stages[-1]
    assert last.distortion == "off" and last.measured_to_unknowns < 4.0 / 0.8
    assert "distortion (per_view) NOT solved" in caplog.text and "ratio of" in caplog.text
    assert np.all(state.views[:, projection.DMAG] == 0) and np.all(state.views[:, projection.SKEW] == 0)


def test_grouped_parameters_follow_their_group_centres():
    """Grouped rotation and scale: every view's value is the interpolation between its two centres."""
    sim = simulate.simulate(simulate.SimulationSpec(n_views=41, n_markers=20, mag_drift=0.02, seed=5))
    series = series_from_sim(sim)
    options = AlignOptions(rotation="grouped", scale="grouped", tilt="grouped", robust=False)
    state = align.align(series, options)
    groups = align.stage_groups("polish", series, state, options)
    assert set(groups) == {projection.ROT, projection.SCALE, projection.TILT}
    nominal = np.deg2rad(series.nominal_tilt_deg)
    for col, (weights, free, centres) in groups.items():
        offset = nominal if col == projection.TILT else 0.0
        values = state.views[:, col] - offset
        np.testing.assert_allclose(values, weights @ values[centres], atol=1e-9)
        assert len(centres) < series.n_views / 3
    assert state.views[state.reference_view, projection.SCALE] == 1.0
    per_view = align.align(series, AlignOptions(robust=False))
    assert state.stages[-1].n_params < per_view.stages[-1].n_params - 60


def test_view_matrices_with_zfac_are_the_projection():
    """A voxel lands in the raw view where the distorted projection model puts it (one interpolation)."""
    rng = np.random.default_rng(0)
    v = np.zeros((3, 7))
    v[:, 0] = np.deg2rad([-50.0, 5.0, 40.0])
    v[:, 1] = np.deg2rad(-12.0)
    v[:, 2] = [1.01, 1.0, 0.99]
    v[:, 3:5] = rng.normal(0, 5, (3, 2))
    v[:, 5] = [0.02, 0.0, -0.015]
    v[:, 6] = np.deg2rad([0.4, 0.0, -0.3])
    shape = (96, 128)
    options = ReconOptions(thickness_px=40, binning=1)
    grid = grid_matrix(shape, options)
    mats = view_matrices(projection.views_to_xf(v), np.rad2deg(v[:, 0]), shape, grid, 1, projection.z_factors(v))
    idx = np.array([[3.0, 7.0, 5.0, 1.0], [100.0, 50.0, 30.0, 1.0]])
    xyz = idx @ grid.T
    for j in range(3):
        raw = projection.project(xyz, v, np.arange(2), np.full(2, j), (shape[1] / 2, shape[0] / 2))
        np.testing.assert_allclose(idx @ mats[j].T, raw - 0.5, atol=1e-9)
