"""Diagnostic plots of one aligned series (matplotlib, Agg backend, PNG).

Every function takes the tables tiltflow writes (``fiducials.tsv``,
``views.tsv``, ``markers.tsv``) as read by :func:`tiltflow.io.tables.read_table`
(name -> numpy array) and returns a matplotlib Figure; :func:`save_all`
writes the set.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

#: Figure margins in inches (left, right, bottom, top).  Fixed margins instead of
#: ``tight_layout``, which draws every figure once more to measure it (a third of
#: the plotting job's time).
MARGINS_IN = (0.85, 0.2, 0.6, 0.6)
#: Fast PNG compression (zlib level 1): ~10 % of the plotting time for files ~15 % larger.
PNG_OPTIONS = {"compress_level": 1}


def _figure(figsize, nrows=1, ncols=1, bottom_in=None, **kw):
    """A Figure (Agg when saved as PNG; no pyplot state) with ``nrows x ncols`` axes and fixed margins."""
    fig = Figure(figsize=figsize)
    axes = fig.subplots(nrows, ncols, **kw)
    left, right, bottom, top = MARGINS_IN
    bottom = bottom if bottom_in is None else bottom_in
    w, h = figsize
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h, hspace=0.15)
    return fig, axes

#: name -> (function name, caption)
PLOTS = {
    "residual_vs_tilt": "Residual length of every observation against its tilt, with the per-view mean.",
    "residual_vectors": "Residual vectors (fit minus observed, magnified) at the observed positions; colour: tilt.",
    "trajectories": "Marker trajectories in the aligned frame: position across the tilt axis against tilt, "
                    "with each marker's x cos(tilt) term and mean removed so that its z sin(tilt) arc and the "
                    "residuals show (points observed, lines model), as in Jou et al. Fig. 6-7.",
    "tilt_change": "Solved minus nominal tilt angle per view, with its standard error.",
    "rotation_scale": "In-plane rotation (tilt-axis angle) and magnification against tilt.",
    "markers_xz": "3D marker positions seen along the tilt axis (x against z); colour: surface; lines: the "
                  "fitted surfaces at the markers' mean y, with the thickness between them.",
}
#: The heading of each plot, after the series name.
TITLES = {
    "residual_vs_tilt": "residual against tilt",
    "residual_vectors": "residual vectors",
    "trajectories": "marker trajectories (aligned frame)",
    "tilt_change": "tilt change",
    "rotation_scale": "rotation and scale against tilt",
    "markers_xz": "markers seen along the tilt axis",
}


def _observed(fid):
    """The rows of the marker x view grid where the marker was observed."""
    return fid.rows(np.isfinite(fid["x"]))


def residual_vs_tilt(fid, views):
    obs = _observed(fid)
    r = np.hypot(obs["resid_x"], obs["resid_y"])
    fig, ax = _figure((7, 4))
    ax.scatter(obs["tilt"], r, s=4, alpha=0.4, label="observation")
    ax.plot(views["tilt"], views["mean_residual"], color="C3", label="view mean")
    ax.set_xlabel("tilt (deg)")
    ax.set_ylabel("residual (px)")
    ax.legend(loc="upper right")
    return fig


def residual_vectors(fid, views, magnify=40.0):
    obs = _observed(fid)
    fig, ax = _figure((6.6, 6))
    q = ax.quiver(obs["x"], obs["y"], obs["resid_x"] * magnify, obs["resid_y"] * magnify, obs["tilt"],
                  angles="xy", scale_units="xy", scale=1, width=0.002, cmap="viridis")
    fig.colorbar(q, ax=ax, label="tilt (deg)")
    ax.set_aspect("equal")  # y up, as 3dmod shows the images
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px, up as in 3dmod)")
    ax.set_title(f"fit - observed, magnified {magnify:g}x", fontsize=9)
    return fig


def aligned_across(x, y, views_rows, centre_xy):
    """Position across the tilt axis in the aligned frame: ``[R(-a) (p - c - d) / s]_x``."""
    a = np.deg2rad(views_rows["rotation"])
    px = x - centre_xy[0] - views_rows["dx"]
    py = y - centre_xy[1] - views_rows["dy"]
    return (np.cos(a) * px + np.sin(a) * py) / views_rows["scale"]


def trajectories(fid, views, centre_xy=(0.0, 0.0), max_markers=30):
    fig, ax = _figure((7, 5))
    row_of_view = dict(zip(views["view"].astype(int).tolist(), range(views.n_rows)))
    _, first = np.unique(fid["marker"], return_index=True)
    names = fid["marker"][np.sort(first)]  # file order
    if len(names) > max_markers:
        ax.set_title(f"the first {max_markers} of {len(names)} markers", fontsize=9)
    for k, marker in enumerate(names[:max_markers]):
        g = fid.rows(fid["marker"] == marker)
        rows = views.rows([row_of_view[v] for v in g["view"].astype(int).tolist()])
        fit = aligned_across(g["x_fit"], g["y_fit"], rows, centre_xy)
        obs = aligned_across(g["x"], g["y"], rows, centre_xy)
        # the mean and the cos(tilt) term are removed so the z sin(tilt) arcs and the residuals show
        th = np.deg2rad(g["tilt"])
        basis = np.column_stack([np.ones_like(th), np.cos(th)])
        coef, *_ = np.linalg.lstsq(basis, fit, rcond=None)
        ax.plot(g["tilt"], fit - basis @ coef, lw=0.8, color=f"C{k % 10}")
        ax.scatter(g["tilt"], obs - basis @ coef, s=3, color=f"C{k % 10}")
        # colours repeat every ten markers: each line carries its marker's name at its last view
        end = int(np.argmax(g["tilt"]))
        ax.annotate(str(marker), (g["tilt"][end], (fit - basis @ coef)[end]), fontsize=6, color=f"C{k % 10}",
                    xytext=(2, 0), textcoords="offset points", va="center")
    lo, hi = ax.get_xlim()
    ax.set_xlim(lo, hi + 0.06 * (hi - lo))  # room for the names
    ax.set_xlabel("tilt (deg)")
    ax.set_ylabel("across the axis, aligned frame (px)")
    return fig


def tilt_change(fid, views):
    fig, ax = _figure((7, 4))
    d = views["tilt"] - views["tilt_nominal"]
    ax.errorbar(views["tilt_nominal"], d, yerr=views["se_tilt"], fmt="o", ms=3, lw=0.8)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("nominal tilt (deg)")
    ax.set_ylabel("solved - nominal (deg)")
    return fig


def rotation_scale(fid, views):
    fig, (a1, a2) = _figure((7, 5), 2, 1, sharex=True)
    a1.errorbar(views["tilt"], views["rotation"], yerr=views["se_rotation"], fmt="o", ms=3, lw=0.8)
    a1.set_ylabel("rotation (deg)")
    a2.errorbar(views["tilt"], views["scale"], yerr=views["se_scale"], fmt="o", ms=3, lw=0.8)
    a2.set_ylabel("scale")
    a2.set_xlabel("tilt (deg)")
    return fig


def markers_xz(fid, views, markers, surfaces=None, centre_xy=(0.0, 0.0)):
    """Markers' x against z, coloured by surface; with ``surfaces`` (``summary.json`` ->
    ``surfaces``) the fitted planes at the markers' mean y and the thickness between them."""
    fig, ax = _figure((7, 3.5))
    surface = markers["surface"].astype(str) if "surface" in markers else np.full(markers.n_rows, "")
    colours = [{"top": "C1", "bottom": "C0"}.get(s, "C2") for s in surface.tolist()]
    ax.scatter(markers["x"], markers["z"], c=colours, s=14)
    for name, x, z in zip(markers["marker"].tolist(), markers["x"].tolist(), markers["z"].tolist()):
        ax.annotate(str(name), (x, z), fontsize=6)
    if surfaces:
        x = np.array([markers["x"].min(), markers["x"].max()])
        y_mean = float(np.mean(markers["y"])) - centre_xy[1]
        for k, intercept in enumerate(surfaces["intercepts_px"]):
            z = intercept + surfaces["slope_x"] * (x - centre_xy[0]) + surfaces["slope_y"] * y_mean
            colour = ("C0", "C1")[k] if surfaces["n_surfaces"] == 2 else "C2"
            ax.plot(x, z, color=colour, lw=0.8)
        if np.isfinite(surfaces.get("thickness_px") or np.nan):
            ax.set_title(f"thickness {surfaces['thickness_px']:.1f} px between the fitted surfaces; "
                         f"tilt offset to flatten {surfaces['tilt_offset_deg']:+.2f} deg", fontsize=9)
    ax.set_xlabel("x (px)")
    ax.set_ylabel("z (px)")
    return fig


def save_all(fid, views, markers, paths, centre_xy=(0.0, 0.0), series="", surfaces=None):
    """Write every plot of :data:`PLOTS` whose name is a key of ``paths``, each headed by ``series``.

    ``centre_xy`` is the image centre ``(nx/2, ny/2)`` (for the aligned frame);
    ``surfaces`` the surface fit of ``summary.json`` (drawn in ``markers_xz``).
    """
    for name, path in paths.items():
        if name not in PLOTS:
            raise ValueError(f"unknown plot {name!r}; expected one of {', '.join(PLOTS)}")
        fn = globals()[name]
        if name == "markers_xz":
            fig = fn(fid, views, markers, surfaces, centre_xy)
        elif name == "trajectories":
            fig = fn(fid, views, centre_xy)
        else:
            fig = fn(fid, views)
        fig.suptitle(f"{series}: {TITLES[name]}" if series else TITLES[name], fontsize=11)
        save_figure(fig, path)


def summary_plot(table, path):
    """Cross-series bar chart of mean residual and leave-out error."""
    fig, ax = _figure((max(5, 0.8 * table.n_rows + 2), 4), bottom_in=1.2)
    x = np.arange(table.n_rows)
    ax.bar(x - 0.2, table["mean_residual"], width=0.4, label="mean residual")
    ax.bar(x + 0.2, table["leave_out_error"], width=0.4, label="leave-out error")
    ax.set_xticks(x, table["series"], rotation=30, ha="right")
    ax.set_ylabel("px")
    ax.legend()
    save_figure(fig, path)


def _grey(ax, img, title):
    lo, hi = np.percentile(img, [1, 99])
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, origin="lower", interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def tomogram_sections(xy, xz, series="", voxel_angstrom=None):
    """The central XY section above the central XZ section of a tomogram (1st-99th percentile grey scale)."""
    ny, nx = xy.shape
    nz = xz.shape[0]
    width = 6.0
    height = width * (ny + nz) / nx + 0.8
    fig = Figure(figsize=(width, height))
    top = fig.add_axes((0.02, (0.3 + width * nz / nx + 0.1) / height, 0.96, width * ny / nx / height))
    bottom = fig.add_axes((0.02, 0.3 / height, 0.96, width * nz / nx / height))
    size = f", voxel {voxel_angstrom:.3g} A" if voxel_angstrom else ""
    _grey(top, xy, f"{series}: central XY section ({nx} x {ny}{size})")
    _grey(bottom, xz, f"central XZ section ({nx} x {nz}; y = {ny // 2})")
    return fig


def projection_matching(views, summary):
    """Marker-free alignment at a glance: NCC of each view with its re-projection before and after,
    the shift projection matching applied on top of the coarse one, and each level's updates."""
    pm = summary.get("projection_matching") or {}
    fig, (a, b, c) = _figure((7, 8), 3, 1)
    t = views["tilt"]
    a.plot(t, views["ncc_before"], "o-", ms=3, label="coarse (cross-correlation)")
    a.plot(t, views["ncc_after"], "o-", ms=3, label="after projection matching")
    a.set_ylabel("NCC data vs re-projection")
    a.legend(loc="lower center", fontsize=8)
    a.set_title(f"{summary.get('series', '')}: aligned from images, slab {pm.get('thickness_px', 0):.0f} px", fontsize=9)
    b.plot(t, views["match_dx"], "o-", ms=3, label="dx")
    b.plot(t, views["match_dy"], "o-", ms=3, label="dy")
    b.set_ylabel("shift applied (px)")
    b.set_xlabel("tilt (deg)")
    b.legend(fontsize=8)
    for level in pm.get("levels", []):
        u = level["updates_px"]
        c.semilogy(np.arange(1, len(u) + 1), np.maximum(u, 1e-4), "o-", ms=3,
                   label=f"binning {level['binning']} ({level['seconds']:.1f} s)")
    c.axhline(0.05, color="0.6", lw=0.8, ls="--")
    c.set_xlabel("round")
    c.set_ylabel("largest update (raw px)")
    c.legend(fontsize=8)
    return fig


def save_figure(fig, path):
    """Write a figure as PNG (the plots' resolution and compression)."""
    fig.savefig(path, dpi=90, pil_kwargs=PNG_OPTIONS)
