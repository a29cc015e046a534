"""Marker-free alignment speed and accuracy: 61 views of 1024 x 1024 (issue 11's benchmark).

Renders a simulated series (beads + specimen blobs, drift up to +-100 px,
noise), writes it as an int16 MRC stack and a ``.rawtlt``, reads the row
as the workflow does (:func:`tiltflow.prepare.prepare`, no markers) and
times :func:`tiltflow.image_align.align_from_images` on the memory-mapped
stack: coarse cross-correlation with the tilt-axis search (started 2
degrees off), then projection matching coarse to fine, default options
(what the ``align_images`` rule runs).  Reports the total, the coarse
stage, each projection-matching level (seconds, rounds, seconds per
round), the gauge-free shift error of the coarse and matched shifts, and
the tomogram's NCC with the specimen against a reconstruction with the
true geometry (:func:`tiltflow.simulate.tomogram_fidelity`, binning 4).

Usage:  python benchmarks/bench_stackmatch.py [--size 1024] [--repeats 1]
Writes benchmarks/out/stackmatch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _rendered import rendered_series

from tiltflow import simulate
from tiltflow.image_align import align_from_images
from tiltflow.io.imod_text import write_tlt
from tiltflow.io.mrc import Stack, write_stack
from tiltflow.model import SeriesSpec
from tiltflow.prepare import prepare
from tiltflow.stackmatch import StackMatchOptions


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--finest-size", type=int, default=StackMatchOptions.finest_size_px,
                    help="projection_matching.finest_size (default: the shipped default)")
    ap.add_argument("--band-height", type=float, default=StackMatchOptions.band_height_px,
                    help="projection_matching.band_height, raw px (default: the shipped default)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "stackmatch.json"))
    args = ap.parse_args()
    n = args.size
    options = StackMatchOptions(finest_size_px=args.finest_size, band_height_px=args.band_height)
    spec, sim, render, views, render_s = rendered_series(n, rotation_sd_deg=0.0)
    ref = int(np.argmin(np.abs(sim.nominal_tilt_deg)))
    true = sim.views[:, 3:] - sim.views[ref, 3:]
    axis_true = float(np.rad2deg(sim.views[:, 1]).mean())
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        stack_path, tlt_path = Path(tmp) / "s.mrc", Path(tmp) / "s.rawtlt"
        write_stack(stack_path, np.clip(np.round(views), -32768, 32767).astype(np.int16))
        write_tlt(tlt_path, sim.nominal_tilt_deg)
        row = SeriesSpec(name="bench", markers="", tilts=str(tlt_path), tilt_axis_deg=spec.tilt_axis_deg + 2.0,
                         stack=str(stack_path))
        prepared = prepare(row)
        for _ in range(args.repeats):
            with Stack(stack_path) as stack:
                t0 = time.perf_counter()
                res = align_from_images(prepared, stack, options=options, name="bench")
                runs.append(time.perf_counter() - t0)
    pm = res.summary["projection_matching"]
    coarse_shifts = np.column_stack([res.views_table["coarse_dx"], res.views_table["coarse_dy"]])
    lin = -np.log(np.maximum(views, 1.0) / render.dose)
    del views
    fid = simulate.tomogram_fidelity(sim, lin, res.views, spec.thickness_px, render, binning=4)
    report = {
        "views": spec.n_views, "size": n, "cores": os.cpu_count(),
        "finest_size_px": options.finest_size_px, "band_height_px": options.band_height_px,
        "seconds_median": statistics.median(runs), "seconds_all": runs,
        "coarse_seconds": res.summary["coarse"]["seconds"],
        "matching_seconds": pm["seconds"],
        "levels": [{"binning": lv["binning"], "seconds": lv["seconds"], "rounds": lv["rounds"],
                    "seconds_per_round": lv["seconds"] / max(1, lv["rounds"]), "updates_px": lv["updates_px"]}
                   for lv in pm["levels"]],
        "thickness_measured_px": pm["thickness_px"], "thickness_true_px": spec.thickness_px,
        "shift_error_coarse_px": simulate.shift_error_px(coarse_shifts, true, sim.views[:, 0], axis_true),
        "shift_error_matched_px": simulate.shift_error_px(res.views[:, 3:], true, sim.views[:, 0], axis_true),
        "tilt_axis_true_deg": axis_true, "tilt_axis_estimate_deg": res.summary["tilt_axis_deg_mean"],
        "mean_ncc_before": pm["mean_ncc_before"], "mean_ncc_after": pm["mean_ncc_after"],
        "tomogram_ncc_true_geometry": fid["ncc_true_geometry"], "tomogram_ncc": fid["ncc"],
        "tomogram_ncc_ratio": fid["ratio"],
        "render_seconds": render_s,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
