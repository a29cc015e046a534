"""Real IMOD data (../shared/realdata): residuals against IMOD tiltalign's own.

IMOD solved these with grouped stretch and skew (distortion); with the
default options (no distortion) tiltflow's mean residual is a little above
IMOD's, and the acceptance bound here is 5 %.  With ``align.distortion:
grouped`` it is at or below IMOD's: tests/test_distortion.py.
"""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import realdata, run_steps

from tiltflow import align, io, projection
from tiltflow.model import SeriesSpec
from tiltflow.prepare import prepare

# name: (markers, tilts, rotation, width, height, angle offset, IMOD mean residual, allowed excess)
CASES = {
    "BBa": ("imod-BB/BBa.fid", "imod-BB/BBa.rawtlt", -12.5, 512, 512, -0.5, 0.315, 0.05),
    "BBb": ("imod-BB/BBb.fid", "imod-BB/BBb.rawtlt", -12.5, 512, 512, -2.11, 0.336, 0.05),
    "uitest_BBa": ("imod-BB-uitest/BBa_points_from_resid.csv", "imod-BB/BBa.rawtlt", -12.5, 512, 512, -0.5, 0.313, 0.05),
    "uitest_BBb": ("imod-BB-uitest/BBb_points_from_resid.csv", "imod-BB/BBb.rawtlt", -12.5, 512, 512, -2.11, 0.301, 0.05),
    # partial tracks; tilts are IMOD's solved ones (no raw tilts in the data); 1950 x 1024 montage
    "midzone2a": ("imod-midzone2/midzone2a_points_from_resid.csv", "imod-midzone2/midzone2a.tlt", 0.0, 1950, 1024, 0, 0.644, 0.08),
    "midzone2b": ("imod-midzone2/midzone2b_points_from_resid.csv", "imod-midzone2/midzone2b.tlt", 0.0, 1024, 1950, 0, 0.648, 0.08),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_mean_residual_close_to_imod(name):
    markers, tilts, rot, w, h, off, imod, excess = CASES[name]
    spec = SeriesSpec(name, str(realdata(markers)), str(realdata(tilts)), rot, width=w, height=h, tilt_offset_deg=off)
    state = align.align(prepare(spec).series)
    mean = state.stages[-1].mean_residual
    print(f"{name}: mean residual {mean:.4f} px, IMOD {imod:.3f} px ({100 * (mean / imod - 1):+.1f} %)")
    assert mean <= imod * (1 + excess)
    assert mean >= imod * 0.8  # a far lower value would mean points were lost


@pytest.mark.parametrize("distortion", ["off", "grouped"])
def test_imod_files_are_the_solution(tmp_path, distortion):
    """Observations mapped through the .xf alone, each marker fitted against the .tlt (and, with
    distortion, the .zfac) alone, give back the residuals of fiducials.tsv (BBa, with its .prexg
    composed in): IMOD's newstack/tilt reproduce the alignment from these files."""
    row = {"series": "BBa", "markers": str(realdata("imod-BB/BBa.fid")), "tilts": str(realdata("imod-BB/BBa.rawtlt")),
           "tilt_axis_angle": -12.5, "width": 512, "height": 512, "tilt_offset": -0.5,
           "prexg": str(realdata("imod-BB/BBa.prexg")), "exclude_views": "", "stack": "", "pixel_size": None}
    out = run_steps(tmp_path, row, config={"align": {"distortion": distortion}, "coarse": {}, "robust": False})
    xf = io.read_xf(out["xf"])
    tilt = np.deg2rad(io.read_tilts(out["tlt"]))
    zfac = io.read_zfac(out["zfac"], 61)
    assert np.any(zfac != 0) == (distortion != "off")
    # .xtilt as tiltalign writes it without a solved X-axis tilt (compare midzone2a.xtilt): 61 lines "   0.00"
    assert out["xtilt"].read_text() == (realdata("imod-midzone2/midzone2a.xtilt").read_text().splitlines()[0] + "\n") * 61
    np.testing.assert_array_equal(io.read_xtilt(out["xtilt"], 61), 0.0)
    summary = json.loads(out["summary"].read_text())
    if distortion == "off":
        assert "without" not in summary["distortion"]
    else:
        # the per-run comparison: the last stage solved again without distortion, and which predicts better
        without = summary["distortion"]["without"]
        print(f"BBa leave-out with distortion {summary['leave_out_error']:.4f}, without {without['leave_out_error']:.4f}"
              f" px; mean residual {summary['mean_residual']:.4f} vs {without['mean_residual']:.4f}")
        assert without["mean_residual"] > summary["mean_residual"]
        assert without["leave_out_ratio_with_to_without"] == pytest.approx(
            summary["leave_out_error"] / without["leave_out_error"])
        assert without["leave_out_ratio_with_to_without"] < 1.0
    prexg = io.read_xf(row["prexg"])
    fid = pd.read_csv(out["fiducials"], sep="\t", dtype={"marker": str})
    assert list(fid.columns) == ["marker", "view", "tilt", "x", "y", "x_fit", "y_fit", "resid_x", "resid_y", "weight"]
    assert len(fid) == 25 * 61 and fid["x_fit"].notna().all()
    obs = fid[fid["x"].notna()]
    c = np.array([256.0, 256.0])
    v = obs["view"].to_numpy()
    # markers were picked on the prealigned stack: back to raw coordinates first
    a_pre = prexg[v, :4].reshape(-1, 2, 2)
    pre = obs[["x", "y"]].to_numpy() - c - prexg[v, 4:]
    raw = np.linalg.solve(a_pre, pre[:, :, None])[:, :, 0] + c
    aligned = projection.apply_xf(xf[v], raw, c) - c
    resid = np.zeros_like(aligned)
    for m in obs["marker"].unique():
        sel = (obs["marker"] == m).to_numpy()
        th, fz = tilt[v[sel]], zfac[v[sel]]
        # aligned = (x cos t + z (sin t + fx), y + z fy): linear in the marker's (x, y, z)
        n = sel.sum()
        a = np.zeros((2 * n, 3))
        a[:n, 0], a[:n, 2] = np.cos(th), np.sin(th) + fz[:, 0]
        a[n:, 1], a[n:, 2] = 1.0, fz[:, 1]
        xyz, *_ = np.linalg.lstsq(a, np.concatenate([aligned[sel, 0], aligned[sel, 1]]), rcond=None)
        resid[sel] = (a @ xyz).reshape(2, n).T - aligned[sel]
    # aligned-frame residuals back to the marker (prealigned) frame
    a_tot = xf[v, :4].reshape(-1, 2, 2)
    to_marker = a_pre @ np.linalg.inv(a_tot)
    resid_marker = np.einsum("nij,nj->ni", to_marker, resid)
    np.testing.assert_allclose(resid_marker, obs[["resid_x", "resid_y"]].to_numpy(), atol=0.02)
    summary = json.loads(out["summary"].read_text())
    assert summary["mean_residual"] == pytest.approx(np.hypot(*resid_marker.T).mean(), rel=0.02)
    for key in ("stages", "rms", "mean_residual", "solve_seconds", "leave_out_error", "n_markers", "n_views",
                "n_observations"):
        assert key in summary
    assert [s["name"] for s in summary["stages"]] == ["initial", "main", "tilt", "polish"]
    assert summary["n_markers"] == 25 and summary["n_views"] == 61 and summary["n_observations"] == 1525
    # the 3D positions agree with IMOD's, up to the choice of origin
    _, xyz = io.read_xyz(out["xyz"])
    _, imod_xyz = io.read_xyz(realdata("imod-BB/BBafid.xyz"))
    d = (xyz - xyz.mean(0)) - (imod_xyz - imod_xyz.mean(0))
    assert np.sqrt(np.mean(d[:, :2] ** 2)) < 1.0


def test_resid_and_solution_files_read_like_imods(tmp_path):
    """{series}.resid has IMOD's layout, its points in IMOD's order (BBa.resid: same x, y, view to
    print precision), residuals whose mean is summary.json's; taSolution.log has tiltalign's columns
    and the views' solution; the ratio of measured values to unknowns is reported."""
    row = {"series": "BBa", "markers": str(realdata("imod-BB/BBa.fid")), "tilts": str(realdata("imod-BB/BBa.rawtlt")),
           "tilt_axis_angle": -12.5, "width": 512, "height": 512, "tilt_offset": -0.5,
           "prexg": str(realdata("imod-BB/BBa.prexg")), "exclude_views": "", "stack": "", "pixel_size": None}
    out = run_steps(tmp_path, row)
    ours_text, imod_text = out["resid"].read_text().splitlines(), realdata("imod-BB/BBa.resid").read_text().splitlines()
    assert ours_text[0] == imod_text[0] == "  1525 residuals"
    ours, imod = np.loadtxt(ours_text[1:]), np.loadtxt(imod_text[1:])
    assert [len(s) for s in ours_text[1:4]] == [len(s) for s in imod_text[1:4]]  # the same column widths
    np.testing.assert_allclose(ours[:, :2], imod[:, :2], atol=0.011)
    np.testing.assert_array_equal(ours[:, 2], imod[:, 2])
    summary = json.loads(out["summary"].read_text())
    assert np.hypot(ours[:, 3], ours[:, 4]).mean() == pytest.approx(summary["mean_residual"], abs=0.005)
    # per observation, our residuals and IMOD's agree to a fraction of a pixel (different models)
    assert np.sqrt(np.mean((ours[:, 3:] - imod[:, 3:]) ** 2)) < 0.2
    lines = out["solution"].read_text().splitlines()
    assert lines[0].startswith("At minimum tilt, rotation angle is ")
    assert lines[2].split() == ["view", "rotation", "tilt", "deltilt", "mag", "dmag", "skew", "mean", "resid"]
    table = np.loadtxt(lines[3:])
    imod_lines = realdata("imod-BB/taSolutiona.log").read_text().splitlines()
    imod_table = np.loadtxt([ln for ln in imod_lines if ln.strip() and ln.split()[0].isdigit()])
    assert table.shape == imod_table.shape == (61, 8)
    assert np.abs(table[:, 2] - imod_table[:, 2]).max() < 0.5  # solved tilts within half a degree
    assert np.abs(table[:, 1] - imod_table[:, 1]).max() < 1.0  # rotations within a degree
    ratio = summary["measured_to_unknowns"]
    assert ratio["measured"] == 3050 and ratio["ratio"] == pytest.approx(3050 / ratio["unknowns"])
    print(f"measured/unknowns: tiltflow {ratio['measured']}/{ratio['unknowns']} = {ratio['ratio']:.2f}, IMOD 3050/341 = 8.94")
