"""Weighted back-projection: compiled vs numpy, slabs, fidelity against the truth, bead positions."""

import json
import time

import mrcfile
import numpy as np
import pytest
from conftest import run_steps, series_from_sim

from tiltflow import align, io, projection, reconstruct, simulate, surfaces
from tiltflow.workflow import steps
from tiltflow.io.mrc import write_stack

SPEC = simulate.SimulationSpec(n_views=41, n_markers=16, n_full_tracks=16, width=256, height=256, thickness_px=50.0,
                               tilt_axis_deg=-6.0, shift_max_px=20.0, noise_px=0.3, mag_drift=0.01,
                               tilt_jitter_deg=0.2, seed=5)
RENDER = simulate.RenderSpec(n_blobs=900, dose=500.0, seed=5)


@pytest.fixture(scope="module")
def scene():
    sim = simulate.simulate(SPEC)
    views = simulate.render_stack(sim, SPEC.thickness_px, RENDER)
    line_integrals = -np.log(np.maximum(views, 1.0) / RENDER.dose)
    return sim, views, line_integrals


def ncc(a, b):
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_compiled_and_numpy_paths_agree_and_slabs_do_not_matter(scene):
    sim, _, lin = scene
    xf = projection.views_to_xf(sim.views)
    tilt = np.rad2deg(sim.views[:, 0])
    small = lin[:, 64:192, 64:192].copy()  # a 128 x 128 field keeps the numpy path quick
    opts = reconstruct.ReconOptions(thickness_px=40, binning=1, slab_rows=128)
    a, stats = reconstruct.reconstruct(small, xf, tilt, opts)
    b, _ = reconstruct.reconstruct(small, xf, tilt, opts, kernel="numpy")
    c, _ = reconstruct.reconstruct(small, xf, tilt, reconstruct.ReconOptions(thickness_px=40, binning=1, slab_rows=7))
    scale = np.abs(a).max()
    assert np.abs(a - b).max() <= 1e-5 * scale
    assert np.abs(a - c).max() <= 1e-6 * scale
    assert stats["voxels"] == 40 * 128 * 128 and stats["views"] == 41


@pytest.mark.parametrize("axis_deg", [-95.0, -6.0, 45.0, 170.0])
def test_kernel_matches_its_numpy_twin_for_any_axis_direction(axis_deg):
    """Line steps of either sign in x and y, tilts to 70 degrees, a z offset, binning 2."""
    rng = np.random.default_rng(3)
    n = 15
    tilt = np.linspace(-70, 70, n)
    a = np.deg2rad(axis_deg)
    xf = np.tile([np.cos(a), -np.sin(a), np.sin(a), np.cos(a), 0.0, 0.0], (n, 1))
    xf[:, :4] *= rng.uniform(0.97, 1.03, (n, 1))
    xf[:, 4:] = rng.normal(0, 5, (n, 2))
    views = rng.normal(size=(n, 90, 110)).astype(np.float32)
    opts = reconstruct.ReconOptions(thickness_px=48, binning=2, z_offset_px=6.0, slab_rows=13, oversampling=8)
    a, _ = reconstruct.reconstruct(views, xf, tilt, opts)
    b, _ = reconstruct.reconstruct(views, xf, tilt, opts, kernel="numpy")
    exact, _ = reconstruct.reconstruct(views, xf, tilt, opts, kernel="exact")
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()
    assert ncc(a, exact) > 0.99


def test_line_tables_round_positions_by_at_most_half_a_table_step(scene):
    """Against exact per-voxel positions: the difference shrinks as 1 / oversampling and stays small."""
    sim, _, lin = scene
    xf = projection.views_to_xf(sim.views)
    tilt = np.rad2deg(sim.views[:, 0])
    small = lin[:, 64:192, 64:192].copy()
    exact, _ = reconstruct.reconstruct(small, xf, tilt, reconstruct.ReconOptions(thickness_px=40, binning=1), kernel="exact")
    rel = {}
    for q in (4, 16, 64):
        v, _ = reconstruct.reconstruct(small, xf, tilt, reconstruct.ReconOptions(thickness_px=40, binning=1, oversampling=q))
        rel[q] = float(np.sqrt(np.mean((v - exact) ** 2)) / exact.std())
    print("RMS difference from exact positions / tomogram SD:", rel)
    assert rel[16] < 0.03
    # rounding error ~ 1 / oversampling: each 4x finer table cuts it 3-5x
    assert 3.0 < rel[4] / rel[16] < 5.0 and 3.0 < rel[16] / rel[64] < 5.0
    assert ncc(exact, v) > 0.9999  # v: oversampling 64


def test_line_tables_layout_and_checks():
    """Every plane's run of entries fits the table; a geometry that is not a tilt about y is refused."""
    opts = reconstruct.ReconOptions(thickness_px=60, binning=1, oversampling=8)
    tilt = np.array([-70.0, -20.0, 0.0, 35.0, 65.0])
    xf = np.tile([0.98, 0.17, -0.17, 0.98, 4.0, -3.0], (5, 1))
    grid = reconstruct.grid_matrix((100, 120), opts)
    mats = reconstruct.view_matrices(xf, tilt, (100, 120), grid, 1)
    t = reconstruct.line_tables(mats, 60, 120, 8)
    np.testing.assert_allclose(t.ratio, np.tan(np.deg2rad(tilt)), rtol=1e-12, atol=1e-12)
    step = np.hypot(mats[:, 0, 0], mats[:, 1, 0])
    assert np.all(t.phases >= 8 * step) and np.all(t.phases < 8 * step + 1)
    # plane k's entries, mapped back to s, are within half a table step of ratio * k
    s = t.s_min[:, None] + t.offsets / t.phases[:, None]
    assert np.abs(s - t.ratio[:, None] * np.arange(60)).max() <= 0.5 / t.phases.min() + 1e-12
    assert np.all((t.offsets // t.phases[:, None]).max(axis=1) + 120 <= t.span)
    bent = mats.copy()
    bent[2, 1, 2] += 0.1
    with pytest.raises(ValueError, match="view 2: voxel x and z steps are not parallel"):
        reconstruct.line_tables(bent, 60, 120, 8)
    edge_on = reconstruct.view_matrices(xf[:2], np.array([0.0, 89.99]), (100, 120), grid, 1)
    with pytest.raises(ValueError, match="view 1: the voxel x step projects to .* too close to 90 degrees"):
        reconstruct.line_tables(edge_on, 60, 120, 8)
    with pytest.raises(ValueError, match="oversampling"):
        reconstruct.ReconOptions(oversampling=0)


def test_fidelity_with_the_solved_alignment_matches_the_true_geometry(scene):
    """NCC with the truth volume: solved alignment >= 0.95 of the true geometry's."""
    sim, _, lin = scene
    opts = reconstruct.ReconOptions(thickness_px=80, binning=2)
    shape = reconstruct.volume_shape((256, 256), opts)
    grid_truth = reconstruct.grid_matrix((256, 256), opts)
    centres, sigma, density = simulate.specimen(sim, SPEC.thickness_px, RENDER)
    truth = simulate.render_volume(centres, sigma, density, grid_truth, shape)
    ideal, _ = reconstruct.reconstruct(lin, projection.views_to_xf(sim.views), np.rad2deg(sim.views[:, 0]), opts)
    # the marker solution, in its own output frame
    series = series_from_sim(sim, tilt_axis_deg=-5.0)
    state = align.align(series)
    views, points = align.output_frame(series, state.views, state.points_xyz_px)
    # the solved frame differs from the truth's by a similarity (the gauge): fit it on the markers
    p, q = sim.points_xyz_px, points
    pc, qc = p - p.mean(0), q - q.mean(0)
    u, s, vt = np.linalg.svd(qc.T @ pc)
    rot = u @ np.diag([1, 1, np.sign(np.linalg.det(u @ vt))]) @ vt
    scale = s.sum() / (pc**2).sum()
    t = q.mean(0) - scale * rot @ p.mean(0)
    # the truth as it lies in the solved frame, on the same voxel grid as the reconstruction
    truth_solved = simulate.render_volume(centres @ (scale * rot).T + t, sigma * scale, density * scale,
                                          grid_truth, shape)
    solved, _ = reconstruct.reconstruct(lin, projection.views_to_xf(views), np.rad2deg(views[:, 0]), opts)
    r_ideal, r_solved = ncc(ideal, truth), ncc(solved, truth_solved)
    print(f"NCC with truth: true geometry {r_ideal:.4f}, solved alignment {r_solved:.4f} "
          f"(ratio {r_solved / r_ideal:.4f})")
    assert r_ideal > 0.5
    assert r_solved >= 0.95 * r_ideal


def test_beads_sit_at_the_xyz_positions(scene, tmp_path, monkeypatch):
    """Through the workflow's steps: tomogram.mrc beads within 1 voxel of {series}.xyz."""
    warm_up = reconstruct._warm_up

    def slow_warm_up(kernel):  # JIT compilation that takes at least 1 s
        t0 = time.perf_counter()
        warm_up(kernel)
        time.sleep(1.0)
        return time.perf_counter() - t0

    monkeypatch.setattr(reconstruct, "_warm_up", slow_warm_up)
    sim, views, _ = scene
    out = align_rendered(tmp_path, sim, views)
    prepared = out["prepared"]
    b = 2
    steps.reconstruct_tomogram(prepared, out["xf"], out["tlt"], {"reconstruct": {"thickness": 100, "binning": b}},
                               tmp_path / "tomogram.mrc", tmp_path / "tomogram.json", threads=2)
    with mrcfile.open(tmp_path / "tomogram.mrc") as m:
        vol = m.data.copy()
        assert float(m.voxel_size.x) == pytest.approx(14.0)
    assert vol.shape == (50, 128, 128)
    stats = json.loads((tmp_path / "tomogram.json").read_text())
    assert stats["voxels"] == vol.size and stats["views"] == 41 and stats["seconds"] > 0
    # compilation is reported apart and not counted as back-projection time (which takes ~0.05 s here)
    assert stats["compile_seconds"] >= 1.0 and stats["seconds"] < 1.0 and stats["oversampling"] == 16
    assert stats["updates_per_second"] == pytest.approx(stats["voxels"] * stats["views"] / stats["seconds"])
    _, xyz = io.read_xyz(out["xyz"])
    errors = bead_errors(vol, xyz, b)
    print(f"bead position error (voxels): max {errors.max(axis=0)}, mean {errors.mean(axis=0)}")
    assert np.all(errors <= 1.0)
    assert stats["kernel"] == "numba" and stats["placement"] is None


def align_rendered(folder, sim, views):
    """Markers, raw tilts and the rendered stack written to ``folder`` and aligned through the
    workflow's steps (:func:`conftest.run_steps`); returns its output paths."""
    io.write_markers_csv(folder / "m.csv", sim.marker + 1, sim.view, sim.xy_px)
    (folder / "t.rawtlt").write_text("".join(f"{t:.2f}\n" for t in sim.nominal_tilt_deg))
    write_stack(folder / "s.mrc", np.round(views).astype(np.int16), pixel_size_angstrom=7.0)
    row = {"series": "s", "markers": str(folder / "m.csv"), "tilts": str(folder / "t.rawtlt"),
           "tilt_axis_angle": -5.0, "stack": str(folder / "s.mrc"), "width": None, "height": None}
    return run_steps(folder, row, "s")


def bead_errors(vol, xyz_image_px, b):
    """|found - expected| voxel index (z, y, x) of the dark bead nearest each expected position
    ``(x, y, z)``: x, y in image pixels (origin at the corner), z from the volume's middle."""
    nz = vol.shape[0]
    errors = []
    for x, y, z in xyz_image_px:
        # expected voxel (index coordinates, centres at integers)
        e = np.array([z / b + nz / 2 - 0.5, y / b - 0.5, x / b - 0.5])
        lo = np.maximum(np.round(e).astype(int) - 3, 0)
        hi = np.minimum(np.round(e).astype(int) + 4, vol.shape)
        box = vol[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        k = np.array(np.unravel_index(np.argmin(box), box.shape)) + lo  # beads are dark
        # sub-voxel: centroid of the darkest 3x3x3 around the minimum
        sl = tuple(slice(max(0, c - 1), c + 2) for c in k)
        w = np.clip(vol[sl].max() - vol[sl], 0, None)
        grid = np.indices(w.shape).reshape(3, -1).T + [s.start for s in sl]
        found = (grid * w.reshape(-1, 1)).sum(0) / w.sum()
        errors.append(np.abs(found - e))
    return np.array(errors)


def test_section_placement_levels_a_tilted_section():
    """Markers on two planes tilted about y and x: the placement from their surface fit puts each
    plane at one tomogram z, the section's middle at z = 0, and is a rotation."""
    rng = np.random.default_rng(3)
    slope_x, slope_y, middle, thickness = 0.14, -0.06, 17.0, 80.0
    xy = rng.uniform(-400, 400, (60, 2))
    side = np.where(np.arange(60) % 2, 0.5, -0.5)
    z = middle + side * thickness + slope_x * xy[:, 0] + slope_y * xy[:, 1] + rng.normal(0, 0.3, 60)
    points = np.column_stack([xy, z])
    fit = surfaces.fit_surfaces(points)
    assert fit.n_surfaces == 2
    placement = reconstruct.section_placement(fit.slope_x, fit.slope_y, fit.z_shift_px)
    r = placement.matrix[:, :3]
    np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)
    assert placement.tilt_offset_deg == pytest.approx(-np.degrees(np.arctan(slope_x)), abs=0.05)
    assert placement.x_axis_tilt_deg == pytest.approx(-np.degrees(np.arctan(slope_y)), abs=0.05)
    tomo = placement.to_tomogram(points)
    # each surface level (its spread is the noise), the two symmetric about z = 0, thickness along the normal
    for s in (-0.5, 0.5):
        assert np.std(tomo[side == s, 2]) < 0.5
    top, bottom = np.mean(tomo[side == 0.5, 2]), np.mean(tomo[side == -0.5, 2])
    assert (top + bottom) / 2 == pytest.approx(0.0, abs=0.2)
    assert top - bottom == pytest.approx(thickness / np.sqrt(1 + slope_x**2 + slope_y**2), abs=0.3)
    assert np.std(points[side == 0.5, 2]) > 20  # unflattened, the surface spreads over z
    # the grid maps a voxel's tomogram coordinates through the placement; z_offset moves along the normal
    opts = reconstruct.ReconOptions(thickness_px=40, binning=2, z_offset_px=6.0)
    g0 = reconstruct.grid_matrix((128, 128), opts)
    g = reconstruct.grid_matrix((128, 128), opts, placement.matrix)
    v = np.array([10.0, 30.0, 5.0, 1.0])
    np.testing.assert_allclose(g @ v, r @ (g0 @ v) + placement.matrix[:, 3])
    np.testing.assert_allclose(placement.to_tomogram((g @ v)[None])[0], g0 @ v, atol=1e-9)


def test_voxel_kernel_is_the_exact_sampling():
    """Geometries off the line tables (x and z steps not parallel): the compiled per-voxel kernel
    equals the exact numpy reference, and reconstruct() switches to it."""
    from tiltflow._image_kernels import backproject_voxels

    rng = np.random.default_rng(0)
    views = rng.normal(size=(3, 23, 27)).astype(np.float32)
    mats = np.zeros((3, 2, 4))
    for j in range(3):
        mats[j] = [[0.9, 0.05, 0.3, 2.0 + j], [0.02, 1.0, 0.15 * (j - 1), 1.5]]
    assert not reconstruct.on_lines(mats).any()
    weights = np.array([0.5, 1.0, 0.7])
    a = np.zeros((12, 9, 20), dtype=np.float32)
    e = np.zeros_like(a)
    backproject_voxels(views, mats, weights, a)
    reconstruct.backproject_exact(views, mats, weights, e)
    np.testing.assert_allclose(a, e, atol=2e-5)
    with pytest.raises(ValueError, match="not parallel"):
        reconstruct.line_tables(mats, 12, 20, 4)
    # an alignment with skew (.zfac y factors): reconstruct() takes the per-voxel kernel, equal to "exact"
    tilt = np.linspace(-50, 50, 5)
    xf = np.tile([1.0, 0.0, 0.0, 1.0, 0.0, 0.0], (5, 1))
    zfac = np.column_stack([0.01 * np.sin(np.deg2rad(tilt)), -np.tan(np.deg2rad(0.5)) * np.tan(np.deg2rad(tilt))])
    stack = rng.normal(size=(5, 32, 32)).astype(np.float32)
    opts = reconstruct.ReconOptions(thickness_px=16, binning=1)
    fast, stats = reconstruct.reconstruct(stack, xf, tilt, opts, zfac=zfac)
    exact, _ = reconstruct.reconstruct(stack, xf, tilt, opts, zfac=zfac, kernel="exact")
    assert stats["kernel"] == "voxels"
    np.testing.assert_allclose(fast, exact, atol=1e-4 * np.abs(exact).max())


def test_flattened_tomogram_holds_the_section_level(tmp_path):
    """A specimen tilted by 7 deg about the tilt axis (all tilts off by 7 deg; the alignment cannot see
    a tilt offset, so its section is tilted): with reconstruct.flatten the beads sit at the placement's
    tomogram coordinates of the .xyz, each surface at one z, and tomogram.json says what was applied."""
    spec = simulate.SimulationSpec(n_views=31, n_markers=14, n_full_tracks=14, width=192, height=192,
                                   thickness_px=40.0, tilt_axis_deg=-6.0, shift_max_px=10.0, noise_px=0.2,
                                   tilt_offset_deg=7.0, seed=11)
    sim = simulate.simulate(spec)
    views = simulate.render_stack(sim, spec.thickness_px, simulate.RenderSpec(n_blobs=500, dose=500.0, seed=11))
    out = align_rendered(tmp_path, sim, views)
    summary = json.loads(out["summary"].read_text())
    assert summary["surfaces"]["tilt_offset_deg"] == pytest.approx(7.0, abs=1.0)  # IMOD: add to every tilt
    b = 2
    params = {"reconstruct": {"thickness": 60, "binning": b, "flatten": True}}
    steps.reconstruct_tomogram(out["prepared"], out["xf"], out["tlt"], params, tmp_path / "flat.mrc",
                               tmp_path / "flat.json", threads=2, zfac_path=out["zfac"], summary_path=out["summary"])
    stats = json.loads((tmp_path / "flat.json").read_text())
    assert stats["kernel"] == "voxels"
    placement = stats["placement"]
    assert placement["tilt_offset_deg"] == pytest.approx(summary["surfaces"]["tilt_offset_deg"])
    assert placement["x_axis_tilt_deg"] == pytest.approx(summary["surfaces"]["x_axis_tilt_deg"])
    with mrcfile.open(tmp_path / "flat.mrc") as m:
        vol = m.data.copy()
    _, xyz = io.read_xyz(out["xyz"])
    centre = np.array([spec.width / 2, spec.height / 2, 0.0])
    tomo = reconstruct.Placement(np.array(placement["matrix"]), 0, 0, 0).to_tomogram(xyz - centre) + centre
    errors = bead_errors(vol, tomo, b)
    print(f"flattened bead position error (voxels): max {errors.max(axis=0)}, mean {errors.mean(axis=0)}")
    assert np.all(errors <= 1.0)
    # level: each surface's beads at one tomogram z (their spread is the simulation's), unlike the frame's z
    top = tomo[:, 2] > 0
    spread = max(np.std(tomo[top, 2]), np.std(tomo[~top, 2]))
    frame_spread = max(np.std(xyz[xyz[:, 2] > xyz[:, 2].mean(), 2]), np.std(xyz[xyz[:, 2] <= xyz[:, 2].mean(), 2]))
    print(f"surface z spread: flattened {spread:.2f} px, unflattened {frame_spread:.2f} px")
    assert spread < 0.6 * frame_spread
    # without markers' surfaces nothing is flattened (warned), never an error
    assert steps.tomogram_placement(reconstruct.ReconOptions(flatten=True), None) is None
