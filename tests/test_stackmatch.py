"""Marker-free alignment of simulated stacks (beads + specimen blobs, known shifts): coarse
cross-correlation, then projection matching; shift error after removing what no alignment can
determine (common offset, x0 cos + z0 sin across the axis)."""

import dataclasses

import numpy as np
import pytest

from tiltflow import coarse, simulate, stackmatch


RENDER = simulate.RenderSpec(n_blobs=1500, dose=200.0, seed=7)


def series(size=256, n_views=41, tilt_max=60.0, thickness=60.0, axis=-12.0, seed=7, shifts=None):
    spec = simulate.SimulationSpec(n_views=n_views, tilt_min_deg=-tilt_max, tilt_max_deg=tilt_max, n_markers=12,
                                   n_full_tracks=12, width=size, height=size, thickness_px=thickness,
                                   tilt_axis_deg=axis, shift_max_px=20.0, rotation_sd_deg=0.0, seed=seed)
    sim = simulate.simulate(spec)
    if shifts is not None:
        views = sim.views.copy()
        views[:, 3:] = shifts(np.random.default_rng(seed), sim)
        sim = dataclasses.replace(sim, views=views)
    stack = simulate.render_stack(sim, thickness, dataclasses.replace(RENDER, seed=seed))
    return sim, stack


def align(sim, stack, options=stackmatch.StackMatchOptions()):
    ref = int(np.argmin(np.abs(sim.nominal_tilt_deg)))
    true = sim.views[:, 3:] - sim.views[ref, 3:]
    tilt = sim.views[:, 0]
    axis = float(np.rad2deg(sim.views[:, 1]).mean())
    co = coarse.coarse_align(stack, sim.nominal_tilt_deg, sim.tilt_axis_deg + 2.0, ref)
    res = stackmatch.match_stack(stack, sim.nominal_tilt_deg, co.tilt_axis_deg, co.shifts_px, options)
    before = simulate.shift_error_px(co.shifts_px, true, tilt, axis)
    after = simulate.shift_error_px(res.shifts_px, true, tilt, axis)
    print(f"coarse {before:.3f} px RMS (axis {co.tilt_axis_deg:.2f}, truth {axis:.2f}) -> matched {after:.3f} px; "
          f"slab {res.thickness_px:.0f} px; NCC {np.nanmean(res.ncc_before):.3f} -> {np.nanmean(res.ncc_after):.3f}; "
          + ", ".join(f"bin {lv['binning']}: {lv['rounds']} rounds {lv['seconds']:.1f} s" for lv in res.levels))
    return before, after, res, co


def fidelity(sim, stack, thickness, res, co, seed=7):
    """Tomogram NCC with the truth, the image alignment (nominal tilts, the images' axis, matched
    shifts) against the true geometry (:func:`tiltflow.simulate.tomogram_fidelity`)."""
    views = np.zeros_like(sim.views)
    views[:, 0] = np.deg2rad(sim.nominal_tilt_deg)
    views[:, 1] = np.deg2rad(co.tilt_axis_deg)
    views[:, 2] = 1.0
    views[:, 3:] = res.shifts_px
    lin = -np.log(np.maximum(stack.astype(float), 1.0) / RENDER.dose)
    fid = simulate.tomogram_fidelity(sim, lin, views, thickness, dataclasses.replace(RENDER, seed=seed))
    print(f"tomogram NCC with the truth: true geometry {fid['ncc_true_geometry']:.4f}, "
          f"image alignment {fid['ncc']:.4f} (ratio {fid['ratio']:.4f})")
    return fid


def test_projection_matching_refines_the_coarse_shifts_of_a_drifting_series():
    # measured: coarse 0.424 px -> 0.188 px RMS (256 px, 41 views +-60, 60 px slab, drift up to 20 px);
    # tomogram NCC with the truth 0.7663 vs 0.7767 with the true geometry (ratio 0.987)
    sim, stack = series()
    before, after, res, co = align(sim, stack)
    assert after <= 0.5
    assert after < before
    assert res.converged
    assert np.nanmean(res.ncc_after) >= np.nanmean(res.ncc_before) - 1e-3
    assert [lv["binning"] for lv in res.levels] == [4, 2, 1]
    assert fidelity(sim, stack, 60.0, res, co)["ratio"] >= 0.95


def dose_symmetric_walk(rng, sim):
    """Drift as a random walk in dose-symmetric acquisition order (0, +, -, ++, --, ...): jumps in tilt order."""
    n = len(sim.nominal_tilt_deg)
    order = np.argsort(np.abs(sim.nominal_tilt_deg) + 1e-3 * (sim.nominal_tilt_deg < 0), kind="stable")
    walk = np.cumsum(rng.normal(0.0, 3.0, (n, 2)), axis=0)
    out = np.empty((n, 2))
    out[order] = walk - walk.mean(axis=0)
    return out


def independent_jumps(rng, sim):
    """Every view jumps independently by up to +-20 px."""
    return rng.uniform(-20.0, 20.0, (len(sim.nominal_tilt_deg), 2))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["thick", "dose_symmetric", "jumps"])
def test_marker_free_alignment_on_hard_stacks(case):
    kwargs = {"thick": {"thickness": 128.0},
              "dose_symmetric": {"shifts": dose_symmetric_walk},
              "jumps": {"shifts": independent_jumps}}[case]
    sim, stack = series(**kwargs)
    before, after, res, co = align(sim, stack)
    assert after <= 0.5, f"{case}: {after:.3f} px RMS (coarse {before:.3f})"
    assert fidelity(sim, stack, kwargs.get("thickness", 60.0), res, co)["ratio"] >= 0.95


@pytest.mark.slow
def test_haadf_like_series_with_few_views_and_one_offset_view():
    """Positive contrast rising with tilt, uint16 counts, 16 views over +-40, one view 12 px off."""
    def shifted(rng, sim):
        s = sim.views[:, 3:].copy()
        s[11] += (12.0, -5.0)
        return s

    sim, bright = series(n_views=16, tilt_max=40.0, shifts=shifted)
    haadf = np.clip(np.round(60000.0 - 250.0 * bright), 0, 65535).astype(np.uint16)
    before, after, res, co = align(sim, haadf)
    assert after <= 0.5, f"HAADF: {after:.3f} px RMS (coarse {before:.3f})"
    # the tomogram from the bright-field line integrals with the HAADF series' alignment
    assert fidelity(sim, bright, 60.0, res, co)["ratio"] >= 0.95


def test_too_few_views_and_too_small_views_are_refused():
    with pytest.raises(ValueError, match="needs at least 5 usable views, got 4"):
        stackmatch.match_stack(np.zeros((4, 64, 64)), [0, 10, 20, 30], 0.0, np.zeros((4, 2)), name="s")
    with pytest.raises(ValueError, match="too small for projection matching"):
        stackmatch.level_binnings((40, 40), stackmatch.StackMatchOptions(binnings=(2,)))
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"^s: views of 24 x 24 px are too small for projection matching"):
        stackmatch.match_stack(rng.normal(size=(5, 24, 24)), [-20, -10, 0, 10, 20], 0.0, np.zeros((5, 2)), name="s")


def test_bad_matching_options_are_refused_naming_the_parameter():
    from tiltflow.options import MatchingOptions

    with pytest.raises(ValueError, match="reconstruction must be wbp, sirt or tv; got 'art'"):
        MatchingOptions(reconstruction="art")
    with pytest.raises(ValueError, match=r"thickness_px must be >= 0 \(0: measured\), got -1"):
        MatchingOptions(thickness_px=-1)
