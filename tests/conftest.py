"""Shared fixtures: the real-data folder and small simulated series."""

import os
from pathlib import Path

import numpy as np
import pytest

from tiltflow import model, simulate
from tiltflow.model import Observations

REPO = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("TILTFLOW_REALDATA", REPO.parent / "shared" / "realdata"))


def realdata(*parts):
    """Path under ../shared/realdata, or skip the test when it is absent (a user's fresh clone)."""
    p = REALDATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not available: {p}")
    return p


def series_from_sim(sim, weight=None, tilt_axis_deg=None):
    """A :class:`tiltflow.model.Series` built straight from a simulation."""
    n = len(sim.marker)
    n_m = int(sim.points_xyz_px.shape[0])
    n_v = len(sim.nominal_tilt_deg)
    obs = Observations(
        sim.marker, sim.view, sim.xy_px, np.ones(n) if weight is None else weight, n_m, n_v, sim.centre_xy_px
    )
    return model.Series(
        obs, np.arange(1, n_m + 1).astype(str), sim.nominal_tilt_deg,
        sim.tilt_axis_deg if tilt_axis_deg is None else tilt_axis_deg,
        sim.width, sim.height, np.zeros(n_v, dtype=bool),
    )


@pytest.fixture(scope="session")
def small_sim():
    spec = simulate.SimulationSpec(
        n_views=41, tilt_min_deg=-60, tilt_max_deg=60, n_markers=14, n_full_tracks=5,
        width=1024, height=1024, noise_px=0.4, mag_drift=0.01, tilt_jitter_deg=0.15, seed=11,
    )
    return simulate.simulate(spec)


def marker_row(folder, sim, series="s"):
    """Write ``sim``'s markers (``m.csv``) and nominal tilts (``t.rawtlt``) into ``folder``; return the
    sheet row of a markers-only series that uses them."""
    from tiltflow import io

    folder = Path(folder)
    io.write_markers_csv(folder / "m.csv", sim.marker + 1, sim.view, sim.xy_px)
    io.write_tlt(folder / "t.rawtlt", sim.nominal_tilt_deg, "8.2f")
    return {"series": series, "markers": str(folder / "m.csv"), "tilts": str(folder / "t.rawtlt"),
            "tilt_axis_angle": sim.tilt_axis_deg, "stack": "", "width": sim.width, "height": sim.height,
            "prexg": "", "exclude_views": "", "tilt_offset": 0.0, "pixel_size": None}


def run_steps(folder, row, tag="run", config=None):
    """The workflow's alignment rules, called directly in order (what Snakemake runs).

    Returns the output paths (``xf``, ``tlt``, ``xyz``, ``fiducials``,
    ``summary``, ``resid``, ``solution``, ``zfac``, ``xtilt``, ``coarse_xf``, ``prepared``).
    """
    from tiltflow.stages import STAGE_NAMES
    from tiltflow.workflow import config as wconfig
    from tiltflow.workflow import steps

    config = config or {"align": {}, "coarse": {}, "robust": False}
    folder = Path(folder)
    prepared = folder / f"{tag}.prepared.json"
    steps.import_markers(row, prepared)
    coarse_state = folder / f"{tag}.coarse.json"
    names = ("xf", "tlt", "xyz", "fiducials", "summary", "resid", "solution", "zfac", "xtilt")
    out = {k: folder / f"{tag}.{k}" for k in names}
    out["coarse_xf"] = folder / f"{tag}.coarse.xf"
    steps.align_coarse(prepared, wconfig.coarse_params(config, bool(row.get("stack"))), coarse_state, out["coarse_xf"])
    state = coarse_state
    for stage in STAGE_NAMES:
        nxt = folder / f"{tag}.{stage}.json"
        start = wconfig.distortion_start_stage(stage, config)
        steps.align_stage(stage, prepared, state, wconfig.stage_params(stage, config), nxt,
                          start_path=folder / f"{tag}.{start}.json" if start else None)
        state = nxt
    steps.write_alignment(prepared, state, wconfig.write_params(config, bool(row.get("stack"))), row["series"],
                          {k: out[k] for k in names},
                          coarse_state)
    out["prepared"] = prepared
    return out
