"""One function per workflow rule: read inputs, call the numerics, write outputs.

The scripts in ``scripts/`` only unpack ``snakemake.*`` and call these, so
every rule can be run and tested without Snakemake.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import align, io, outputs, projection, simulate
from .coarse import CoarseOptions, coarse_align, pair_order
from .io.mrc import SlabWriter, Stack, write_stack
from .io.state import load_prepared, load_state, save_prepared, save_state
from .prepare import prepare
from .reconstruct import ReconOptions, reconstruct, volume_shape
from .sheet import series_spec
from .solver import LMOptions

log = logging.getLogger(__name__)

#: Which config keys each stage depends on (Snakemake params: a change re-runs only these).
STAGE_KEYS = {
    "coarse": ("reference_view", "rotation", "coarse"),
    "initial": ("rotation", "reference_view", "max_iterations", "ftol"),
    "main": ("rotation", "scale", "max_iterations", "ftol", "robust"),
    "tilt": ("rotation", "scale", "tilt", "max_iterations", "ftol", "robust"),
    "polish": ("rotation", "scale", "tilt", "max_iterations", "ftol", "robust"),
}


def stage_params(stage, config):
    """The config values ``stage`` depends on, as a flat dict."""
    merged = dict(config.get("align", {}))
    merged["robust"] = config.get("robust")  # None: the AlignOptions default
    merged["coarse"] = dict(config.get("coarse", {}))
    return {k: merged.get(k) for k in STAGE_KEYS[stage]}


def _from_config(cls, values, names=None):
    """``cls`` built from the config ``values`` that are given (not None) and are its fields;
    the dataclass's own defaults stand for the rest.  ``names`` maps config keys to field names."""
    names = names or {}
    fields = cls.__dataclass_fields__
    kwargs = {names.get(k, k): v for k, v in values.items() if v is not None}
    return cls(**{k: v for k, v in kwargs.items() if k in fields})


def align_options(params):
    """:class:`AlignOptions` from a (partial) flat dict of config values."""
    return _from_config(align.AlignOptions, {**params, "lm": _from_config(LMOptions, params)})


def import_markers(row, out_prepared):
    """Rule ``import_markers``: validate one sheet row's files, write ``prepared.json``."""
    spec = series_spec(row)
    prepared = prepare(spec)
    s = prepared.series
    log.info("%s: %d markers, %d views, %d observations (%s)", spec.name, s.obs.n_markers, s.n_views,
             len(s.obs.view_index), spec.markers)
    save_prepared(out_prepared, prepared)


def coarse_options(params):
    """:class:`CoarseOptions` from the ``coarse`` config section."""
    return _from_config(CoarseOptions, dict(params.get("coarse") or {}))


def align_coarse(prepared_path, params, out_state, out_coarse_xf):
    """Rule ``align_coarse``: coarse shifts (images when there is a stack, else markers)
    and the starting 3D positions.

    With a stack, views are cross-correlated (:func:`tiltflow.coarse.coarse_align`),
    pairs with weak peaks fall back on the markers, and the tilt-axis angle
    is refined from the images; that estimate seeds the L-M stages when its
    bootstrap uncertainty is below 1 degree (the markers decide the final
    rotation).  ``coarse.xf`` maps raw views onto the reference view.
    """
    prepared = load_prepared(prepared_path)
    options = align_options(params)
    series = prepared.series
    ref = align.choose_reference_view(series, options.reference_view)
    marker_shifts = align.coarse_shifts_from_markers(series, ref)
    report = {"source": "markers"}
    raw_shifts = marker_shifts
    if prepared.prexg is not None:
        # markers live in the prealigned frame: raw shift = prexg^-1 applied to the marker-frame shift
        a = prepared.prexg[:, :4].reshape(-1, 2, 2)
        raw_shifts = np.linalg.solve(a, (marker_shifts - prepared.prexg[:, 4:])[:, :, None])[:, :, 0]
    start_axis = series.tilt_axis_deg
    if prepared.stack:
        with Stack(prepared.stack) as stack:
            t0 = time.perf_counter()
            usable = ~series.excluded
            result = coarse_align(
                stack, series.nominal_tilt_deg, series.tilt_axis_deg, ref, coarse_options(params), usable,
                fallback_steps_px=_marker_steps(raw_shifts, series, ref, usable),
            )
            seconds = time.perf_counter() - t0
        raw_shifts = result.shifts_px
        report = {
            "source": "images",
            "seconds": seconds,
            "binning": result.binning,
            "peak": [None if not np.isfinite(p) else float(p) for p in result.peak],
            "weak_views": result.weak_views,
            "axis_search": result.axis_search,
        }
        if result.axis_search and result.axis_search["uncertainty_deg"] < 1.0:
            start_axis = result.axis_search["estimate_deg"]
        log.info("coarse from images: %.2f s, binning %d, weak views %s", seconds, result.binning, result.weak_views)
    shifts = raw_shifts
    if prepared.prexg is not None:  # marker-frame shifts = prexg applied to raw shifts
        shifts = projection.apply_xf(prepared.prexg, raw_shifts, (0.0, 0.0))
    state = align.initial_state(
        dataclasses.replace(series, tilt_axis_deg=float(start_axis)), options, shifts_px=shifts
    )
    xf = np.zeros((series.n_views, 6))
    xf[:, 0] = xf[:, 3] = 1.0
    xf[:, 4:] = -(raw_shifts - raw_shifts[ref])
    io.write_xf(out_coarse_xf, xf)
    report["start_tilt_axis_deg"] = float(start_axis)
    save_state(out_state, state, extra={"coarse": _jsonable(report)})
    log.info("coarse: reference view %d, shifts up to %.1f px", state.reference_view, np.abs(xf[:, 4:]).max())


def _marker_steps(raw_shifts, series, ref, usable):
    """Marker-based shift steps of the coarse pairs (fallback for weak correlation peaks)."""
    counts = series.markers_per_view()
    steps = {}
    for near, far in pair_order(series.nominal_tilt_deg, ref, usable):
        if counts[near] and counts[far]:
            steps[(near, far)] = raw_shifts[far] - raw_shifts[near]
    return steps


def align_stage(stage, prepared_path, state_path, params, out_state):
    """Rules ``align_initial`` ... ``align_polish``: one L-M stage."""
    prepared = load_prepared(prepared_path)
    state = load_state(state_path)
    new = align.run_stage(stage, prepared.series, state, align_options(params))
    save_state(out_state, new)


def write_alignment(prepared_path, state_path, params, series_name, out, coarse_path=None):
    """Rule ``write_alignment``: IMOD files, ``fiducials.tsv`` and ``summary.json``.

    Parameters
    ----------
    params : mapping
        The polish stage's config values (:func:`stage_params`): which
        parameters the model has, for the leave-out error.
    out : mapping
        Paths for ``xf``, ``tlt``, ``xyz``, ``fiducials`` and ``summary``,
        and optionally ``views``, ``markers`` and ``large_residuals``.
    coarse_path : str, optional
        The coarse stage's state file, whose report goes into the summary.
    """
    prepared = load_prepared(prepared_path)
    state = load_state(state_path)
    t0 = time.perf_counter()
    coarse = None
    if coarse_path:
        with open(coarse_path, encoding="utf-8") as f:
            coarse = json.load(f).get("coarse")
    result = outputs.build_result(prepared, state, align_options(params), series_name, coarse)
    log.info("outputs computed in %.3f s", time.perf_counter() - t0)
    io.write_xf(out["xf"], result.xf)
    io.write_tlt(out["tlt"], result.tilt_deg)
    io.write_xyz(out["xyz"], result.points_xyz_px, result.contour_ids,
                 (prepared.series.width, prepared.series.height), prepared.pixel_size_angstrom)
    result.fiducials.to_csv(out["fiducials"], sep="\t", index=False, float_format="%.4f", na_rep="")
    for key, table in (("views", result.views_table), ("markers", result.markers_table),
                       ("large_residuals", result.large_residuals)):
        if key in out:
            table.to_csv(out[key], sep="\t", index=False, float_format="%.6g", na_rep="")
    with open(out["summary"], "w", encoding="utf-8") as f:
        json.dump(_jsonable(result.summary), f, indent=1)


SUMMARY_COLUMNS = [
    "series", "n_views", "n_markers", "n_observations", "rms", "mean_residual", "leave_out_error",
    "solve_seconds", "tilt_axis_deg_mean", "tilt_offset_deg_mean", "reference_view", "status",
]


def summarize(summary_paths, out_tsv):
    """Rule ``summarize``: ``results/summary.tsv``, one row per series."""
    rows = []
    for p in summary_paths:
        with open(p, encoding="utf-8") as f:
            doc = json.load(f)
        rows.append({k: doc.get(k) for k in SUMMARY_COLUMNS})
    pd.DataFrame(rows, columns=SUMMARY_COLUMNS).to_csv(out_tsv, sep="\t", index=False, float_format="%.5g")


PARTIAL_COLUMNS = [*SUMMARY_COLUMNS, "outcome", "failed_log", "error"]


def partial_summary(series_names, out_tsv, results_dir="results", logs_dir="logs"):
    """``results/summary.partial.tsv`` after a run with failures (Snakemake ``onerror``).

    One row per series: the summary columns of those that finished
    (``outcome`` "done"), and for the others ``outcome`` "failed" with the
    log of the failing rule and its last line (the error), or "not run"
    when no log reports an error (a dependency failed first or the run was
    stopped).  Reads only what is on disk; never raises on a missing or
    unreadable file, so it cannot hide the original error.
    """
    rows = []
    for name in series_names:
        summary = Path(results_dir) / name / "summary.json"
        row = dict.fromkeys(PARTIAL_COLUMNS)
        row["series"] = name
        try:
            with open(summary, encoding="utf-8") as f:
                doc = json.load(f)
            row.update({k: doc.get(k) for k in SUMMARY_COLUMNS})
            row["outcome"] = "done"
        except (OSError, ValueError):
            row["outcome"] = "not run"
        failed = _failed_logs(Path(logs_dir) / name)
        if failed:
            log_path, message = failed[-1]
            row.update({"outcome": "failed", "failed_log": str(log_path), "error": message})
        rows.append(row)
    Path(out_tsv).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=PARTIAL_COLUMNS).to_csv(out_tsv, sep="\t", index=False, float_format="%.5g")
    return rows


def _failed_logs(folder):
    """``(path, last line)`` of the rule logs in ``folder`` that record a failure, oldest first."""
    found = []
    for path in sorted(Path(folder).glob("*.log"), key=lambda p: p.stat().st_mtime):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if " ERROR " in text or "Traceback" in text:
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            found.append((path, lines[-1] if lines else ""))
    return found


def plot_alignment(fiducials_path, views_path, markers_path, summary_path, out):
    """Rule ``plot_alignment``: the diagnostic PNGs of one series (:mod:`tiltflow.plots`)."""
    from . import plots

    fid = pd.read_csv(fiducials_path, sep="\t", dtype={"marker": str})
    views = pd.read_csv(views_path, sep="\t")
    markers = pd.read_csv(markers_path, sep="\t", dtype={"marker": str})
    with open(summary_path, encoding="utf-8") as f:
        width, height = json.load(f)["image_size"]
    plots.save_all(fid, views, markers, out, (width / 2.0, height / 2.0))


def plot_summary(summary_tsv, out_png):
    """Rule ``plot_summary``: cross-series residual chart."""
    from . import plots

    plots.summary_plot(pd.read_csv(summary_tsv, sep="\t"), out_png)


def simulate_demo(name, out):
    """Rule ``simulate_demo``: write one demo series in every marker format.

    Parameters
    ----------
    name : str
        A key of :data:`tiltflow.simulate.DEMO_SERIES`.
    out : mapping
        Paths for ``csv``, ``txt``, ``fid``, ``tilts`` and ``truth``.
    """
    if name not in simulate.DEMO_SERIES:
        raise ValueError(f"demo must be one of {', '.join(simulate.DEMO_SERIES)}; got {name!r}")
    spec = simulate.DEMO_SERIES[name]
    sim = simulate.simulate(spec)
    ids = sim.marker + 1
    io.write_markers_csv(out["csv"], ids, sim.view, sim.xy_px)
    io.write_point_text(out["txt"], ids, sim.view, sim.xy_px)
    contours = []
    for m in range(spec.n_markers):
        sel = sim.marker == m
        if sel.any():
            contours.append(np.column_stack([sim.xy_px[sel], sim.view[sel]]))
    io.write_imod_model(out["fid"], contours, (sim.width, sim.height, spec.n_views))
    with open(out["tilts"], "w", encoding="utf-8") as f:
        f.write("".join(f"{t:8.2f}\n" for t in sim.nominal_tilt_deg))
    truth = {
        "spec": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(spec).items()},
        "tilt_deg": np.rad2deg(sim.views[:, 0]).tolist(),
        "rotation_deg": np.rad2deg(sim.views[:, 1]).tolist(),
        "scale": sim.views[:, 2].tolist(),
        "shift_px": sim.views[:, 3:].tolist(),
        "points_xyz_px": sim.points_xyz_px.tolist(),
    }
    with open(out["truth"], "w", encoding="utf-8") as f:
        json.dump(truth, f, indent=1)
    log.info("demo %s: %d observations of %d markers in %d views", name, len(sim.view), spec.n_markers, spec.n_views)


def simulate_demo_stack(name, out_stack):
    """Rule ``simulate_demo_stack``: render a demo series' views as an int16 MRC stack."""
    if name not in simulate.DEMO_STACKS:
        raise ValueError(f"demo stack must be one of {', '.join(simulate.DEMO_STACKS)}; got {name!r}")
    spec = simulate.DEMO_SERIES[name]
    sim = simulate.simulate(spec)
    views = simulate.render_stack(sim, spec.thickness_px, simulate.DEMO_STACKS[name])
    write_stack(out_stack, np.clip(np.round(views), -32768, 32767).astype(np.int16), pixel_size_angstrom=10.0)
    log.info("demo stack %s: %d views of %d x %d", name, views.shape[0], spec.width, spec.height)


def recon_options(config):
    """:class:`ReconOptions` from the ``reconstruct`` config section."""
    return _from_config(ReconOptions, dict(config.get("reconstruct") or {}),
                        {"thickness": "thickness_px", "z_offset": "z_offset_px"})


def reconstruct_tomogram(prepared_path, xf_path, tlt_path, params, out_mrc, out_json, threads=1):
    """Rule ``reconstruct_tomogram``: weighted back-projection from the raw stack.

    Reads the series' ``.xf`` and ``.tlt`` (the same files IMOD would use),
    writes ``tomogram.mrc`` (``data[z, y, x]``, voxel size in the header)
    slab by slab, and ``tomogram.json``.
    """
    import numba

    numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    prepared = load_prepared(prepared_path)
    if not prepared.stack:
        raise ValueError(f"{prepared_path}: the series has no stack to reconstruct")
    options = recon_options(params)
    n = prepared.series.n_views
    xf = io.read_xf(xf_path, n)
    tilts = io.read_tilts(tlt_path)
    with Stack(prepared.stack) as stack:
        shape = volume_shape(stack.shape, options)
        voxel = prepared.pixel_size_angstrom * options.binning
        with SlabWriter(out_mrc, shape, options.dtype, voxel) as writer:
            _, stats = reconstruct(stack, xf, tilts, options, ~prepared.series.excluded, write_slab=writer.write)
    stats.update({"shape_zyx": list(shape), "voxel_size_angstrom": voxel,
                  "binning": options.binning, "thickness_px": options.thickness_px,
                  "updates_per_second": stats["voxels"] * stats["views"] / max(stats["seconds"], 1e-9),
                  "threads": int(threads)})
    with open(out_json, "w", encoding="utf-8") as f:
        json.dump(_jsonable(stats), f, indent=1)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def import_package_from(src_dir):
    """Make jobs started from this process import tiltflow from ``src_dir``.

    The workflow calls this with its checkout's ``src`` so that rules run
    the package that belongs to the Snakefile (also inside a conda
    environment that holds only the dependencies).
    """
    current = os.environ.get("PYTHONPATH", "")
    parts = [str(src_dir)] + [p for p in current.split(os.pathsep) if p and p != str(src_dir)]
    os.environ["PYTHONPATH"] = os.pathsep.join(parts)


def run_logged(log_path, func, *args, **kwargs):
    """Run a step with logging sent to ``log_path``; failures are logged with
    their traceback, then re-raised so that Snakemake marks the job failed."""
    setup_logging(log_path)
    try:
        return func(*args, **kwargs)
    except Exception:
        log.exception("%s failed", func.__name__)
        raise


def setup_logging(path):
    """Send the package's logging to a rule's log file."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
