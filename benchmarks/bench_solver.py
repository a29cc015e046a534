"""Solver speed: tiltflow's staged robust L-M vs scipy.optimize.least_squares.

Problems (simulated, known truth, picking noise 0.5 px, 0.5 deg error in the
stated tilt axis):
  * paper_107x30:     107 views (-55..53 deg) x 30 markers, 6 in every view
  * large_121x200:    121 views (-60..60 deg) x 200 markers, 40 in every view
  * patch_61x3000:    61 views (-60..60 deg) x 3,000 tracks, 100 in every view,
                      the others over 20-80 % of the series (patch tracking)
  * huge_121x20000:   121 views x 20,000 tracks (tiltflow only; time and peak memory)

Both solvers start from the start a user gives both (``align.initial_state``:
nominal tilts, the stated axis, marker-based shifts, markers de-tilted from
the view nearest zero tilt with z = 0).

tiltflow: ``align.align`` -- all four stages (initial, main, tilt, polish),
robust re-weighting on, default options; the time is ``solve_seconds`` as
``summary.json`` reports it (sum of the stages), median of repeats (7).  The numba
kernels are loaded before timing (a job loads them once, ~0.5 s, and only from
``COMPILED_MIN_OBSERVATIONS`` observations on); the load is reported apart.

scipy (the fair baseline the issue names): ``least_squares(method="trf",
jac_sparsity=pattern, x_scale="jac")`` with its default tolerances, solving
the full model (every parameter tiltflow's polish stage frees, same gauge) in
one non-robust run -- less work than tiltflow does (no stages, no
re-weighting).  Its time includes building the sparsity pattern.  With
``--scipy-analytic`` it also runs with the exact sparse Jacobian
(``ScipyProblem.jac_sparse``) instead of finite differences.

Both run in one process with the C allocator set as tiltflow's solver sets
it (``solver.keep_freed_memory``, made before anything is timed): scipy's
iterations allocate as much as tiltflow's and get the same benefit.  This VM
has slow phases of a few seconds at any time (the 107 x 30 solve at 35-40 ms
instead of 24-27 ms, scipy likewise, measured in one process over 120 runs),
so the solvers are timed interleaved, round by round (tiltflow, then each
scipy variant), and besides the ratio of the medians (``*_speedup``) the
median of the ratios within a round is reported (``*_paired_speedup``).

Peak memory: ``tracemalloc`` peak of the numpy allocations during one
``align.align`` (inputs excluded).

Outputs: the time and traced peak of ``outputs.build_result`` on the final
state -- what the ``write_alignment`` rule computes (leave-out errors,
standard errors, the fiducial grid and tables), file writing excluded.

Usage:  python benchmarks/bench_solver.py [--repeats N] [--problems a,b] [--scipy-analytic]
                                          [--skip-scipy-large]
Writes benchmarks/out/solver.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np
import scipy.optimize

from tiltflow import align, model, simulate
from tiltflow.outputs import build_result
from tiltflow.solver import Observations, ScipyProblem, keep_freed_memory, warm_up


def _patch_spec(n_views, n_markers, n_full, seed):
    return simulate.SimulationSpec(
        n_views=n_views, tilt_min_deg=-60, tilt_max_deg=60, n_markers=n_markers, n_full_tracks=n_full,
        track_fraction=(0.2, 0.8), width=4096, height=4096, thickness_px=300, noise_px=0.5, seed=seed,
    )


PROBLEMS = {
    "paper_107x30": simulate.DEMO_SERIES["demo_paper"],
    "large_121x200": simulate.SimulationSpec(
        n_views=121, tilt_min_deg=-60, tilt_max_deg=60, n_markers=200, n_full_tracks=40,
        track_fraction=(0.3, 0.9), width=4096, height=4096, thickness_px=300, noise_px=0.5, seed=121,
    ),
    "patch_61x3000": _patch_spec(61, 3000, 100, 61),
    "huge_121x20000": _patch_spec(121, 20000, 200, 20),
}
#: Problems scipy is not run on (minutes and gigabytes).
TILTFLOW_ONLY = ("huge_121x20000",)


def make_series(sim, axis_error_deg=0.5):
    n = len(sim.marker)
    n_m, n_v = sim.points_xyz_px.shape[0], len(sim.nominal_tilt_deg)
    obs = Observations(sim.marker, sim.view, sim.xy_px, np.ones(n), n_m, n_v, sim.centre_xy_px)
    return model.Series(obs, np.arange(1, n_m + 1).astype(str), sim.nominal_tilt_deg,
                        sim.tilt_axis_deg + axis_error_deg, sim.width, sim.height, np.zeros(n_v, dtype=bool))


def run_tiltflow(series):
    """``solve_seconds`` of one alignment and its state."""
    state = align.align(series)
    return sum(s.seconds for s in state.stages), state


def peak_memory(series):
    """Peak traced allocation (bytes) of one ``align.align``."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    align.align(series)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak


def run_outputs(series, state):
    """Seconds and traced peak (bytes) of :func:`tiltflow.outputs.build_result` on ``state``."""
    prepared = model.Prepared(series, series.nominal_tilt_deg, None, 1.0, {}, [], [], [], 0)
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    build_result(prepared, state)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return seconds, peak


def run_scipy(series, analytic=False):
    """scipy trf-sparse on the full model from the naive start: (seconds, views, points, result)."""
    options = align.AlignOptions()
    start = align.initial_state(series, options)
    layout = align.stage_layout("polish", series, start, options)
    problem = ScipyProblem(series.obs, start.views, start.points_xyz_px, layout)
    t0 = time.perf_counter()
    if analytic:
        res = scipy.optimize.least_squares(problem.fun, problem.x0, jac=problem.jac_sparse, method="trf",
                                           x_scale="jac")
    else:
        res = scipy.optimize.least_squares(problem.fun, problem.x0, jac_sparsity=problem.sparsity(), method="trf",
                                           x_scale="jac")
    seconds = time.perf_counter() - t0
    v, p = problem.unpack(res.x)
    return seconds, v, p, res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--scipy-repeats", type=int, default=7)
    ap.add_argument("--problems", default="paper_107x30,large_121x200,patch_61x3000,huge_121x20000")
    ap.add_argument("--skip-scipy-large", action="store_true", help="scipy on the paper problem only")
    ap.add_argument("--scipy-analytic", action="store_true", help="also scipy with the exact sparse Jacobian")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "solver.json"))
    args = ap.parse_args()
    keep_freed_memory()  # for both solvers (see the module docstring)
    report = {}
    for name in args.problems.split(","):
        spec = PROBLEMS[name]
        sim = simulate.simulate(spec)
        series = make_series(sim)
        repeats = 1 if name in TILTFLOW_ONLY else args.repeats
        t0 = time.perf_counter()
        warm_up(len(series.obs.view_index))
        load = time.perf_counter() - t0
        run_sp = name not in TILTFLOW_ONLY and not (args.skip_scipy_large and name != "paper_107x30")
        variants = (("fd", "analytic") if args.scipy_analytic else ("fd",)) if run_sp else ()
        # interleaved: round r times tiltflow, then each scipy variant (first scipy_repeats rounds), so that
        # both sample the same machine conditions (this VM has slow phases of seconds)
        ours, theirs = [], {v: [] for v in variants}
        for r in range(max(repeats, args.scipy_repeats if variants else 0)):
            if r < repeats:
                t, state = run_tiltflow(series)
                ours.append(t)
            for variant in variants if r < args.scipy_repeats else ():
                theirs[variant].append(run_scipy(series, variant == "analytic"))
        t_ours = statistics.median(ours)
        rms, mean = align.residual_stats(series, state.views, state.points_xyz_px)
        row = {
            "n_views": spec.n_views, "n_markers": spec.n_markers, "n_observations": len(sim.marker),
            "tiltflow_seconds": t_ours, "tiltflow_seconds_all": ours, "tiltflow_rms": rms,
            "tiltflow_mean_residual": mean,
            "tiltflow_stage_seconds": [s.seconds for s in state.stages],
            "tiltflow_iterations": [s.iterations for s in state.stages],
            "tiltflow_robust_rounds": [s.robust_rounds for s in state.stages],
            "kernel_load_seconds": load,
            "peak_memory_mb": peak_memory(series) / 2**20,
        }
        out_seconds, out_peak = run_outputs(series, state)
        row.update({"outputs_seconds": out_seconds, "outputs_peak_memory_mb": out_peak / 2**20})
        for variant, runs in theirs.items():
            key = "scipy" if variant == "fd" else "scipy_analytic"
            t_sp = statistics.median(r[0] for r in runs)
            _, v, p, res = runs[-1]
            rms_sp, mean_sp = align.residual_stats(series, v, p)
            # the ratio within each round (same conditions for both), and its median
            paired = statistics.median(r[0] / t for r, t in zip(runs, ours))
            row.update({f"{key}_seconds": t_sp, f"{key}_rms": rms_sp, f"{key}_mean_residual": mean_sp,
                        f"{key}_nfev": int(res.nfev), f"{key}_status": int(res.status),
                        f"{key}_speedup": t_sp / t_ours, f"{key}_paired_speedup": paired})
        report[name] = row
        print(json.dumps({name: row}, indent=1), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    nan = float("nan")
    print(f"\n{'problem':16s} {'obs':>8s} {'tiltflow s':>11s} {'rms':>7s} {'MB':>6s} {'scipy s':>9s} {'rms':>7s} "
          f"{'speed-up':>9s} {'paired':>7s} {'analytic s':>11s} {'speed-up':>9s} {'paired':>7s} {'outputs s':>10s} "
          f"{'MB':>6s}")
    for name, r in report.items():
        print(f"{name:16s} {r['n_observations']:8d} {r['tiltflow_seconds']:11.4f} {r['tiltflow_rms']:7.4f} "
              f"{r['peak_memory_mb']:6.0f} {r.get('scipy_seconds', nan):9.3f} {r.get('scipy_rms', nan):7.4f} "
              f"{r.get('scipy_speedup', nan):9.1f} {r.get('scipy_paired_speedup', nan):7.1f} "
              f"{r.get('scipy_analytic_seconds', nan):11.3f} {r.get('scipy_analytic_speedup', nan):9.1f} "
              f"{r.get('scipy_analytic_paired_speedup', nan):7.1f} {r['outputs_seconds']:10.2f} "
              f"{r['outputs_peak_memory_mb']:6.0f}")


if __name__ == "__main__":
    main()
