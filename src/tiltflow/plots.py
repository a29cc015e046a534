"""Diagnostic plots of one aligned series (matplotlib, Agg backend, PNG).

Every function takes the tables tiltflow writes (``fiducials.tsv``,
``views.tsv``, ``markers.tsv``) as DataFrames and returns a matplotlib
Figure; :func:`save_all` writes the set.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

#: name -> (function name, caption)
PLOTS = {
    "residual_vs_tilt": "Residual length of every observation against its tilt, with the per-view mean.",
    "residual_vectors": "Residual vectors (fit minus observed, magnified) at the observed positions; colour: tilt.",
    "trajectories": "Marker trajectories in the aligned frame: position across the tilt axis against tilt, "
                    "with each marker's x cos(tilt) term and mean removed so that its z sin(tilt) arc and the "
                    "residuals show (points observed, lines model), as in Jou et al. Fig. 6-7.",
    "tilt_change": "Solved minus nominal tilt angle per view, with its standard error.",
    "rotation_scale": "In-plane rotation (tilt-axis angle) and magnification per view.",
    "markers_xz": "3D marker positions seen along the tilt axis (x against z); colour: surface.",
}


def residual_vs_tilt(fid, views):
    obs = fid.dropna(subset=["x"])
    r = np.hypot(obs["resid_x"], obs["resid_y"])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(obs["tilt"], r, s=4, alpha=0.4, label="observation")
    ax.plot(views["tilt"], views["mean_residual"], color="C3", label="view mean")
    ax.set_xlabel("tilt (deg)")
    ax.set_ylabel("residual (px)")
    ax.legend(loc="upper right")
    return fig


def residual_vectors(fid, views, magnify=40.0):
    obs = fid.dropna(subset=["x"])
    fig, ax = plt.subplots(figsize=(6, 6))
    q = ax.quiver(obs["x"], obs["y"], obs["resid_x"] * magnify, obs["resid_y"] * magnify, obs["tilt"],
                  angles="xy", scale_units="xy", scale=1, width=0.002, cmap="viridis")
    fig.colorbar(q, ax=ax, label="tilt (deg)")
    ax.set_aspect("equal")
    ax.invert_yaxis()
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    ax.set_title(f"residual vectors x{magnify:g}")
    return fig


def aligned_across(x, y, views_rows, centre_xy):
    """Position across the tilt axis in the aligned frame: ``[R(-a) (p - c - d) / s]_x``."""
    a = np.deg2rad(views_rows["rotation"].to_numpy())
    px = x - centre_xy[0] - views_rows["dx"].to_numpy()
    py = y - centre_xy[1] - views_rows["dy"].to_numpy()
    return (np.cos(a) * px + np.sin(a) * py) / views_rows["scale"].to_numpy()


def trajectories(fid, views, centre_xy=(0.0, 0.0), max_markers=30):
    fig, ax = plt.subplots(figsize=(7, 5))
    v = views.set_index("view")
    for k, (marker, g) in enumerate(fid.groupby("marker", sort=False)):
        if k >= max_markers:
            break
        rows = v.loc[g["view"]]
        fit = aligned_across(g["x_fit"].to_numpy(), g["y_fit"].to_numpy(), rows, centre_xy)
        obs = aligned_across(g["x"].to_numpy(), g["y"].to_numpy(), rows, centre_xy)
        # the mean and the cos(tilt) term are removed so the z sin(tilt) arcs and the residuals show
        th = np.deg2rad(g["tilt"].to_numpy())
        basis = np.column_stack([np.ones_like(th), np.cos(th)])
        coef, *_ = np.linalg.lstsq(basis, fit, rcond=None)
        ax.plot(g["tilt"], fit - basis @ coef, lw=0.8, color=f"C{k % 10}")
        ax.scatter(g["tilt"], obs - basis @ coef, s=3, color=f"C{k % 10}")
    ax.set_xlabel("tilt (deg)")
    ax.set_ylabel("across the axis, aligned frame (px)")
    return fig


def tilt_change(fid, views):
    fig, ax = plt.subplots(figsize=(7, 4))
    d = views["tilt"] - views["tilt_nominal"]
    ax.errorbar(views["tilt_nominal"], d, yerr=views["se_tilt"], fmt="o", ms=3, lw=0.8)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("nominal tilt (deg)")
    ax.set_ylabel("solved - nominal (deg)")
    return fig


def rotation_scale(fid, views):
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    a1.errorbar(views["view"], views["rotation"], yerr=views["se_rotation"], fmt="o", ms=3, lw=0.8)
    a1.set_ylabel("rotation (deg)")
    a2.errorbar(views["view"], views["scale"], yerr=views["se_scale"], fmt="o", ms=3, lw=0.8)
    a2.set_ylabel("scale")
    a2.set_xlabel("view")
    return fig


def markers_xz(fid, views, markers):
    fig, ax = plt.subplots(figsize=(7, 3.5))
    colours = markers["surface"].fillna("").map({"top": "C1", "bottom": "C0"}).fillna("C2")
    ax.scatter(markers["x"], markers["z"], c=list(colours), s=14)
    for _, m in markers.iterrows():
        ax.annotate(str(m["marker"]), (m["x"], m["z"]), fontsize=6)
    ax.set_xlabel("x (px)")
    ax.set_ylabel("z (px)")
    return fig


def save_all(fid, views, markers, paths, centre_xy=(0.0, 0.0)):
    """Write every plot of :data:`PLOTS` whose name is a key of ``paths``.

    ``centre_xy`` is the image centre ``(nx/2, ny/2)`` (for the aligned frame).
    """
    for name, path in paths.items():
        if name not in PLOTS:
            raise ValueError(f"unknown plot {name!r}; expected one of {', '.join(PLOTS)}")
        fn = globals()[name]
        if name == "markers_xz":
            fig = fn(fid, views, markers)
        elif name == "trajectories":
            fig = fn(fid, views, centre_xy)
        else:
            fig = fn(fid, views)
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)


def summary_plot(table, path):
    """Cross-series bar chart of mean residual and leave-out error."""
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(table) + 2), 4))
    x = np.arange(len(table))
    ax.bar(x - 0.2, table["mean_residual"], width=0.4, label="mean residual")
    ax.bar(x + 0.2, table["leave_out_error"], width=0.4, label="leave-out error")
    ax.set_xticks(x, table["series"], rotation=30, ha="right")
    ax.set_ylabel("px")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
