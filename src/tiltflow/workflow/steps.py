"""One function per alignment, plot and reconstruction rule.

Each reads its inputs through :mod:`tiltflow.io`, calls one package
function and writes its outputs through :mod:`tiltflow.io`; no numerics
here.  The scripts in ``scripts/`` only unpack ``snakemake.*`` and call
these, so every rule can be run and tested without Snakemake.  Numerical
modules are imported inside the step that uses them, so a job loads only
what its rule needs.
"""

from __future__ import annotations

import logging
import time

from .. import io
from ..io.state import load_prepared, load_state, save_prepared, save_state
from ..io.tables import read_json, read_table, write_json, write_table
from .config import align_options, coarse_options, recon_options

log = logging.getLogger(__name__)


def import_markers(row, out_prepared):
    """Rule ``import_markers``: validate one sheet row's files, write ``prepared.json``."""
    from ..prepare import prepare
    from .sheet import series_spec

    spec = series_spec(row)
    prepared = prepare(spec)
    s = prepared.series
    log.info("%s: %d markers, %d views, %d observations (%s)", spec.name, s.obs.n_markers, s.n_views,
             len(s.obs.view_index), spec.markers)
    save_prepared(out_prepared, prepared)


def align_coarse(prepared_path, params, out_state, out_coarse_xf, threads=1):
    """Rule ``align_coarse``: coarse shifts (images when there is a stack, else markers)
    and the starting 3D positions (:func:`tiltflow.align.coarse_stage`).

    ``coarse.xf`` maps raw views onto the reference view.  The image code
    (FFTs, numba kernels) uses ``threads`` threads.
    """
    from ..align import coarse_stage
    from ..io.mrc import Stack

    prepared = load_prepared(prepared_path)
    options, c_options = align_options(params), coarse_options(params)
    if prepared.stack:
        with Stack(prepared.stack) as stack, _image_threads(threads):
            state, coarse_xf, report = coarse_stage(prepared, options, c_options, stack)
    else:
        state, coarse_xf, report = coarse_stage(prepared, options, c_options)
    io.write_xf(out_coarse_xf, coarse_xf)
    save_state(out_state, state, extra={"coarse": report})


def align_stage(stage, prepared_path, state_path, params, out_state, threads=1, start_path=None):
    """Rules ``align_initial`` ... ``align_polish``: one L-M stage (:func:`tiltflow.align.run_stage`),
    its BLAS limited to the job's ``threads``.

    ``start_path`` (the last stage of a run with distortion): the state the stages that free
    distortion started from; distortion is then kept only if it generalises
    (:func:`tiltflow.selection.choose_distortion`).
    """
    from ..align import run_stage
    from ..selection import choose_distortion

    prepared = load_prepared(prepared_path)
    state = load_state(state_path)
    options = align_options(params)
    state = run_stage(stage, prepared.series, state, options, threads)
    if start_path is not None and state.stages[-1].distortion != "off":
        state = choose_distortion(prepared.series, state, load_state(start_path), options, threads)
    save_state(out_state, state)


def write_alignment(prepared_path, state_path, params, series_name, out, coarse_path=None, threads=1):
    """Rule ``write_alignment``: IMOD files, ``fiducials.tsv`` and ``summary.json``.

    Parameters
    ----------
    params : mapping
        What the full model frees (:func:`tiltflow.workflow.config.write_params`),
        for the leave-out error and the standard errors; with
        ``projection_matching: {with_markers: true}`` and a stack, the
        marker solution's shifts are refined from the images
        (:func:`tiltflow.image_align.refine_with_markers`).
    out : mapping
        Paths for ``xf``, ``tlt``, ``xyz``, ``fiducials`` and ``summary``,
        and optionally ``views``, ``markers``, ``large_residuals``,
        ``resid``, ``solution`` (``taSolution.log``), ``zfac`` and ``xtilt``.
    coarse_path : str, optional
        The coarse stage's state file, whose report goes into the summary.
    threads : int
        Threads of the image refinement.
    """
    from ..outputs import build_result

    prepared = load_prepared(prepared_path)
    state = load_state(state_path)
    coarse = read_json(coarse_path).get("coarse") if coarse_path else None
    t0 = time.perf_counter()
    result = build_result(prepared, state, align_options(params), series_name, coarse)
    log.info("outputs computed in %.3f s", time.perf_counter() - t0)
    if (params.get("projection_matching") or {}).get("with_markers") and prepared.stack:
        from ..image_align import refine_marker_result
        from ..io.mrc import Stack
        from ..stackmatch import stack_options
        from .config import matching_options

        with Stack(prepared.stack) as stack, _image_threads(threads):
            result = refine_marker_result(prepared, result, stack, stack_options(matching_options(params)),
                                          series_name)
    io.write_xf(out["xf"], result.xf)
    io.write_tlt(out["tlt"], result.tilt_deg)
    io.write_xyz(out["xyz"], result.points_xyz_px, result.contour_ids,
                 (prepared.series.width, prepared.series.height), prepared.pixel_size_angstrom)
    write_table(out["fiducials"], result.fiducials, float_format="%.4f")
    for key, table in (("views", result.views_table), ("markers", result.markers_table),
                       ("large_residuals", result.large_residuals)):
        if key in out:
            write_table(out[key], table)
    if "resid" in out:
        o = result.observations
        io.write_resid(out["resid"], o["x"], o["y"], o["view"], o["resid_x"], o["resid_y"])
    if "solution" in out:
        v = result.views_table
        io.write_solution_table(out["solution"], v["rotation"], v["tilt"], v["tilt"] - v["tilt_nominal"], v["scale"],
                                v["mean_residual"], v["dmag"], v["skew"])
    if "zfac" in out:
        io.write_zfac(out["zfac"], result.zfac)
    if "xtilt" in out:
        io.write_xtilt(out["xtilt"], [0.0] * prepared.series.n_views)
    write_json(out["summary"], result.summary)


def plot_alignment(fiducials_path, views_path, markers_path, summary_path, out):
    """Rule ``plot_alignment``: the diagnostic PNGs of one series (:mod:`tiltflow.plots`)."""
    from .. import plots

    fid = read_table(fiducials_path, text_columns=("marker",))
    views = read_table(views_path)
    markers = read_table(markers_path, text_columns=("marker", "surface"))
    summary = read_json(summary_path)
    width, height = summary["image_size"]
    plots.save_all(fid, views, markers, out, (width / 2.0, height / 2.0), summary.get("series", ""),
                   summary.get("surfaces"))


def plot_summary(summary_tsv, out_png):
    """Rule ``plot_summary``: cross-series residual chart."""
    from .. import plots

    plots.summary_plot(read_table(summary_tsv, text_columns=("series",)), out_png)


def reconstruct_tomogram(prepared_path, xf_path, tlt_path, params, out_mrc, out_json, threads=1, zfac_path=None,
                         summary_path=None):
    """Rule ``reconstruct_tomogram``: weighted back-projection from the raw stack
    (:func:`tiltflow.reconstruct.reconstruct`).

    Reads the series' ``.xf``, ``.tlt`` and, for a marker alignment, ``.zfac``
    (the same files IMOD's ``tilt`` would use) and, with
    ``reconstruct.flatten``, the surface analysis of its ``summary.json``;
    writes ``tomogram.mrc`` (``data[z, y, x]``, voxel size in the header)
    slab by slab, and ``tomogram.json`` (with ``placement``: what positioning
    was applied).
    """
    from ..io.mrc import SlabWriter, Stack
    from ..reconstruct import grid_matrix, reconstruct, volume_shape

    prepared = load_prepared(prepared_path)
    if not prepared.stack:
        raise ValueError(f"{prepared_path}: the series has no stack to reconstruct")
    options = recon_options(params)
    xf = io.read_xf(xf_path, prepared.series.n_views)
    tilts = io.read_tilts(tlt_path)
    zfac = io.read_zfac(zfac_path, prepared.series.n_views) if zfac_path else None
    placement = tomogram_placement(options, summary_path)
    voxel = prepared.pixel_size_angstrom * options.binning
    with Stack(prepared.stack) as stack, _image_threads(threads):
        shape = volume_shape(stack.shape, options)
        grid = grid_matrix(stack.shape, options, None if placement is None else placement.matrix)
        with SlabWriter(out_mrc, shape, options.dtype, voxel) as writer:
            _, stats = reconstruct(stack, xf, tilts, options, ~prepared.series.excluded, write_slab=writer.write,
                                   zfac=zfac, grid=grid)
    write_json(out_json, {**stats, "voxel_size_angstrom": voxel, "threads": int(threads),
                          "z_offset_px": float(options.z_offset_px),
                          "placement": None if placement is None else placement.to_dict()})


def tomogram_placement(options, summary_path):
    """The :class:`~tiltflow.reconstruct.Placement` of ``reconstruct.flatten`` from a series'
    ``summary.json`` (its ``surfaces``), or None (not asked for; no surface analysis: warned)."""
    from ..reconstruct import section_placement

    if not options.flatten:
        return None
    surfaces = read_json(summary_path).get("surfaces") if summary_path else None
    if not surfaces:
        log.warning("reconstruct.flatten: %s; the tomogram is not flattened",
                    f"{summary_path} has no surface analysis (fewer than 3 markers)" if summary_path
                    else "the series was aligned without markers (no surface analysis)")
        return None
    placement = section_placement(surfaces["slope_x"], surfaces["slope_y"], surfaces["z_shift_px"])
    log.info("reconstruct.flatten: tilt offset %+.2f deg, X-axis tilt %+.2f deg, section middle at z %+.1f px "
             "(from %s)", placement.tilt_offset_deg, placement.x_axis_tilt_deg, -placement.z_shift_px, summary_path)
    return placement


def _image_threads(threads):
    """Limit the image code (numba kernels, scipy FFTs) to the job's ``threads``; a context manager."""
    import numba
    import scipy.fft

    numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    return scipy.fft.set_workers(max(1, int(threads)))


def align_images(prepared_path, params, series_name, out, threads=1):
    """Rule ``align_images``: a marker-free series aligned from its stack
    (:func:`tiltflow.image_align.align_from_images`).

    ``out`` maps ``xf``, ``tlt``, ``coarse_xf``, ``views`` and ``summary`` to paths.
    """
    from ..image_align import align_from_images
    from ..io.mrc import Stack
    from ..stackmatch import stack_options
    from .config import matching_options

    prepared = load_prepared(prepared_path)
    if not prepared.stack:
        raise ValueError(f"{prepared_path}: a marker-free series needs a stack to be aligned from")
    options = matching_options(params)
    with Stack(prepared.stack) as stack, _image_threads(threads):
        result = align_from_images(prepared, stack, coarse_options(params), stack_options(options), series_name)
    io.write_xf(out["xf"], result.xf)
    io.write_tlt(out["tlt"], result.tilt_deg)
    io.write_xf(out["coarse_xf"], result.coarse_xf)
    write_table(out["views"], result.views_table)
    write_json(out["summary"], result.summary)


def plot_images(views_path, summary_path, out_png):
    """Rule ``plot_images``: the projection-matching plot of a marker-free series."""
    from .. import plots

    plots.save_figure(plots.projection_matching(read_table(views_path, text_columns=("status",)),
                                                read_json(summary_path)), out_png)


def plot_tomogram(tomogram_path, series_name, out_png):
    """Rule ``plot_tomogram``: central XY and XZ sections of a tomogram."""
    from .. import plots
    from ..io.mrc import central_sections

    xy, xz, voxel = central_sections(tomogram_path)
    plots.save_figure(plots.tomogram_sections(xy, xz, series_name, voxel), out_png)
