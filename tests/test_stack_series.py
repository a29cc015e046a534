"""A series with markers and a stack: images feed the coarse stage, markers stay the authority."""

import json

import numpy as np
import pytest

from conftest import run_steps

from tiltflow import io, simulate
from tiltflow.workflow import steps
from tiltflow.io.mrc import write_stack


def run(tmp_path, row, tag):
    out = run_steps(tmp_path, row, tag)
    return json.loads(out["summary"].read_text()), io.read_xf(out["coarse_xf"])


@pytest.fixture(scope="module")
def stack_series(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stack")
    spec = simulate.SimulationSpec(n_views=41, n_markers=16, n_full_tracks=8, width=256, height=256,
                                   thickness_px=50.0, tilt_axis_deg=-6.0, shift_max_px=40.0, noise_px=0.4, seed=41)
    sim = simulate.simulate(spec)
    io.write_markers_csv(tmp / "m.csv", sim.marker + 1, sim.view, sim.xy_px)
    (tmp / "t.rawtlt").write_text("".join(f"{t:.2f}\n" for t in sim.nominal_tilt_deg))
    views = simulate.render_stack(sim, 50.0, simulate.RenderSpec(n_blobs=900, dose=300.0, seed=41))
    write_stack(tmp / "s.mrc", np.round(views).astype(np.int16), pixel_size_angstrom=8.0)
    return tmp, sim


def test_markers_and_stack_align_like_markers_alone(stack_series):
    tmp, sim = stack_series
    base = {"series": "s", "markers": str(tmp / "m.csv"), "tilts": str(tmp / "t.rawtlt"), "tilt_axis_angle": -2.0,
            "prexg": "", "exclude_views": "", "tilt_offset": 0.0, "pixel_size": None}
    with_stack, coarse_xf = run(tmp, {**base, "stack": str(tmp / "s.mrc"), "width": None, "height": None}, "img")
    markers_only, _ = run(tmp, {**base, "stack": "", "width": 256, "height": 256}, "mk")
    assert with_stack["coarse"]["source"] == "images" and markers_only["coarse"]["source"] == "markers"
    # the image search moved towards the axis (sheet said -2, truth -6; on this small 256 px,
    # 41-view series it lands 1.6 degrees off) and the markers, the authority, find it
    assert abs(with_stack["tilt_axis_image_deg"] - (-6.0)) < 2.0
    # the bootstrap spread of the estimate: positive (views disagree a little) and well below a degree
    assert 0.0 < with_stack["tilt_axis_image_uncertainty_deg"] < 0.5
    assert abs(with_stack["tilt_axis_deg_mean"] - (-6.0)) < 0.1
    # the same least-squares optimum either way
    assert with_stack["mean_residual"] == pytest.approx(markers_only["mean_residual"], rel=1e-6)
    assert with_stack["pixel_size_angstrom"] == pytest.approx(8.0)
    # coarse.xf: translation only, the reference view unmoved, close to the true drift
    np.testing.assert_allclose(coarse_xf[:, :4], np.tile([1, 0, 0, 1], (41, 1)))
    ref = int(np.argmin(np.abs(sim.nominal_tilt_deg)))
    assert np.abs(coarse_xf[ref, 4:]).max() < 1e-9
    true_shift = sim.views[:, 3:] - sim.views[ref, 3:]
    assert np.sqrt(np.mean((-coarse_xf[:, 4:] - true_shift) ** 2)) < 5.0  # up to the x0/z0 terms


def test_stack_view_count_must_match_tilts(stack_series, tmp_path):
    tmp, _ = stack_series
    (tmp_path / "short.rawtlt").write_text("".join(f"{t}\n" for t in range(-20, 20, 1)))
    row = {"series": "s", "markers": str(tmp / "m.csv"), "tilts": str(tmp_path / "short.rawtlt"),
           "tilt_axis_angle": -6.0, "stack": str(tmp / "s.mrc"), "width": None, "height": None}
    with pytest.raises(io.InputError, match="the stack has 41 views but .*short.rawtlt lists 40 tilt angles"):
        steps.import_markers(row, tmp_path / "p.json")
