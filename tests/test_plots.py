"""The diagnostic plots read as an IMOD user expects: every PNG names its series, residual vectors
state their magnification with y up (3dmod), markers are labelled, the x-z plot draws the fitted
surfaces and the thickness, rotation and scale are plotted against tilt."""

import json

import numpy as np
from conftest import marker_row, run_steps

from tiltflow import plots, simulate
from tiltflow.io.tables import read_table
from tiltflow.workflow import steps


def test_plots_name_their_series_and_read_like_3dmod(tmp_path, monkeypatch):
    spec = simulate.SimulationSpec(n_views=31, n_markers=14, n_full_tracks=8, width=512, height=512, noise_px=0.3,
                                   thickness_px=120.0, seed=5)
    sim = simulate.simulate(spec)
    row = marker_row(tmp_path, sim, "grid3_ts07")
    out = run_steps(tmp_path, row)
    # the tables the plot rule reads (run_steps writes fiducials and summary; views and markers from the result)
    summary = json.loads(out["summary"].read_text())
    views_path, markers_path = tmp_path / "views.tsv", tmp_path / "markers.tsv"
    steps.write_alignment(out["prepared"], tmp_path / "run.polish.json", {}, "grid3_ts07",
                          {"xf": tmp_path / "x.xf", "tlt": tmp_path / "x.tlt", "xyz": tmp_path / "x.xyz",
                           "fiducials": tmp_path / "x.tsv", "summary": tmp_path / "x.json", "views": views_path,
                           "markers": markers_path})
    figures = {}
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.__setitem__(path, fig))
    steps.plot_alignment(out["fiducials"], views_path, markers_path, out["summary"],
                         {name: name for name in plots.PLOTS})
    assert set(figures) == set(plots.PLOTS)
    for name, fig in figures.items():
        assert fig._suptitle.get_text().startswith("grid3_ts07: "), name
    vectors = figures["residual_vectors"].axes[0]
    assert not vectors.yaxis_inverted() and "magnified 40x" in vectors.get_title()
    labels = [t.get_text() for t in figures["trajectories"].axes[0].texts]
    assert sorted(labels, key=int) == [str(m) for m in range(1, 15)]  # 14 markers, 10 colours: all named
    views = read_table(views_path)
    rot_axis = figures["rotation_scale"].axes[0]
    np.testing.assert_allclose(rot_axis.lines[0].get_xdata(), views["tilt"])  # against tilt, not view number
    xz = figures["markers_xz"].axes[0]
    surf = summary["surfaces"]
    assert surf["n_surfaces"] == 2 and len(xz.lines) == 2
    assert f"thickness {surf['thickness_px']:.1f} px" in xz.get_title()
