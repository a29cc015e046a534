"""The projection model: derivatives, IMOD transforms and their composition."""

import numpy as np
import pytest

from tiltflow import projection


def random_problem(rng, n_views=7, n_markers=5):
    views = np.column_stack([
        np.deg2rad(rng.uniform(-60, 60, n_views)),
        np.deg2rad(rng.uniform(-180, 180, n_views)),
        rng.uniform(0.95, 1.05, n_views),
        rng.uniform(-50, 50, (n_views, 2)),
    ])
    points = rng.uniform(-300, 300, (n_markers, 3))
    mi, vi = np.meshgrid(np.arange(n_markers), np.arange(n_views), indexing="ij")
    return views, points, mi.ravel(), vi.ravel()


def test_jacobian_matches_central_differences():
    rng = np.random.default_rng(0)
    views, points, mi, vi = random_problem(rng)
    c = (512.0, 400.0)
    pred, jv, jp = projection.project_with_jacobian(points, views, mi, vi, c)
    np.testing.assert_allclose(pred, projection.project(points, views, mi, vi, c))
    h = 1e-6
    for col in range(5):
        dv = np.zeros_like(views)
        dv[:, col] = h
        num = (projection.project(points, views + dv, mi, vi, c) - projection.project(points, views - dv, mi, vi, c)) / (2 * h)
        np.testing.assert_allclose(jv[:, :, col], num, atol=1e-5)
    for col in range(3):
        dp = np.zeros_like(points)
        dp[:, col] = h
        num = (projection.project(points + dp, views, mi, vi, c) - projection.project(points - dp, views, mi, vi, c)) / (2 * h)
        np.testing.assert_allclose(jp[:, :, col], num, atol=1e-6)


@pytest.mark.parametrize("dense", [True, False])
def test_jacobian_with_distortion_matches_central_differences_on_both_evaluation_paths(dense, monkeypatch):
    """All seven view parameters (stretch and skew non-zero) and x, y, z; the maps evaluated at every
    view-marker pair (dense) or observation by observation, in chunks smaller than the series."""
    if not dense:
        monkeypatch.setattr(projection, "DENSE_PAIRS_PER_OBSERVATION", 0)
        monkeypatch.setattr(projection, "GATHER_CHUNK", 7)
    rng = np.random.default_rng(3)
    views, points, mi, vi = random_problem(rng, n_views=9, n_markers=6)
    views = np.column_stack([views, rng.uniform(-0.03, 0.03, len(views)), np.deg2rad(rng.uniform(-2, 2, len(views)))])
    keep = rng.random(len(mi)) < 0.7  # not every marker in every view
    mi, vi = mi[keep], vi[keep]
    c = (300.0, 700.0)
    pred, jv, jp = projection.project_with_jacobian(points, views, mi, vi, c)
    # the prediction against the model's formula (module docstring)
    p, v = points[mi], views[vi]
    xm = v[:, 2] + v[:, 5]
    x1 = xm * np.cos(v[:, 6]) * p[:, 0]
    y1 = xm * np.sin(v[:, 6]) * p[:, 0] + v[:, 2] * p[:, 1]
    u = x1 * np.cos(v[:, 0]) + v[:, 2] * p[:, 2] * np.sin(v[:, 0])
    ca, sa = np.cos(v[:, 1]), np.sin(v[:, 1])
    expected = np.column_stack([ca * u - sa * y1 + v[:, 3] + c[0], sa * u + ca * y1 + v[:, 4] + c[1]])
    np.testing.assert_allclose(pred, expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(projection.project(points, views, mi, vi, c), expected, rtol=0, atol=1e-9)
    h = 1e-6
    for col in range(projection.N_VIEW):
        dv = np.zeros_like(views)
        dv[:, col] = h
        num = (projection.project(points, views + dv, mi, vi, c) - projection.project(points, views - dv, mi, vi, c)) / (2 * h)
        np.testing.assert_allclose(jv[:, :, col], num, atol=1e-5, err_msg=projection.VIEW_COLUMNS[col])
    for col in range(3):
        dp = np.zeros_like(points)
        dp[:, col] = h
        num = (projection.project(points + dp, views, mi, vi, c) - projection.project(points - dp, views, mi, vi, c)) / (2 * h)
        np.testing.assert_allclose(jp[:, :, col], num, atol=1e-6)


def test_zero_tilt_zero_rotation_is_identity_about_the_centre():
    views = np.array([[0.0, 0.0, 1.0, 3.0, -2.0]])
    pts = np.array([[10.0, 20.0, 99.0]])
    out = projection.project(pts, views, np.array([0]), np.array([0]), (100.0, 50.0))
    np.testing.assert_allclose(out, [[113.0, 68.0]])


def test_xf_maps_prediction_to_the_aligned_frame():
    """raw -> aligned with the .xf gives (u, v) + centre, tilt axis vertical."""
    rng = np.random.default_rng(1)
    views, points, mi, vi = random_problem(rng)
    c = np.array([256.0, 256.0])
    raw = projection.project(points, views, mi, vi, c)
    xf = projection.views_to_xf(views)
    aligned = projection.apply_xf(xf[vi], raw, c)
    th = views[vi, 0]
    u = points[mi, 0] * np.cos(th) + points[mi, 2] * np.sin(th)
    np.testing.assert_allclose(aligned - c, np.column_stack([u, points[mi, 1]]), atol=1e-9)


def test_xf_product_applies_first_then_second():
    rng = np.random.default_rng(2)
    a = np.column_stack([rng.normal(size=(4, 4)) * 0.1 + np.array([1, 0, 0, 1]), rng.normal(size=(4, 2)) * 10])
    b = np.column_stack([rng.normal(size=(4, 4)) * 0.1 + np.array([1, 0, 0, 1]), rng.normal(size=(4, 2)) * 10])
    pts = rng.uniform(0, 500, (4, 2))
    c = (250.0, 250.0)
    two_steps = projection.apply_xf(b, projection.apply_xf(a, pts, c), c)
    np.testing.assert_allclose(projection.apply_xf(projection.xf_product(a, b), pts, c), two_steps, atol=1e-9)


def test_xf_product_reproduces_imod_xfproduct():
    """IMOD's own BBa.xf is xfproduct(BBa.prexg, BBa.tltxf) (to its print precision)."""
    from conftest import realdata
    from tiltflow.io import read_xf

    d = realdata("imod-BB")
    prod = projection.xf_product(read_xf(d / "BBa.prexg"), read_xf(d / "BBa.tltxf"))
    ref = read_xf(d / "BBa.xf")
    np.testing.assert_allclose(prod[:, :4], ref[:, :4], atol=2e-6)
    np.testing.assert_allclose(prod[:, 4:], ref[:, 4:], atol=2e-3)


@pytest.mark.parametrize("angle", [0.0, 0.3, -2.0])
def test_rotation_matrix_is_counter_clockwise(angle):
    r = projection.rotation_matrix(angle)
    np.testing.assert_allclose(r @ [1.0, 0.0], [np.cos(angle), np.sin(angle)])
