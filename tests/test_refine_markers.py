"""projection_matching.with_markers: the images refine a marker solution's shifts per view, only
where they clearly disagree with the markers; a well-aligned series is left as the markers solved it."""

import dataclasses
import json

import numpy as np
import pytest
from conftest import run_steps

from tiltflow import io, projection, simulate
from tiltflow.io.mrc import write_stack

SPEC = simulate.SimulationSpec(n_views=41, n_markers=16, n_full_tracks=8, width=256, height=256, thickness_px=50.0,
                               tilt_axis_deg=-6.0, shift_max_px=20.0, noise_px=0.4, rotation_sd_deg=0.0, seed=41)
RENDER = simulate.RenderSpec(n_blobs=1500, dose=200.0, seed=41)
#: Views whose markers are all missing (their shifts are interpolated by the marker solution) and
#: that jumped: the images must find them.
JUMPS = {8: (9.0, -6.0), 30: (-7.0, 8.0)}


def aligned_both_ways(tmp_path, jumps):
    sim = simulate.simulate(SPEC)
    keep = np.ones(len(sim.marker), dtype=bool)
    if jumps:
        views, xy = sim.views.copy(), sim.xy_px.copy()
        for j, d in jumps.items():
            views[j, 3:] += d
            xy[sim.view == j] += d  # where the (dropped) observations truly are
        sim = dataclasses.replace(sim, views=views, xy_px=xy)
        keep = ~np.isin(sim.view, list(jumps))
    stack = simulate.render_stack(sim, SPEC.thickness_px, RENDER)
    io.write_markers_csv(tmp_path / "m.csv", sim.marker[keep] + 1, sim.view[keep], sim.xy_px[keep])
    io.write_tlt(tmp_path / "t.rawtlt", sim.nominal_tilt_deg, "8.2f")
    write_stack(tmp_path / "s.mrc", np.round(stack).astype(np.int16), pixel_size_angstrom=8.0)
    row = {"series": "s", "markers": str(tmp_path / "m.csv"), "tilts": str(tmp_path / "t.rawtlt"),
           "tilt_axis_angle": -6.0, "stack": str(tmp_path / "s.mrc"), "width": None, "height": None, "prexg": "",
           "exclude_views": "", "tilt_offset": 0.0, "pixel_size": None}
    line_integrals = -np.log(np.maximum(stack, 1.0) / RENDER.dose)
    out = {}
    for tag, with_markers in (("markers", False), ("refined", True)):
        config = {"align": {}, "coarse": {}, "robust": False, "projection_matching": {"with_markers": with_markers}}
        paths = run_steps(tmp_path, row, tag, config)
        xf, tilt = io.read_xf(paths["xf"]), io.read_tilts(paths["tlt"])
        fid = simulate.tomogram_fidelity(sim, line_integrals, xf, SPEC.thickness_px, RENDER, tilt_deg=tilt)
        print(f"{tag}: tomogram NCC with the truth {fid['ncc']:.4f} (true geometry {fid['ncc_true_geometry']:.4f})")
        out[tag] = (json.loads(paths["summary"].read_text()), xf, fid, view_errors(sim, paths, xf, tilt))
    return out


def view_errors(sim, paths, xf, tilt_deg):
    """Per view, the mean distance between where ``.xf`` puts the markers' true (noise-free here:
    the simulated observations, dropped ones included) image positions and where the solved 3D
    points (``.xyz``) project in the aligned frame -- the view's alignment error, px."""
    ids, xyz = io.read_xyz(paths["xyz"])
    centre = np.array([SPEC.width / 2.0, SPEC.height / 2.0])
    points = {int(i): p - np.array([*centre, 0.0]) for i, p in zip(ids, xyz)}
    err = np.zeros(len(xf))
    t = np.deg2rad(tilt_deg)
    for j in range(len(xf)):
        sel = [k for k in np.flatnonzero(sim.view == j) if int(sim.marker[k]) + 1 in points]
        p = np.array([points[int(sim.marker[k]) + 1] for k in sel])
        model = np.column_stack([p[:, 0] * np.cos(t[j]) + p[:, 2] * np.sin(t[j]), p[:, 1]])
        raw = projection.apply_xf(np.tile(xf[j], (len(sel), 1)), sim.xy_px[sel], centre) - centre
        err[j] = np.mean(np.hypot(*(raw - model).T))
    return err


def test_a_well_aligned_series_is_left_as_the_markers_solved_it(tmp_path):
    # measured: no view corrected (matching scatter 0.49 px, threshold >= 1.5 px); NCC 0.7938 both ways
    out = aligned_both_ways(tmp_path, {})
    summary, xf, fid, _ = out["refined"]
    pm = summary["projection_matching"]
    assert pm["with_markers"] and len(pm["levels"]) == 3
    assert len(pm["accepted_views"]) <= 2
    assert fid["ncc"] >= 0.99 * out["markers"][2]["ncc"]
    assert "projection_matching" not in out["markers"][0]


def test_views_the_markers_got_wrong_are_moved_by_the_images(tmp_path):
    # measured: views 8 and 30 corrected; tomogram NCC with the truth 0.7833 -> 0.7935
    out = aligned_both_ways(tmp_path, JUMPS)
    summary, xf, fid, err = out["refined"]
    pm = summary["projection_matching"]
    assert set(JUMPS) <= set(pm["accepted_views"])
    assert fid["ncc"] > out["markers"][2]["ncc"]
    before = out["markers"][3]
    print("view errors, markers -> refined:", {j: (round(before[j], 2), round(err[j], 2)) for j in JUMPS})
    for j in JUMPS:
        # the marker solution interpolated the view's shift (several px off); the images put it right
        assert before[j] > 3.0 and err[j] < 1.0
    # marker residuals are those of the markers' own solution where nothing moved
    assert pm["marker_rms_with_corrections"] == pytest.approx(summary["rms"], rel=0.05)
