"""SerialEM .mdoc as the tilts column: angles by ZValue, pixel size, tilt-axis angle from the title line."""

import json

import numpy as np
import pytest
from conftest import run_steps

from tiltflow import io, simulate
from tiltflow.io import InputError
from tiltflow.io.mrc import write_stack
from tiltflow.model import SeriesSpec
from tiltflow.prepare import prepare
from tiltflow.workflow.sheet import read_sheet

SPEC = simulate.SimulationSpec(n_views=41, n_markers=14, n_full_tracks=6, width=1024, height=1024, noise_px=0.4,
                               tilt_axis_deg=-6.0, seed=23)


def write_mdoc(path, tilt_deg, axis_deg=-6.0, pixel=8.0, drop=None, order=None):
    """A SerialEM-like .mdoc: global keys, two title lines, one section per view (in ``order``)."""
    lines = [f"PixelSpacing = {pixel}", "ImageFile = s.mrc", "ImageSize = 1024 1024", "DataMode = 1", "",
             "[T = SerialEM: Digitized on a Krios                      22-Nov-26  10:00:00    ]", ""]
    if axis_deg is not None:
        lines += [f"[T =     Tilt axis angle = {axis_deg}, binning = 1  spot = 8  camera = 0]", ""]
    for z in (range(len(tilt_deg)) if order is None else order):
        lines += [f"[ZValue = {z}]"]
        if z != drop:
            lines += [f"TiltAngle = {tilt_deg[min(z, len(tilt_deg) - 1)]:.2f}"]
        lines += ["StagePosition = 12.5 -3.2", "Magnification = 33000", f"PixelSpacing = {pixel}",
                  "DateTime = 22-Nov-26  10:00:00", ""]
    path.write_text("\n".join(lines))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mdoc")
    sim = simulate.simulate(SPEC)
    io.write_markers_csv(tmp / "m.csv", sim.marker + 1, sim.view, sim.xy_px)
    io.write_tlt(tmp / "t.rawtlt", sim.nominal_tilt_deg, "8.2f")
    # dose-symmetric acquisition order: sections are written as acquired, ZValue says where each view is
    order = np.argsort(np.abs(sim.nominal_tilt_deg) + 1e-3 * (sim.nominal_tilt_deg < 0), kind="stable")
    write_mdoc(tmp / "t.mdoc", sim.nominal_tilt_deg, order=order.tolist())
    return tmp, sim


def row(tmp, tilts, axis):
    return {"series": "s", "markers": str(tmp / "m.csv"), "tilts": str(tmp / tilts), "tilt_axis_angle": axis,
            "stack": "", "width": 1024, "height": 1024, "prexg": "", "exclude_views": "", "tilt_offset": 0.0,
            "pixel_size": None}


def test_an_mdoc_aligns_like_the_rawtlt_and_the_sheet_angle(files):
    tmp, sim = files
    a = run_steps(tmp, row(tmp, "t.rawtlt", -6.0), "rawtlt")
    b = run_steps(tmp, row(tmp, "t.mdoc", None), "mdoc")  # the axis from the mdoc's title line
    sa, sb = json.loads(a["summary"].read_text()), json.loads(b["summary"].read_text())
    np.testing.assert_allclose(io.read_xf(b["xf"]), io.read_xf(a["xf"]), atol=1e-6)
    np.testing.assert_allclose(io.read_tilts(b["tlt"]), io.read_tilts(a["tlt"]), atol=1e-6)
    assert sb["rms"] == pytest.approx(sa["rms"], rel=1e-9)
    assert sb["pixel_size_angstrom"] == 8.0 and sa["pixel_size_angstrom"] == 1.0
    # the same angle in both places is fine, and the sheet's value is used
    c = run_steps(tmp, row(tmp, "t.mdoc", -6.3), "both")
    assert json.loads(c["summary"].read_text())["rms"] == pytest.approx(
        json.loads(run_steps(tmp, row(tmp, "t.rawtlt", -6.3), "raw63")["summary"].read_text())["rms"], rel=1e-9)


def spec(tmp, tilts, axis=None, stack=None):
    return SeriesSpec(name="s", markers=str(tmp / "m.csv"), tilts=str(tilts), tilt_axis_deg=axis, stack=stack,
                      width=None if stack else 1024, height=None if stack else 1024)


def test_bad_mdocs_are_refused_naming_the_file_and_section(files, tmp_path):
    tmp, sim = files
    tilts = sim.nominal_tilt_deg
    write_mdoc(tmp_path / "no_angle.mdoc", tilts, drop=3)
    with pytest.raises(InputError, match=r"no_angle\.mdoc: section \[ZValue = 3\] has no TiltAngle"):
        prepare(spec(tmp, tmp_path / "no_angle.mdoc"))
    write_mdoc(tmp_path / "gap.mdoc", tilts, order=[z for z in range(41) if z != 7] + [41])
    with pytest.raises(InputError, match=r"gap\.mdoc: ZValues must be 0\.\.40, each once \(41 sections\); missing \[7\]"):
        prepare(spec(tmp, tmp_path / "gap.mdoc"))
    write_mdoc(tmp_path / "axis.mdoc", tilts, axis_deg=-6.0)
    with pytest.raises(InputError, match=r"axis\.mdoc: title line says Tilt axis angle = -6 but the sheet's "
                                         r"tilt_axis_angle \(row s\) is -8; they differ by 2\.00 degrees"):
        prepare(spec(tmp, tmp_path / "axis.mdoc", axis=-8.0))
    write_mdoc(tmp_path / "no_axis.mdoc", tilts, axis_deg=None)
    with pytest.raises(InputError, match=r"no_axis\.mdoc: no 'Tilt axis angle = \.\.\.' title line"):
        prepare(spec(tmp, tmp_path / "no_axis.mdoc"))
    write_stack(tmp_path / "short.mrc", np.zeros((40, 32, 32), dtype=np.int16))
    with pytest.raises(InputError, match=r"short\.mrc: the stack has 40 views but .*axis\.mdoc lists 41"):
        prepare(spec(tmp, tmp_path / "axis.mdoc", stack=str(tmp_path / "short.mrc")))


def test_the_sheet_may_leave_the_axis_empty_only_for_an_mdoc(tmp_path):
    (tmp_path / "sheet.tsv").write_text("series\tmarkers\ttilts\ttilt_axis_angle\n"
                                        "a\tm.csv\tt.mdoc\t\n"
                                        "b\tm.csv\tt.rawtlt\t\n")
    with pytest.raises(InputError, match=r"line 3 \(b\): column tilt_axis_angle is empty; it is required"):
        read_sheet(tmp_path / "sheet.tsv")
    (tmp_path / "sheet.tsv").write_text("series\tmarkers\ttilts\ttilt_axis_angle\na\tm.csv\tt.mdoc\t\n")
    assert read_sheet(tmp_path / "sheet.tsv").loc["a", "tilt_axis_angle"] is None
