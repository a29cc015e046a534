"""The L-M bundle solver: exact recovery, Schur choices, compiled vs numpy, input checks."""

import dataclasses

import numpy as np
import pytest
from conftest import series_from_sim

from tiltflow import align, projection, simulate
from tiltflow.solver import Layout, LMOptions, Observations, solve_bundle
from tiltflow.solver._bundle import BundleProblem


def noise_free(seed=5, **kw):
    spec = simulate.SimulationSpec(n_views=31, n_markers=10, n_full_tracks=4, noise_px=0.0, seed=seed, **kw)
    return simulate.simulate(spec)


def test_recovers_noise_free_truth_exactly():
    """From a perturbed start, all-free polish returns the truth up to the gauge (predictions exact)."""
    sim = noise_free(mag_drift=0.02, tilt_jitter_deg=0.3)
    series = series_from_sim(sim)
    options = align.AlignOptions()
    state = align.align(series, options)
    assert state.stages[-1].rms < 1e-6
    pred = projection.project(state.points_xyz_px, state.views, sim.marker, sim.view, sim.centre_xy_px)
    np.testing.assert_allclose(pred, sim.xy_px, atol=1e-5)
    # rotations are gauge-free: they must match the truth
    np.testing.assert_allclose(state.views[:, 1], sim.views[:, 1], atol=1e-6)


@pytest.mark.parametrize("rotation,tilt,distortion", [("per_view", "per_view", "off"), ("single", "fixed", "off"),
                                                      ("fixed", "fixed", "off"), ("grouped", "grouped", "grouped"),
                                                      ("per_view", "per_view", "per_view")])
def test_schur_choices_and_numpy_path_agree(small_sim, rotation, tilt, distortion, monkeypatch):
    """Eliminating points or views, compiled or numpy (on the view x marker grid or scattered per
    observation): the same normal equations and the same solution (grouped parameters: two weighted
    slots per view parameter; distortion: all seven view columns)."""
    from tiltflow.solver import _schur

    series = series_from_sim(small_sim)
    options = align.AlignOptions(rotation=rotation, tilt=tilt, distortion=distortion, scale="grouped"
                                 if rotation == "grouped" else "per_view")
    state = align.initial_state(series, options)
    if distortion != "off":  # a start with distortion, so that its derivatives are not those at zero
        rng = np.random.default_rng(1)
        views = projection.full_views(state.views).copy()
        views[:, projection.DMAG] = rng.uniform(-0.01, 0.01, len(views))
        views[:, projection.SKEW] = rng.uniform(-0.005, 0.005, len(views))
        state = dataclasses.replace(state, views=views)
    obs = series.obs.with_weight(np.random.default_rng(0).uniform(0.3, 1.0, len(series.obs.weight)))
    points = state.points_xyz_px.copy()
    points[:, 2] = np.random.default_rng(2).uniform(-40, 40, len(points))  # at z = 0 the zero-tilt view's tilt is free
    x = (state.views, points)
    for stage in ("polish", "tilt"):  # tilt: the markers held (no point columns at all)
        layout = align.stage_layout(stage, series, state, options)
        ref = None
        sols = []
        for eliminate in ("points", "views"):
            for compiled, grid in ((True, False), (False, True), (False, False)):
                monkeypatch.setattr(_schur, "GRID_PAIRS_PER_OBSERVATION", 4 if grid else 0)
                problem = BundleProblem(obs, layout, eliminate, compiled)
                if not compiled and eliminate == "views" and rotation in ("per_view", "fixed") and tilt != "grouped":
                    # kept unknowns are marker coordinates only: the grid applies when asked for
                    assert (problem.structure.grid_plan(series.n_views, series.obs.n_markers) is not None) == grid
                cost, ne = problem.linearize(x)
                g = ne.gradient()
                step = ne.solve(1e-3, *ne.diagonal())
                if ref is None:
                    ref = (cost, g, step)
                np.testing.assert_allclose(cost, ref[0], rtol=1e-12)
                np.testing.assert_allclose(g, ref[1], rtol=1e-9, atol=1e-9 * np.abs(ref[1]).max())
                np.testing.assert_allclose(step, ref[2], rtol=1e-6, atol=1e-9 * np.abs(ref[2]).max())
                sol = solve_bundle(obs, *x, layout, eliminate=eliminate, compiled=compiled)
                assert sol.eliminated == eliminate
                sols.append(sol)
        for sol in sols[1:]:
            assert sol.report.cost == pytest.approx(sols[0].report.cost, rel=1e-9)


def test_auto_picks_the_smaller_dense_system(small_sim):
    series = series_from_sim(small_sim)
    options = align.AlignOptions()
    state = align.initial_state(series, options)
    layout = align.stage_layout("polish", series, state, options)
    st = BundleProblem(series.obs, layout).structure
    # 14 markers x 3 = 42 kept point parameters < ~200 view parameters
    assert st.eliminate == "views" and st.n_kept == 3 * 14 - 3
    layout = align.stage_layout("tilt", series, state, options)  # points held: only views
    assert BundleProblem(series.obs, layout).structure.n_kept == 0


def test_termination_reports_like_scipy(small_sim):
    series = series_from_sim(small_sim)
    options = align.AlignOptions(robust=False)
    state = align.align(series, options)
    layout = align.stage_layout("polish", series, state, options)
    sol = solve_bundle(series.obs, state.views, state.points_xyz_px, layout)
    assert sol.report.success and sol.report.status in (1, 2, 3, 4)
    assert sol.report.iterations <= 2
    perturbed = state.views + [0.0, 0.01, 0.0, 5.0, 0.0, 0.0, 0.0]
    short = solve_bundle(series.obs, perturbed, state.points_xyz_px, layout, LMOptions(max_iterations=1))
    assert short.report.status == 0 and "maximum number of iterations" in short.report.message


def test_input_checks():
    obs_ok = dict(marker_index=np.array([0, 1]), view_index=np.array([0, 0]), xy_px=np.zeros((2, 2)),
                  weight=np.ones(2), n_markers=2, n_views=1, centre_xy_px=(0, 0))
    Observations(**obs_ok)
    with pytest.raises(ValueError, match="xy_px must have shape"):
        Observations(**{**obs_ok, "xy_px": np.zeros((3, 2))})
    with pytest.raises(ValueError, match="marker_index must lie in"):
        Observations(**{**obs_ok, "marker_index": np.array([0, 5])})
    with pytest.raises(ValueError, match="NaN"):
        Observations(**{**obs_ok, "xy_px": np.array([[0, np.nan], [0, 0]])})
    obs = Observations(**obs_ok)
    for bad, message in ((np.array([1.0, -1.0]), "finite and >= 0"), (np.array([1.0, np.nan]), "finite and >= 0"),
                         (np.ones(3), "same length")):
        with pytest.raises(ValueError, match=message):
            Observations(**{**obs_ok, "weight": bad})
        with pytest.raises(ValueError, match=message):
            obs.with_weight(bad)
    reweighted = obs.with_weight([0.5, 2.0])
    np.testing.assert_array_equal(reweighted.weight, [0.5, 2.0])
    assert reweighted.xy_px is obs.xy_px and reweighted.n_markers == 2 and obs.weight[1] == 1.0
    layout = Layout.from_masks(np.ones((1, 5), bool), np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="views must have shape"):
        solve_bundle(obs, np.zeros((2, 5)), np.zeros((2, 3)), layout)
    with pytest.raises(ValueError, match="max_iterations"):
        LMOptions(max_iterations=0)
    with pytest.raises(ValueError, match="rotation must be one of"):
        align.AlignOptions(rotation="sometimes")
    with pytest.raises(ValueError, match="tilt 'offset' cannot be solved from markers"):
        align.AlignOptions(tilt="offset")


def test_numba_is_used_only_where_it_pays():
    from tiltflow.solver._bundle import COMPILED_MIN_OBSERVATIONS, use_compiled

    assert not use_compiled("auto", COMPILED_MIN_OBSERVATIONS - 1)
    assert use_compiled("auto", COMPILED_MIN_OBSERVATIONS)
    assert use_compiled(True, 10) and not use_compiled(False, 10**6)
    with pytest.raises(ValueError, match="compiled must be True, False or 'auto', got 'yes'"):
        use_compiled("yes", 10)


def misclicked_series(seed=21):
    """61 views x 20 markers, 1.5 % of the points mis-clicked by 8-25 px."""
    sim = simulate.simulate(simulate.SimulationSpec(n_views=61, n_markers=20, n_full_tracks=10, noise_px=0.5,
                                                    seed=seed))
    rng = np.random.default_rng(5)
    bad = rng.choice(len(sim.marker), int(0.015 * len(sim.marker)), replace=False)
    xy = sim.xy_px.copy()
    angle = rng.uniform(0, 2 * np.pi, len(bad))
    xy[bad] += rng.uniform(8, 25, len(bad))[:, None] * np.column_stack([np.cos(angle), np.sin(angle)])
    return series_from_sim(sim.__class__(**{**sim.__dict__, "xy_px": xy})), bad


@pytest.mark.parametrize("compiled", [True, False])
def test_reweighting_inside_the_loop_reaches_the_nested_fixed_point(compiled, monkeypatch):
    """Robust weights renewed inside one L-M run end where re-solving to convergence after every
    re-weighting ends (the scheme it replaces): same weights, same predictions."""
    from tiltflow.solver import _bundle

    monkeypatch.setattr(_bundle, "COMPILED_MIN_OBSERVATIONS", 0 if compiled else 10**9)
    series, bad = misclicked_series()
    options = align.AlignOptions()
    state = align.initial_state(series, options)
    for name in ("initial", "main", "tilt"):
        state = align.run_stage(name, series, state, options)
    ours = align.run_stage("polish", series, state, options)
    assert ours.stages[-1].robust_rounds >= 1
    # the nested scheme: solve to convergence, re-weight, repeat until the weights settle
    rank = np.empty(series.n_views, dtype=int)
    rank[np.argsort(series.nominal_tilt_deg, kind="stable")] = np.arange(series.n_views)
    factor = state.robust_weight
    views, points = align.tie_weak_views(series, state.views), state.points_xyz_px
    layout = align.stage_layout("polish", series, state, options, series.obs.weight * factor)
    for _ in range(align.MAX_ROBUST_ROUNDS):
        sol = solve_bundle(series.obs.with_weight(series.obs.weight * factor), views, points, layout)
        views, points = sol.views, sol.points_xyz_px
        pred = projection.project(points, views, series.obs.marker_index, series.obs.view_index, series.centre_xy_px)
        new = align.robust_weights(pred - series.obs.xy_px, options.robust_k, series.obs.view_index, rank)
        change, factor = np.max(np.abs(new - factor)), new
        if change < align.ROBUST_SETTLED:
            break
    np.testing.assert_allclose(ours.robust_weight, factor, atol=0.01)
    assert np.all(ours.robust_weight[bad] < 0.1)
    o = series.obs
    ref_pred = projection.project(points, views, o.marker_index, o.view_index, series.centre_xy_px)
    our_pred = projection.project(ours.points_xyz_px, ours.views, o.marker_index, o.view_index, series.centre_xy_px)
    assert np.max(np.abs(our_pred - ref_pred)[ours.robust_weight > 0]) < 0.01


def test_blas_threads_limits_and_checks():
    from threadpoolctl import threadpool_info

    from tiltflow.solver import blas_threads

    with blas_threads(1):
        assert all(info["num_threads"] == 1 for info in threadpool_info() if info["user_api"] == "blas")
    with pytest.raises(ValueError, match="threads must be an integer >= 1, got 0"), blas_threads(0):
        pass


def test_scipy_reference_sparse_jacobian_is_the_dense_one(small_sim):
    from tiltflow.solver import ScipyProblem

    series = series_from_sim(small_sim)
    options = align.AlignOptions(rotation="grouped", tilt="grouped", distortion="grouped")
    state = align.initial_state(series, options)
    layout = align.stage_layout("polish", series, state, options)
    problem = ScipyProblem(series.obs, state.views, state.points_xyz_px, layout)
    x = np.random.default_rng(1).normal(0, 1e-3, layout.n_params)
    np.testing.assert_allclose(problem.jac_sparse(x).toarray(), problem.jac(x), rtol=1e-12, atol=1e-12)
    assert problem.jac_sparse(x).nnz <= problem.sparsity().nnz


def test_kept_system_solves_agree_with_and_without_scipy(monkeypatch):
    """The kept system is solved by scipy's Cholesky when scipy.linalg is loaded and by numpy otherwise:
    same solution, and both refuse a matrix that is not positive definite."""
    import sys

    import scipy.linalg  # noqa: F401

    from tiltflow.solver import _schur

    rng = np.random.default_rng(3)
    a = rng.normal(size=(300, 300))
    s, rhs = a @ a.T + 300 * np.eye(300), rng.normal(size=300)
    with_scipy = _schur._spd_solve(s.copy(), rhs)
    bad = s.copy()
    bad[0, 0] = -1.0
    assert _schur._spd_solve(bad.copy(), rhs) is None
    monkeypatch.delitem(sys.modules, "scipy.linalg")
    np.testing.assert_allclose(_schur._spd_solve(s.copy(), rhs), with_scipy, rtol=1e-10)
    np.testing.assert_allclose(s @ with_scipy, rhs, atol=1e-9)
    assert _schur._spd_solve(bad.copy(), rhs) is None


def _reduced_system(rng, n_groups, b, m, ridge):
    """Random damped eliminated blocks (as inverse Cholesky factors) and coupling of a reduced system."""
    a = rng.normal(size=(n_groups, b, b))
    hee = a @ a.transpose(0, 2, 1) + b * np.eye(b)
    linv = np.linalg.inv(np.linalg.cholesky(hee))
    hek = rng.normal(size=(n_groups, b, m))
    u = (linv @ hek).reshape(-1, m)
    hkk = u.T @ u + ridge
    return linv, hek, hkk


@pytest.mark.parametrize("condition, double_fallback", [(1e2, False), (1e11, True)])
def test_mixed_precision_reduced_solve_matches_double_precision(condition, double_fallback, monkeypatch):
    """The single-precision reduced system with one double-precision refinement gives the double-precision
    solution (1e-9) however the system is conditioned: refined when single precision suffices, solved again
    in double precision when it does not (condition 1e11 is beyond single precision)."""
    import scipy.linalg

    from tiltflow.solver import _schur

    rng = np.random.default_rng(11)
    m = 240
    q, _ = np.linalg.qr(rng.normal(size=(m, m)))
    ridge = (q * np.geomspace(1.0, 1.0 / condition, m)) @ q.T  # S = ridge + damping: its conditioning
    linv, hek, hkk = _reduced_system(rng, 150, 3, m, ridge)
    damping = np.full(m, 1e-14)
    rhs = rng.normal(size=m)
    s = ridge + np.diag(damping)
    expected = np.linalg.solve(s, rhs)
    fallbacks = []
    monkeypatch.setattr(_schur, "_spd_solve", lambda *a: fallbacks.append(1) or np.linalg.solve(*a))
    got = _schur._mixed_reduced_solve(scipy.linalg, linv, hek, hkk, damping, rhs)
    assert bool(fallbacks) == double_fallback
    assert np.linalg.norm(s @ got - rhs) <= 1e-9 * np.linalg.norm(rhs) * condition
    np.testing.assert_allclose(got, expected, rtol=1e-9 * condition, atol=1e-9 * condition * np.abs(expected).max())


def test_mixed_precision_reduced_solve_refuses_an_indefinite_system():
    import scipy.linalg

    from tiltflow.solver import _schur

    rng = np.random.default_rng(12)
    linv, hek, hkk = _reduced_system(rng, 100, 3, 220, np.zeros((220, 220)))
    hkk[5, 5] -= 10.0  # S = hkk - U^T U has a negative diagonal entry
    assert _schur._mixed_reduced_solve(scipy.linalg, linv, hek, hkk, np.zeros(220), rng.normal(size=220)) is None


def test_bundle_steps_in_mixed_precision_are_the_double_precision_steps(monkeypatch):
    """On a bundle problem whose reduced system is large enough for single precision (61 views x 90 markers:
    270 kept coordinates, 244 kept view parameters), the steps and the solution equal those of the
    double-precision solve (scipy.linalg not loaded)."""
    import sys

    import scipy.linalg  # noqa: F401

    from tiltflow.solver import _schur

    spec = simulate.SimulationSpec(n_views=61, n_markers=90, n_full_tracks=30, noise_px=0.4, seed=8)
    series = series_from_sim(simulate.simulate(spec))
    options = align.AlignOptions()
    state = align.initial_state(series, options)
    layout = align.stage_layout("polish", series, state, options)
    x = (state.views, state.points_xyz_px)
    refined = []
    monkeypatch.setattr(_schur, "_mixed_reduced_solve",
                        lambda *a, f=_schur._mixed_reduced_solve: refined.append(1) or f(*a))
    results = {}
    for mixed in (True, False):
        if not mixed:
            monkeypatch.delitem(sys.modules, "scipy.linalg")
        for eliminate in ("points", "views"):
            problem = BundleProblem(series.obs, layout, eliminate, compiled=False)
            assert problem.structure.n_kept >= _schur.MIXED_MIN
            _, ne = problem.linearize(x)
            step = ne.solve(1e-4, *ne.diagonal())
            sol = solve_bundle(series.obs, *x, layout, eliminate=eliminate, compiled=False)
            results[mixed, eliminate] = step, sol
    assert refined
    for eliminate in ("points", "views"):
        (step_m, sol_m), (step_d, sol_d) = results[True, eliminate], results[False, eliminate]
        np.testing.assert_allclose(step_m, step_d, rtol=1e-7, atol=1e-9 * np.abs(step_d).max())
        assert sol_m.report.cost == pytest.approx(sol_d.report.cost, rel=1e-9)
        np.testing.assert_allclose(sol_m.points_xyz_px, sol_d.points_xyz_px, atol=1e-6)
        np.testing.assert_allclose(sol_m.views, sol_d.views, atol=1e-9)


@pytest.mark.parametrize("compiled", [True, False])
def test_banded_reduced_system_gives_the_double_precision_steps(compiled, monkeypatch):
    """Marker blocks are numbered by the first view they touch: with tracks over part of the series (patch
    tracking), chunks of consecutive blocks couple to a band of the reduced system only; forming and
    applying it band by band (small chunks here) gives the double-precision steps and solution."""
    import sys

    import scipy.linalg  # noqa: F401

    from tiltflow.solver import _schur

    monkeypatch.setattr(_schur, "MIXED_CHUNK_ROWS", 12)
    spec = simulate.SimulationSpec(n_views=61, n_markers=90, n_full_tracks=3, track_fraction=(0.15, 0.4),
                                   noise_px=0.4, seed=9)
    series = series_from_sim(simulate.simulate(spec))
    options = align.AlignOptions()
    state = align.initial_state(series, options)
    layout = align.stage_layout("polish", series, state, options)
    x = (state.views, state.points_xyz_px)
    problem = BundleProblem(series.obs, layout, "points", compiled=compiled)
    st = problem.structure
    assert st.n_kept >= _schur.MIXED_MIN
    lo, hi = st.windows
    assert np.all(np.diff(lo) >= 0) and sorted(st.group_entity) == list(range(series.obs.n_markers))
    _, ne = problem.linearize(x)
    cols = np.arange(st.n_kept)
    outside = (cols[None, :] < lo[:, None]) | (cols[None, :] >= hi[:, None])  # (n_groups, m)
    assert np.abs(ne.hek).max(axis=1)[outside].max() == 0.0  # nothing outside the windows
    chunks = _schur.band_chunks(st.windows, st.block_size)
    assert np.mean([wh - wl for *_, wl, wh in chunks]) < 0.6 * st.n_kept  # a band, not the whole system
    step_m = ne.solve(1e-4, *ne.diagonal())
    sol_m = solve_bundle(series.obs, *x, layout, eliminate="points", compiled=compiled)
    monkeypatch.delitem(sys.modules, "scipy.linalg")  # the double-precision solve of the whole system
    _, ne = BundleProblem(series.obs, layout, "points", compiled=compiled).linearize(x)
    step_d = ne.solve(1e-4, *ne.diagonal())
    sol_d = solve_bundle(series.obs, *x, layout, eliminate="points", compiled=compiled)
    np.testing.assert_allclose(step_m, step_d, rtol=1e-7, atol=1e-9 * np.abs(step_d).max())
    assert sol_m.report.cost == pytest.approx(sol_d.report.cost, rel=1e-9)
    np.testing.assert_allclose(sol_m.views, sol_d.views, atol=1e-9)


def test_window_medians_are_the_medians_compiled_or_not(monkeypatch):
    """Windowed medians (robust scales) equal np.median per window, odd and even counts, both code paths."""
    from tiltflow.solver import _bundle, window_medians

    rng = np.random.default_rng(4)
    values = rng.exponential(size=6000)
    lo = np.array([0, 10, 11, 500, 5999])
    hi = np.array([7, 20, 12, 5000, 6000])
    expected = [np.median(values[a:b]) for a, b in zip(lo, hi)]
    np.testing.assert_allclose(window_medians(values, lo, hi), expected, rtol=1e-15)  # compiled: 6,000 values
    monkeypatch.setattr(_bundle, "COMPILED_MIN_OBSERVATIONS", 10**9)
    np.testing.assert_allclose(window_medians(values, lo, hi), expected, rtol=1e-15)
    with pytest.raises(ValueError, match="window 1"):
        window_medians(values, lo, np.array([7, 10, 12, 5000, 6000]))


@pytest.mark.skipif(not (__import__("sys").platform.startswith("linux")
                         and __import__("platform").libc_ver()[0] == "glibc"), reason="glibc's mallopt only")
def test_allocator_keeps_freed_memory_on_glibc():
    """warm_up's allocator setting takes effect where glibc is the C library (idempotent)."""
    from tiltflow.solver import keep_freed_memory

    assert keep_freed_memory() is True
    assert keep_freed_memory() is True


def test_rounding_at_the_minimum_ends_the_fit_by_ftol(small_sim):
    """Near the minimum, a step the model says gains less than ftol of the cost and that rounding makes
    lose as little is the end of the fit (status 2, MINPACK's test), not a reason to raise the damping
    until it overflows.  The rounding is simulated: every cost evaluation comes out 1e-12 high."""
    from tiltflow.solver import levenberg_marquardt

    class Rounded(BundleProblem):
        def cost(self, state):
            return super().cost(state) * (1.0 + 1e-12)

    series = series_from_sim(small_sim)
    options = align.AlignOptions(robust=False)
    state = align.align(series, options)
    layout = align.stage_layout("polish", series, state, options)
    start = (state.views + [0.0, 0.0, 0.0, 0.05, 0.0, 0.0, 0.0], state.points_xyz_px)
    (_, _), report = levenberg_marquardt(Rounded(series.obs, layout, compiled=False), start, LMOptions(ftol=1e-10))
    assert report.status == 2, report.message
    assert report.iterations <= 6


def test_eliminated_blocks_keep_only_freed_columns(small_sim):
    """With distortion off, the view blocks of the polish stage are the five columns it frees (tilt, rotation,
    scale, dx, dy), not all seven view parameters with unit-diagonal distortion columns."""
    series = series_from_sim(small_sim)
    options = align.AlignOptions()
    state = align.initial_state(series, options)
    layout = align.stage_layout("polish", series, state, options)
    st = BundleProblem(series.obs, layout, "views", compiled=False).structure
    assert st.block_size == 5
    assert list(np.flatnonzero(st.e_colmap >= 0)) == [projection.TILT, projection.ROT, projection.SCALE,
                                                       projection.DX, projection.DY]
    assert BundleProblem(series.obs, layout, "points", compiled=False).structure.block_size == 3
