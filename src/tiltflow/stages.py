"""The alignment stages, declared once, as data.

A stage says which parameter groups it frees, whether it re-weights
observations robustly and whether it resets parameters first; the one
generic runner (:func:`tiltflow.align.run_stage`) and the layout builder
(:func:`tiltflow.align.stage_layout`) read nothing else, and the workflow
derives from it which config keys each stage's rule depends on (so that a
changed key re-runs only the stages that read it).

The gauge follows from the declaration, not from the stage's name:

* 3D positions free: one marker (the one seen in most views) is held.
* ``hold_reference_xy``: the reference view's markers keep their x, y
  (the initial stage, whose scales and tilts are held).
* scale free: the reference view's scale is held at 1.
* tilt free together with the 3D positions: the reference view's tilt is
  held (a rotation of the specimen about the tilt axis is a pure gauge).
* distortion free: the reference view's stretch and skew are held at 0 (a
  stretch or shear common to all views is a stretch or shear of the
  specimen).
* grouped parameters: the reference view is a group centre, so that what
  it holds is held exactly.

Shifts are free in every stage for every view with observations; the
rotation follows ``align.rotation`` in every stage.

This module imports nothing beyond the standard library.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Stage:
    """One L-M stage of the staged fiducial alignment (Jou et al.).

    Attributes
    ----------
    name : str
    points : bool
        The markers' 3D positions are free (gauge: see the module docstring).
    hold_reference_xy : bool
        With free positions, the markers seen in the reference view keep
        their x, y.
    scale : bool
        Magnifications are free (when ``align.scale`` is ``per_view``).
    tilt : bool
        Tilt angles are free (per view or one offset, as ``align.tilt`` says).
    robust : bool
        Observations are re-weighted with Tukey's bisquare (when ``robust``
        is on) until the weights settle.
    reset : bool
        Before solving, scales are set to 1, tilts to nominal and, with
        ``align.rotation: single``, the rotations to their mean.
    distortion : bool
        X-stretch and skew are free (when ``align.distortion`` is not
        ``off``); the reference view's are held at 0.
    """

    name: str
    points: bool
    hold_reference_xy: bool = False
    scale: bool = False
    tilt: bool = False
    robust: bool = False
    reset: bool = False
    distortion: bool = False

    def config_keys(self):
        """The config keys (``align.*`` names and ``robust``) the stage's result depends on."""
        keys = ["rotation", "rotation_group", "max_iterations", "ftol"]
        if self.scale:
            keys += ["scale", "scale_group"]
        if self.tilt:
            keys += ["tilt", "tilt_group"]
        if self.distortion:
            keys += ["distortion", "stretch_group", "skew_group", "distortion_min_ratio"]
        if self.robust:
            keys.append("robust")
        return tuple(keys)


#: The stages in the order they run (the coarse stage, which makes the start, comes before).
STAGES = (
    Stage("initial", points=True, hold_reference_xy=True, reset=True),
    Stage("main", points=True, scale=True, robust=True),
    Stage("tilt", points=False, scale=True, tilt=True, robust=True, distortion=True),
    Stage("polish", points=True, scale=True, tilt=True, robust=True, distortion=True),
)

STAGE_NAMES = tuple(s.name for s in STAGES)
#: The stage whose free parameters define the full model (leave-out error, standard errors).
FULL_MODEL = "polish"


def get_stage(name):
    """The :class:`Stage` called ``name``.

    Raises
    ------
    ValueError
        ``name`` is not a stage.
    """
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise ValueError(f"stage must be one of {', '.join(STAGE_NAMES)}; got {name!r}")
