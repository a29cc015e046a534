"""File formats: IMOD binary models, model2point text, CSV, tilt and transform files."""

import numpy as np
import pytest
from conftest import realdata

from tiltflow import io
from tiltflow.io import InputError

# (points, objects with their contour counts) from ../shared/realdata/imodmodel-tests/README.txt
IMODMODEL_EXPECTED = {
    "meshed_contour_example.mod": (286, [67]),
    "meshed_curvature_example.mod": (1176, [11, 11]),
    "multiple_objects_example.mod": (6, [0, 1, 1]),
    "point_sizes_example.mod": (18, [1, 3, 1]),
    "points.mod": (3, [1]),
    "slicer_angle_example.mod": (4, [4]),
    "two_contour_example.mod": (25, [2]),
}


@pytest.mark.parametrize("name", sorted(IMODMODEL_EXPECTED))
def test_reads_every_imod_written_model(name):
    """Meshes, sizes, slicer angles and empty objects are skipped correctly."""
    model = io.read_imod_model(realdata("imodmodel-tests", name))
    n_points, contours = IMODMODEL_EXPECTED[name]
    assert [len(o.contours) for o in model.objects] == contours
    assert sum(len(c) for o in model.objects for c in o.contours) == n_points


def test_points_mod_matches_its_text():
    model = io.read_imod_model(realdata("imodmodel-tests", "points.mod"))
    expected = np.loadtxt(realdata("imodmodel-tests", "points.txt")).reshape(-1, 3)
    np.testing.assert_allclose(model.objects[0].contours[0], expected)


def test_reads_bba_fiducial_model():
    path = realdata("imod-BB", "BBa.fid")
    model = io.read_imod_model(path)
    assert model.size_xyz == (512, 512, 61)
    assert len(model.objects) == 1 and len(model.objects[0].contours) == 25
    table = io.read_markers(path)
    assert len(table) == 1525
    assert set(table.view.tolist()) == set(range(61))
    assert table.marker[0] == "1" and table.marker[-1] == "25"
    # the .resid lists the same points, in the same order
    resid = np.loadtxt(realdata("imod-BB", "BBa.resid"), skiprows=1)
    np.testing.assert_allclose(table.xy_px, resid[:, :2], atol=0.006)
    np.testing.assert_array_equal(table.view, resid[:, 2].astype(int))


def test_non_fiducial_model_is_refused():
    with pytest.raises(InputError, match=r"z = .* is not a view index"):
        io.read_markers(realdata("imodmodel-tests", "meshed_contour_example.mod"))


def test_model_round_trip_and_truncation(tmp_path):
    contours = [np.array([[10.5, 20.25, 0.0], [11.0, 21.0, 1.0], [12.0, 22.0, 2.0]]),
                np.array([[100.0, 50.0, 1.0], [101.0, 51.0, 2.0]])]
    path = tmp_path / "m.fid"
    io.write_imod_model(path, contours, (512, 512, 3))
    table = io.read_markers(path)
    assert table.marker.tolist() == ["1", "1", "1", "2", "2"]
    assert table.view.tolist() == [0, 1, 2, 1, 2]
    np.testing.assert_allclose(table.xy_px[:3], contours[0][:, :2])
    data = path.read_bytes()
    cut = tmp_path / "cut.fid"
    cut.write_bytes(data[: len(data) - 20])
    with pytest.raises(InputError, match="truncated"):
        io.read_markers(cut)
    bad = tmp_path / "bad.fid"
    bad.write_bytes(b"IMODV1.2" + b"\0" * 50)
    with pytest.raises(InputError, match="bad.fid: truncated model header"):
        io.read_markers(bad)


def test_point_text_with_and_without_object(tmp_path):
    ids, views = np.array([3, 3, 3, 7]), np.array([0, 1, 2, 1])
    xy = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    for with_object in (False, True):
        p = tmp_path / f"p{with_object}.txt"
        io.write_point_text(p, ids, views, xy, with_object=with_object)
        t = io.read_markers(p)
        assert t.marker.tolist() == ["3", "3", "3", "7"]
        np.testing.assert_array_equal(t.view, views)
        np.testing.assert_allclose(t.xy_px, xy)
    p = tmp_path / "two_objects.txt"
    p.write_text("1 1 10 10 0\n1 1 11 11 1\n2 1 20 20 0\n")
    assert io.read_markers(p).marker.tolist() == ["1", "1", "2"]  # contours counted across objects
    p.write_text("10 10 0\n11 11 1\n")
    with pytest.raises(InputError, match="no contour numbers"):
        io.read_markers(p)
    p.write_text("1 10 10 0\n1 11 11 1.5\n")
    with pytest.raises(InputError, match=r"line 2: z = 1.5 is not a view index"):
        io.read_markers(p)
    p.write_text("1 10 10 0\n1 11 11\n")
    with pytest.raises(InputError, match="line 2: expected 4 columns"):
        io.read_markers(p)


def test_csv_reading_and_errors(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("marker,view,x,y\nA,0,1.5,2.5\nA,1,2,3\n")
    t = io.read_markers(p)
    assert t.marker.tolist() == ["A", "A"] and t.view.tolist() == [0, 1]
    p.write_text("id,view,x,y\n1,0,1,2\n")
    with pytest.raises(InputError, match="missing marker"):
        io.read_markers(p)
    p.write_text("marker,view,x,y\n1,0,1,2\n1,1,abc,2\n")
    with pytest.raises(InputError, match=r"m.csv: line 3: x = 'abc' is not a number"):
        io.read_markers(p)
    p.write_text("marker,view,x,y\n1,0.5,1,2\n")
    with pytest.raises(InputError, match="line 2: view = '0.5' is not an integer"):
        io.read_markers(p)
    p.write_text("marker,view,x,y\n")
    with pytest.raises(InputError, match="no marker points after the header"):
        io.read_markers(p)
    p.write_text("")
    with pytest.raises(InputError, match="empty"):
        io.read_markers(p)
    with pytest.raises(InputError, match="not found"):
        io.read_markers(tmp_path / "missing.csv")


def test_tilt_file(tmp_path):
    p = tmp_path / "t.rawtlt"
    p.write_text(" -60.0\n0\n\n 60.00\n")
    np.testing.assert_allclose(io.read_tilts(p), [-60, 0, 60])
    p.write_text("-60\nx\n")
    with pytest.raises(InputError, match="line 2: 'x' is not a tilt angle"):
        io.read_tilts(p)
    p.write_text("-60 1\n")
    with pytest.raises(InputError, match="line 1: expected one tilt angle per line"):
        io.read_tilts(p)
    p.write_text("\n\n")
    with pytest.raises(InputError, match="empty"):
        io.read_tilts(p)
    np.testing.assert_allclose(io.read_tilts(realdata("imod-BB", "BBa.rawtlt"))[[0, -1]], [65, -55])


def test_xf_round_trip(tmp_path):
    xf = np.array([[0.99, -0.1, 0.1, 0.99, 12.3456, -7.5], [1, 0, 0, 1, 0, 0]])
    p = tmp_path / "a.xf"
    io.write_xf(p, xf)
    np.testing.assert_allclose(io.read_xf(p, 2), xf, atol=1e-4)
    with pytest.raises(InputError, match="expected one per view"):
        io.read_xf(p, 3)
    p.write_text("1 0 0 1 0\n")
    with pytest.raises(InputError, match="line 1: expected 6 numbers"):
        io.read_xf(p)


def test_tables_round_trip_without_pandas(tmp_path):
    """TSV writer/reader of the outputs: pandas' format (empty cells for NaN/None, ints as ints),
    text columns kept as text, unequal columns refused."""
    from tiltflow.io.tables import read_table, write_table
    from tiltflow.model import Table

    path = tmp_path / "t.tsv"
    write_table(path, Table({"marker": np.array(["7", "12"]), "view": np.array([0, 3]),
                             "x": np.array([1.25, np.nan]), "note": ["a\tb", None]}), float_format="%.3f")
    assert path.read_text() == "marker\tview\tx\tnote\n7\t0\t1.250\ta b\n12\t3\t\t\n"
    t = read_table(path, text_columns=("marker",))
    assert t.columns == ["marker", "view", "x", "note"] and t.n_rows == 2
    assert t["marker"].tolist() == ["7", "12"] and t["view"].tolist() == [0.0, 3.0]
    assert np.isnan(t["x"][1]) and t["note"].tolist() == ["a b", ""]
    assert t.rows(t["view"] > 1)["marker"].tolist() == ["12"]
    with pytest.raises(ValueError, match="columns of different lengths: a=2, b=1"):
        write_table(tmp_path / "bad.tsv", {"a": [1, 2], "b": [3]})
    (tmp_path / "ragged.tsv").write_text("a\tb\n1\t2\n3\n")
    with pytest.raises(ValueError, match="ragged.tsv: line 3 has 1 cells, the header has 2"):
        read_table(tmp_path / "ragged.tsv")
