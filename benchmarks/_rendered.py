"""The rendered test series the image benchmarks share (bench_coarse, bench_stackmatch).

61 views of ``size`` x ``size`` pixels, 30 beads seen in every view, a
specimen of blobs, thickness ``size / 6``, tilt axis 84 deg, shifts up to
+-100 px at 1024 (scaled with the size), dose 200, seed 1.
"""

from __future__ import annotations

import time

from tiltflow import simulate


def rendered_series(size, **spec_overrides):
    """Simulate and render the series.

    Parameters
    ----------
    size : int
        Image width and height in pixels.
    **spec_overrides
        Fields of :class:`tiltflow.simulate.SimulationSpec` to change.

    Returns
    -------
    spec : SimulationSpec
    sim : Simulation
    render : RenderSpec
    views : ndarray, shape (61, size, size)
        The rendered intensities.
    render_seconds : float
    """
    fields = dict(n_views=61, n_markers=30, n_full_tracks=30, width=size, height=size, thickness_px=size / 6,
                  tilt_axis_deg=84.0, shift_max_px=100.0 * size / 1024, seed=1)
    spec = simulate.SimulationSpec(**{**fields, **spec_overrides})
    sim = simulate.simulate(spec)
    render = simulate.RenderSpec(n_blobs=int(1500 * (size / 384) ** 2), dose=200, seed=1)
    t0 = time.perf_counter()
    views = simulate.render_stack(sim, spec.thickness_px, render)
    return spec, sim, render, views, time.perf_counter() - t0
