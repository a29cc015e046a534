"""JSON files that carry a series and its solution from one rule to the next."""

from __future__ import annotations

import json

import numpy as np

from ..projection import full_views
from ..model import AlignmentState, Observations, Prepared, Series, StageReport


def save_prepared(path, prepared: Prepared):
    """Write a :class:`Prepared` series as JSON."""
    s = prepared.series
    doc = {
        "marker_ids": [str(m) for m in s.marker_ids],
        "observations": {
            "marker_index": s.obs.marker_index.tolist(),
            "view": s.obs.view_index.tolist(),
            "x": s.obs.xy_px[:, 0].tolist(),
            "y": s.obs.xy_px[:, 1].tolist(),
        },
        "nominal_tilt_deg": s.nominal_tilt_deg.tolist(),
        "raw_tilt_deg": prepared.raw_tilt_deg.tolist(),
        "tilt_axis_deg": s.tilt_axis_deg,
        "width": s.width,
        "height": s.height,
        "excluded": s.excluded.tolist(),
        "prexg": None if prepared.prexg is None else prepared.prexg.tolist(),
        "pixel_size_angstrom": prepared.pixel_size_angstrom,
        "dropped_markers": prepared.dropped_markers,
        "weak_views": prepared.weak_views,
        "empty_views": prepared.empty_views,
        "excluded_views": prepared.excluded_views,
        "ignored_observations": prepared.ignored_observations,
        "stack": prepared.stack,
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f)


def load_prepared(path) -> Prepared:
    """Read what :func:`save_prepared` wrote."""
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    o = doc["observations"]
    n_views = len(doc["nominal_tilt_deg"])
    obs = Observations(
        marker_index=np.asarray(o["marker_index"], dtype=np.int64),
        view_index=np.asarray(o["view"], dtype=np.int64),
        xy_px=np.column_stack([o["x"], o["y"]]).astype(float).reshape(-1, 2),
        weight=np.ones(len(o["x"])),
        n_markers=len(doc["marker_ids"]),
        n_views=n_views,
        centre_xy_px=(doc["width"] / 2.0, doc["height"] / 2.0),
    )
    series = Series(
        obs=obs,
        marker_ids=np.asarray(doc["marker_ids"]),
        nominal_tilt_deg=np.asarray(doc["nominal_tilt_deg"], dtype=float),
        tilt_axis_deg=float(doc["tilt_axis_deg"]),
        width=int(doc["width"]),
        height=int(doc["height"]),
        excluded=np.asarray(doc["excluded"], dtype=bool),
    )
    return Prepared(
        series=series,
        raw_tilt_deg=np.asarray(doc["raw_tilt_deg"], dtype=float),
        prexg=None if doc["prexg"] is None else np.asarray(doc["prexg"], dtype=float),
        pixel_size_angstrom=float(doc["pixel_size_angstrom"]),
        dropped_markers=doc["dropped_markers"],
        weak_views=doc["weak_views"],
        empty_views=doc["empty_views"],
        excluded_views=doc["excluded_views"],
        ignored_observations=int(doc["ignored_observations"]),
        stack=doc.get("stack"),
    )


def save_state(path, state: AlignmentState, extra=None):
    """Write an :class:`AlignmentState` as JSON (angles in degrees)."""
    v = full_views(state.views)
    doc = {
        "reference_view": state.reference_view,
        "views": {
            "tilt_deg": np.rad2deg(v[:, 0]).tolist(),
            "rotation_deg": np.rad2deg(v[:, 1]).tolist(),
            "scale": v[:, 2].tolist(),
            "shift_x_px": v[:, 3].tolist(),
            "shift_y_px": v[:, 4].tolist(),
            "dmag": v[:, 5].tolist(),
            "skew_deg": np.rad2deg(v[:, 6]).tolist(),
        },
        "points_xyz_px": state.points_xyz_px.tolist(),
        "robust_weight": state.robust_weight.tolist(),
        "stages": [s.to_dict() for s in state.stages],
    }
    if extra:
        doc.update(extra)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)


def load_state(path) -> AlignmentState:
    """Read what :func:`save_state` wrote."""
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    v = doc["views"]
    views = np.column_stack([
        np.deg2rad(v["tilt_deg"]), np.deg2rad(v["rotation_deg"]), v["scale"], v["shift_x_px"], v["shift_y_px"],
        v.get("dmag", np.zeros(len(v["scale"]))), np.deg2rad(v.get("skew_deg", np.zeros(len(v["scale"])))),
    ]).astype(float)
    return AlignmentState(
        views=views,
        points_xyz_px=np.asarray(doc["points_xyz_px"], dtype=float).reshape(-1, 3),
        robust_weight=np.asarray(doc["robust_weight"], dtype=float),
        reference_view=int(doc["reference_view"]),
        stages=tuple(StageReport(**s) for s in doc["stages"]),
    )
