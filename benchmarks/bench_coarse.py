"""Coarse alignment speed: 61 views of 1024 x 1024 (the issue's benchmark).

Renders a simulated series (beads + specimen blobs, shifts up to +-100 px,
noise), writes it as an MRC stack, and times ``tiltflow.coarse.coarse_align``
reading it memory-mapped (binning, filtering, correlation, tilt-axis search
and the second pass), median of repeats.  Also reports the accuracy of the
shifts after removing what no coarse alignment can determine (a common
offset, x0 cos(tilt) and z0 sin(tilt) perpendicular to the axis) and of the
tilt-axis estimate, started 5 degrees off.

Usage:  python benchmarks/bench_coarse.py [--size 1024] [--repeats 3]
Writes benchmarks/out/coarse.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _rendered import rendered_series

from tiltflow import coarse, simulate
from tiltflow.io.mrc import Stack, write_stack


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "coarse.json"))
    args = ap.parse_args()
    n = args.size
    spec, sim, _, views, render_s = rendered_series(n)
    ref = int(np.argmin(np.abs(sim.nominal_tilt_deg)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stack.mrc"
        write_stack(path, views.astype(np.float32))
        del views
        times = []
        for _ in range(args.repeats):
            with Stack(path) as stack:
                t0 = time.perf_counter()
                res = coarse.coarse_align(stack, sim.nominal_tilt_deg, spec.tilt_axis_deg + 5.0, ref)
                times.append(time.perf_counter() - t0)
    report = {
        "views": spec.n_views, "size": n, "binning": res.binning,
        "seconds_median": statistics.median(times), "seconds_all": times,
        "shift_error_px": simulate.shift_error_px(res.shifts_px, sim.views[:, 3:] - sim.views[ref, 3:],
                                                sim.views[:, 0], spec.tilt_axis_deg),
        "tilt_axis_true_deg": spec.tilt_axis_deg, "tilt_axis_start_deg": spec.tilt_axis_deg + 5.0,
        "tilt_axis_estimate_deg": res.tilt_axis_deg,
        "tilt_axis_uncertainty_deg": res.axis_search["uncertainty_deg"] if res.axis_search else None,
        "render_seconds": render_s,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
