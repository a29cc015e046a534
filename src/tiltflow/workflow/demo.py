"""Rules ``simulate_demo`` and ``simulate_demo_stack``: the bundled demo series, generated
deterministically (no download) with known truth."""

from __future__ import annotations

import logging

from .. import io
from ..io.tables import write_json

log = logging.getLogger(__name__)


def simulate_demo(name, out):
    """Rule ``simulate_demo``: write one demo series in every marker format.

    Parameters
    ----------
    name : str
        A key of :data:`tiltflow.simulate.DEMO_SERIES`.
    out : mapping
        Paths for ``csv``, ``txt``, ``fid``, ``tilts`` and ``truth``.
    """
    from .. import simulate

    if name not in simulate.DEMO_SERIES:
        raise ValueError(f"demo must be one of {', '.join(simulate.DEMO_SERIES)}; got {name!r}")
    spec = simulate.DEMO_SERIES[name]
    sim = simulate.simulate(spec)
    ids = sim.marker + 1
    io.write_markers_csv(out["csv"], ids, sim.view, sim.xy_px)
    io.write_point_text(out["txt"], ids, sim.view, sim.xy_px)
    io.write_imod_model(out["fid"], simulate.marker_contours(sim), (sim.width, sim.height, spec.n_views))
    io.write_tlt(out["tilts"], sim.nominal_tilt_deg, "8.2f")
    write_json(out["truth"], simulate.truth_document(spec, sim))
    log.info("demo %s: %d observations of %d markers in %d views", name, len(sim.view), spec.n_markers, spec.n_views)


def simulate_demo_stack(name, out_stack):
    """Rule ``simulate_demo_stack``: render a demo series' views as an int16 MRC stack."""
    from .. import simulate
    from ..io.mrc import write_stack

    views = simulate.demo_stack(name)
    write_stack(out_stack, views, pixel_size_angstrom=10.0)
    log.info("demo stack %s: %d views of %d x %d", name, views.shape[0], views.shape[2], views.shape[1])
