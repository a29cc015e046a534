"""Levenberg-Marquardt bundle solver for the fiducial model.

Public API: :class:`Observations`, :class:`Layout`, :func:`solve_bundle`,
:class:`LMOptions`, :class:`LMReport`, :data:`TERMINATION_MESSAGES`.
"""

from ..model import Observations
from ..options import LMOptions
from ._bundle import (
    BundleProblem,
    BundleSolution,
    Layout,
    blas_threads,
    keep_freed_memory,
    solve_bundle,
    warm_up,
    window_medians,
)
from ._lm import TERMINATION_MESSAGES, LMReport, levenberg_marquardt
from ._schur import SchurStructure

__all__ = [
    "BundleProblem",
    "BundleSolution",
    "Layout",
    "LMOptions",
    "LMReport",
    "Observations",
    "SchurStructure",
    "ScipyProblem",
    "TERMINATION_MESSAGES",
    "blas_threads",
    "keep_freed_memory",
    "levenberg_marquardt",
    "solve_bundle",
    "warm_up",
    "window_medians",
]


def __getattr__(name):
    # the scipy.sparse reference problem (tests, benchmarks) is imported on first use, not by every solve
    if name == "ScipyProblem":
        from ._reference import ScipyProblem

        return ScipyProblem
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
