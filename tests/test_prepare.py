"""Marker import: validation with clear errors, dropped markers, weak views, the sheet."""

import logging

import mrcfile
import numpy as np
import pytest

from tiltflow import io
from tiltflow.io import InputError
from tiltflow.model import SeriesSpec
from tiltflow.prepare import prepare
from tiltflow.workflow.sheet import read_sheet, series_spec


def write_series(tmp_path, rows, n_views=5):
    markers = tmp_path / "m.csv"
    markers.write_text("marker,view,x,y\n" + "".join(f"{m},{v},{x},{y}\n" for m, v, x, y in rows))
    tilts = tmp_path / "t.rawtlt"
    tilts.write_text("".join(f"{t}\n" for t in np.linspace(-40, 40, n_views)))
    return SeriesSpec("s", str(markers), str(tilts), 0.0, width=100, height=100)


def grid(n_markers=4, n_views=5):
    return [(m + 1, v, 20 + 15 * m + v, 30 + 10 * m) for m in range(n_markers) for v in range(n_views)]


def test_good_series(tmp_path):
    p = prepare(write_series(tmp_path, grid()))
    assert p.series.obs.n_markers == 4 and p.series.n_views == 5
    assert p.series.centre_xy_px == (50.0, 50.0)
    assert p.weak_views == [] and p.empty_views == []


@pytest.mark.parametrize("row,message", [
    ((9, 5, 10, 10), r"m.csv: line 22: view 5 is outside the tilt list \(.*t.rawtlt has 5 views, expected 0..4\)"),
    ((1, 0, 11, 12), r"marker 1 has two points in view 0 \(line 2 and line 22\)"),
    ((9, 1, "nan", 10), r"line 22: coordinates .* are not finite"),
    ((9, 1, 150.5, 10), r"line 22: point \(150.50, 10.00\) lies outside the 100 x 100 image"),
])
def test_bad_points_are_named(tmp_path, row, message):
    with pytest.raises(InputError, match=message):
        prepare(write_series(tmp_path, grid() + [row]))


def test_few_observations_dropped_and_weak_views(tmp_path, caplog):
    rows = grid(4, 5)
    rows = [r for r in rows if not (r[0] >= 3 and r[1] == 4)]  # view 4: 2 markers
    rows += [(8, 0, 5, 5), (8, 1, 6, 5)]  # marker 8: 2 observations
    with caplog.at_level(logging.WARNING):
        p = prepare(write_series(tmp_path, rows))
    assert p.dropped_markers == {"8": 2}
    assert "marker 8 has 2 observation(s)" in caplog.text
    assert p.weak_views == [4]
    assert "view 4 has 2 marker(s)" in caplog.text


def test_excluded_views(tmp_path):
    spec = write_series(tmp_path, grid())
    p = prepare(SeriesSpec(**{**spec.__dict__, "exclude_views": (0, 2)}))
    assert p.excluded_views == [0, 2] and p.ignored_observations == 8
    assert not np.isin(p.series.obs.view_index, [0, 2]).any()
    with pytest.raises(InputError, match="exclude_views lists view 7; expected 0-based views 0..4"):
        prepare(SeriesSpec(**{**spec.__dict__, "exclude_views": (7,)}))


def test_image_size_required_without_stack(tmp_path):
    spec = write_series(tmp_path, grid())
    with pytest.raises(InputError, match="no stack, so width and height are required"):
        prepare(SeriesSpec(**{**spec.__dict__, "width": None, "height": None}))


def test_stack_gives_size_and_must_match_tilts(tmp_path):
    spec = write_series(tmp_path, grid())
    stack = tmp_path / "s.mrc"
    with mrcfile.new(stack) as mrc:
        mrc.set_data(np.zeros((5, 100, 120), dtype=np.float32))
        mrc.voxel_size = 2.5
    p = prepare(SeriesSpec(**{**spec.__dict__, "width": None, "height": None, "stack": str(stack)}))
    assert (p.series.width, p.series.height) == (120, 100) and p.pixel_size_angstrom == pytest.approx(2.5)
    with mrcfile.new(stack, overwrite=True) as mrc:
        mrc.set_data(np.zeros((4, 100, 120), dtype=np.float32))
    with pytest.raises(InputError, match="the stack has 4 views but .*t.rawtlt lists 5 tilt angles"):
        prepare(SeriesSpec(**{**spec.__dict__, "stack": str(stack)}))
    (tmp_path / "junk.mrc").write_bytes(b"not an mrc file at all")
    with pytest.raises(InputError, match="junk.mrc: not a readable MRC stack"):
        prepare(SeriesSpec(**{**spec.__dict__, "stack": str(tmp_path / "junk.mrc")}))


def test_prexg_count_checked(tmp_path):
    spec = write_series(tmp_path, grid())
    xf = tmp_path / "a.prexg"
    io.write_xf(xf, np.tile([1, 0, 0, 1, 0, 0], (4, 1)))
    with pytest.raises(InputError, match="has 4 transforms; expected one per view"):
        prepare(SeriesSpec(**{**spec.__dict__, "prexg": str(xf)}))


def test_sheet(tmp_path):
    p = tmp_path / "s.tsv"
    p.write_text("series\tmarkers\ttilts\ttilt_axis_angle\twidth\theight\texclude_views\n"
                 "a\tm.csv\tt.tlt\t-12.5\t512\t512\t0, 3\n")
    sheet = read_sheet(p)
    spec = series_spec(sheet.loc["a"].to_dict())
    assert spec.exclude_views == (0, 3) and spec.width == 512 and spec.stack is None and spec.tilt_offset_deg == 0
    p.write_text("series\tmarkers\ttilts\ttilt_axis_angle\nbad name\tm\tt\t0\n")
    with pytest.raises(InputError, match="line 2: series name 'bad name'"):
        read_sheet(p)
    p.write_text("series\tmarkers\ttilts\ttilt_axis_angle\na\tm\tt\tminus12\n")
    with pytest.raises(InputError, match=r"line 2 \(a\): tilt_axis_angle = 'minus12' is not a number"):
        read_sheet(p)
    p.write_text("series\tmarkers\ttilts\na\tm\tt\n")
    with pytest.raises(InputError, match="missing column"):
        read_sheet(p)
    p.write_text("series\tmarkers\ttilts\ttilt_axis_angle\na\tm\tt\t0\na\tm\tt\t0\n")
    with pytest.raises(InputError, match="appear more than once"):
        read_sheet(p)
