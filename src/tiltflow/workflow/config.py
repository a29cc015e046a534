"""From the workflow config to rule params and option dataclasses.

Each rule's ``params`` hold exactly the config values the rule reads, so
that Snakemake (whose default rerun triggers include params) re-runs a rule
when, and only when, one of *its* values changes: the ``*_params``
functions below say which keys each rule reads; the stages' keys come from
their declarations (:mod:`tiltflow.stages`).

Imports only the standard library and the light :mod:`tiltflow.options`
and :mod:`tiltflow.stages` modules: building the DAG must stay fast.
"""

from __future__ import annotations

import dataclasses

from ..options import AlignOptions, CoarseOptions, LMOptions, MatchingOptions, ReconOptions
from ..stages import STAGES, get_stage

#: ``reconstruct`` keys whose option field has another name (units in the name).
RECON_FIELD_NAMES = {"thickness": "thickness_px", "z_offset": "z_offset_px"}
#: ``projection_matching`` keys whose option field has another name.
MATCH_FIELD_NAMES = {"finest_size": "finest_size_px", "thickness": "thickness_px", "band_height": "band_height_px",
                     "tolerance": "tolerance_px"}

#: Config key -> (options class, field name): where each science key lands.  The config's defaults
#: (schema, shipped config.yaml, config/README.md) must equal these fields' defaults.
OPTION_FIELDS = {
    **{f"align.{k}": (AlignOptions, k) for k in ("rotation", "scale", "tilt", "distortion", "rotation_group",
                                                 "tilt_group", "scale_group", "stretch_group", "skew_group",
                                                 "distortion_min_ratio", "distortion_test", "distortion_significance",
                                                 "reference_view", "polish")},
    "align.max_iterations": (LMOptions, "max_iterations"),
    "align.ftol": (LMOptions, "ftol"),
    "robust": (AlignOptions, "robust"),
    **{f"coarse.{f.name}": (CoarseOptions, f.name) for f in dataclasses.fields(CoarseOptions)
       if f.name != "axis_search_pairs"},
    **{f"reconstruct.{k}": (ReconOptions, k) for k in ("binning", "flatten", "lowpass_cutoff", "lowpass_sigma",
                                                        "sirt_iterations", "slab_rows", "oversampling", "dtype")},
    **{f"reconstruct.{k}": (ReconOptions, field) for k, field in RECON_FIELD_NAMES.items()},
    **{f"projection_matching.{k}": (MatchingOptions, MATCH_FIELD_NAMES.get(k, k))
       for k in ("finest_size", "thickness", "band_height", "reconstruction", "max_iterations", "tolerance",
                 "with_markers")},
}


def stage_params(stage, config):
    """The config values the L-M stage ``stage`` reads, as a flat dict (its rule's params); the run's
    last stage with distortion asked for also reads ``distortion_test`` and ``distortion_significance``."""
    align = config.get("align") or {}
    values = {**align, "robust": config.get("robust")}  # None: the option's default
    params = {k: values.get(k) for k in get_stage(stage).config_keys()}
    if _last_with_distortion(stage, config):
        params.update({k: align.get(k) for k in ("distortion_test", "distortion_significance")})
    return params


def _last_with_distortion(stage, config):
    """``stage`` is the run's last and ``align.distortion`` asks for distortion."""
    return stage == final_stage_name(config) and (config.get("align") or {}).get("distortion") not in (
        None, False, "off")


def final_stage_name(config):
    """The last alignment stage a run has: ``polish``, or ``tilt`` with ``align.polish: false``."""
    polish = (config.get("align") or {}).get("polish")
    return "polish" if polish is None or polish else "tilt"


def distortion_start_stage(stage, config):
    """The stage whose state the leave-out test of distortion starts from, when ``stage`` is the run's
    last, distortion is asked for and ``distortion_test`` is on
    (:func:`tiltflow.selection.choose_distortion`); None otherwise.

    That is the stage before the first one that frees distortion (``main``): the test solves the
    stages from there again without distortion.
    """
    if not _last_with_distortion(stage, config) or (config.get("align") or {}).get("distortion_test") is False:
        return None
    first = next(i for i, s in enumerate(STAGES) if s.distortion)
    return STAGES[first - 1].name


def coarse_params(config, has_stack):
    """Params of the coarse stage: the reference view and, with a stack, the ``coarse`` section."""
    params = {"reference_view": (config.get("align") or {}).get("reference_view")}
    if has_stack:
        params["coarse"] = dict(config.get("coarse") or {})
    return params


def write_params(config, has_stack=False):
    """Params of ``write_alignment``: what the full model frees (for the leave-out and standard errors)
    and, for a series with a stack, whether its images refine the marker solution
    (``projection_matching.with_markers``; the whole section when they do)."""
    align = config.get("align") or {}
    params = {k: align.get(k) for k in ("rotation", "scale", "tilt", "distortion", "rotation_group", "tilt_group",
                                        "scale_group", "stretch_group", "skew_group", "distortion_min_ratio")}
    if has_stack:
        matching = dict(config.get("projection_matching") or {})
        params["projection_matching"] = matching if matching.get("with_markers") else {"with_markers": False}
    return params


def images_params(config):
    """Params of ``align_images``: the ``coarse`` and ``projection_matching`` sections (without
    ``with_markers``, which concerns series with markers only)."""
    matching = {k: v for k, v in (config.get("projection_matching") or {}).items() if k != "with_markers"}
    return {"coarse": dict(config.get("coarse") or {}), "projection_matching": matching}


def recon_params(config):
    """Params of ``reconstruct_tomogram``: the ``reconstruct`` section."""
    return {"reconstruct": dict(config.get("reconstruct") or {})}


def _from_config(cls, values, names=None):
    """``cls`` built from the config ``values`` that are given (not None) and are its fields;
    the dataclass's own defaults stand for the rest.  ``names`` maps config keys to field names."""
    names = names or {}
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {names.get(k, k): v for k, v in values.items() if v is not None}
    return cls(**{k: v for k, v in kwargs.items() if k in fields})


def align_options(params):
    """:class:`~tiltflow.options.AlignOptions` from a (partial) flat dict of ``align`` values and ``robust``."""
    return _from_config(AlignOptions, {**params, "lm": _from_config(LMOptions, params)})


def coarse_options(params):
    """:class:`~tiltflow.options.CoarseOptions` from params holding a ``coarse`` section."""
    return _from_config(CoarseOptions, dict(params.get("coarse") or {}))


def recon_options(params):
    """:class:`~tiltflow.options.ReconOptions` from params holding a ``reconstruct`` section."""
    return _from_config(ReconOptions, dict(params.get("reconstruct") or {}), RECON_FIELD_NAMES)



def matching_options(params):
    """:class:`~tiltflow.options.MatchingOptions` from params holding a ``projection_matching`` section."""
    return _from_config(MatchingOptions, dict(params.get("projection_matching") or {}), MATCH_FIELD_NAMES)
