"""Solver speed: tiltflow's staged L-M vs scipy.optimize.least_squares.

Problems (simulated, known truth):
  * paper:  107 views (-55..53 deg) x 30 markers, 6 in every view, noise 0.5 px
  * large:  121 views (-60..60 deg) x 200 markers, 40 in every view, noise 0.5 px

tiltflow: all stages (initial, main, tilt, polish) from the naive start
(nominal tilts, sheet tilt-axis angle, marker-based shifts, z = 0); the time
is ``solve_seconds`` (the sum of the stages), median of repeats, JIT warmed.

scipy: ``least_squares(method="trf")`` with the sparse Jacobian pattern and
finite differences, all model variables free (gauge held as in tiltflow's
polish stage), from the same naive start.

Usage:  python benchmarks/bench_solver.py [--repeats N] [--skip-scipy-large]
Writes benchmarks/out/solver.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import scipy.optimize

from tiltflow import align, model, simulate
from tiltflow.solver import Observations, ScipyProblem, warm_up

PROBLEMS = {
    "paper_107x30": simulate.DEMO_SERIES["demo_paper"],
    "large_121x200": simulate.SimulationSpec(
        n_views=121, tilt_min_deg=-60, tilt_max_deg=60, n_markers=200, n_full_tracks=40,
        track_fraction=(0.3, 0.9), width=4096, height=4096, thickness_px=300, noise_px=0.5, seed=121,
    ),
}


def make_series(sim, axis_error_deg=0.5):
    n = len(sim.marker)
    n_m, n_v = sim.points_xyz_px.shape[0], len(sim.nominal_tilt_deg)
    obs = Observations(sim.marker, sim.view, sim.xy_px, np.ones(n), n_m, n_v, sim.centre_xy_px)
    return model.Series(obs, np.arange(1, n_m + 1).astype(str), sim.nominal_tilt_deg,
                        sim.tilt_axis_deg + axis_error_deg, sim.width, sim.height, np.zeros(n_v, dtype=bool))


def run_tiltflow(series, repeats):
    warm_up()
    times, state = [], None
    for _ in range(repeats):
        state = align.align(series)
        times.append(sum(s.seconds for s in state.stages))
    return statistics.median(times), state


def run_scipy(series):
    options = align.AlignOptions()
    start = align.initial_state(series, options)
    layout = align.stage_layout("polish", series, start, options)
    problem = ScipyProblem(series.obs, start.views, start.points_xyz_px, layout)
    pattern = problem.sparsity()
    t0 = time.perf_counter()
    res = scipy.optimize.least_squares(problem.fun, problem.x0, jac_sparsity=pattern, method="trf",
                                       x_scale="jac", ftol=1e-10, xtol=1e-10, gtol=1e-10)
    seconds = time.perf_counter() - t0
    v, p = problem.unpack(res.x)
    return seconds, v, p, res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--skip-scipy-large", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "solver.json"))
    args = ap.parse_args()
    report = {}
    for name, spec in PROBLEMS.items():
        sim = simulate.simulate(spec)
        series = make_series(sim)
        t_ours, state = run_tiltflow(series, args.repeats)
        rms, mean = align.residual_stats(series, state.views, state.points_xyz_px)
        row = {
            "n_views": spec.n_views, "n_markers": spec.n_markers, "n_observations": int(len(sim.marker)),
            "tiltflow_seconds": t_ours, "tiltflow_rms": rms, "tiltflow_mean_residual": mean,
            "tiltflow_iterations": [s.iterations for s in state.stages],
        }
        if not (args.skip_scipy_large and name.startswith("large")):
            t_sp, v, p, res = run_scipy(series)
            rms_sp, mean_sp = align.residual_stats(series, v, p)
            row.update({"scipy_seconds": t_sp, "scipy_rms": rms_sp, "scipy_mean_residual": mean_sp,
                        "scipy_nfev": int(res.nfev), "scipy_status": int(res.status),
                        "speedup": t_sp / t_ours})
        report[name] = row
        print(json.dumps({name: row}, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"\n{'problem':15s} {'obs':>6s} {'tiltflow s':>11s} {'rms':>7s} {'scipy s':>9s} {'rms':>7s} {'speed-up':>9s}")
    for name, r in report.items():
        print(f"{name:15s} {r['n_observations']:6d} {r['tiltflow_seconds']:11.4f} {r['tiltflow_rms']:7.4f} "
              f"{r.get('scipy_seconds', float('nan')):9.3f} {r.get('scipy_rms', float('nan')):7.4f} "
              f"{r.get('speedup', float('nan')):9.1f}")


if __name__ == "__main__":
    main()
