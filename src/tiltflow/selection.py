"""Keep distortion only where it generalises: the leave-out test of ``align.distortion``.

Per-view tilts and an X-stretch are told apart only through the markers'
depth, so on a series without distortion the grouped stretch still absorbs
noise: measured on the four simulations of ``tests/test_accuracy.py`` it
predicts withheld points 3-9 % worse than the model without it.  On IMOD's
real data it predicts them 1-6 % better.  Which applies to a series is
decided by its own leave-one-out errors (:func:`tiltflow.diagnostics.leave_out`,
the alignment re-fitted without each observation): the stages that free
distortion are solved a second time without it, from the same start, and
distortion is kept only when it lowers the mean leave-out error by more than
``align.distortion_significance`` standard errors of the paired
per-observation difference.  Measured (leave-out test statistic ``z``, the
mean difference over its standard error): the four simulations without
distortion, five withholding draws each, -1.3 ... +2.8 (all 20 dropped);
IMOD's data sets BBa -5.6, BBb -3.1, UI-test BBa -5.1, UI-test BBb -4.1,
midzone2a -14.9, midzone2b -11.0 (withholding draws: at most -2.7); a
simulated 1 % stretch -19.  The observations' leave-out errors are treated
as independent; they are not quite (shared markers and views), which is one
reason the threshold is 2 and not lower.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from .align import run_stage
from .diagnostics import leave_out
from .stages import STAGE_NAMES

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistortionTest:
    """The leave-out comparison of a solution with distortion and one without.

    Attributes
    ----------
    mode : str
        The distortion mode tested (``grouped`` or ``per_view``).
    kept : bool
        Whether the solution with distortion was kept.
    significance : float
        Standard errors the leave-out error had to fall by.
    z : float
        Mean of ``|leave-out residual with| - |without|`` over the
        observations used in both fits, divided by its standard error
        (negative: distortion predicts left-out points better).
    n_compared : int
        Observations in that mean.
    leave_out_with, leave_out_without : float
        Mean leave-out error of each solution, pixels (each over its own
        determined, weighted observations, as ``summary.json`` ->
        ``leave_out_error``).
    mean_residual_with, mean_residual_without, rms_with, rms_without : float
        The last stage's residuals of each solution, pixels.
    stage : str
        The last stage (the one whose solution is reported).
    seconds : float
        Time of the test: the second solve and both leave-out errors.
    """

    mode: str
    kept: bool
    significance: float
    z: float
    n_compared: int
    leave_out_with: float
    leave_out_without: float
    mean_residual_with: float
    mean_residual_without: float
    rms_with: float
    rms_without: float
    stage: str
    seconds: float

    @property
    def ratio(self):
        """``leave_out_with / leave_out_without`` (below 1: distortion generalises here)."""
        return self.leave_out_with / self.leave_out_without if self.leave_out_without > 0 else float("nan")

    def to_dict(self):
        return {**dataclasses.asdict(self), "leave_out_ratio_with_to_without": self.ratio}


def paired_z(a, b):
    """Mean of ``a - b`` over its standard error (``nan`` with fewer than 2 pairs or no spread).

    Parameters
    ----------
    a, b : ndarray, shape (n,)
        Paired values (leave-out error lengths of the same observations).
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(d) < 2:
        return float("nan")
    sd = np.std(d, ddof=1)
    return float(np.mean(d) / (sd / np.sqrt(len(d)))) if sd > 0 else float("nan")


def choose_distortion(series, state, start, options, threads=1):
    """Keep the distortion solution ``state`` only if it generalises better than the model without it.

    Parameters
    ----------
    series : tiltflow.model.Series
    state : AlignmentState
        After the last stage, solved with distortion (its last report's
        ``distortion`` is not ``"off"``).
    start : AlignmentState
        The state the stages that free distortion started from (after the
        ``main`` stage); they are solved again from it with
        ``distortion: off``.
    options : tiltflow.options.AlignOptions
        ``distortion_significance`` decides: distortion is kept when the
        leave-out test statistic ``z`` is at or below ``-significance``.
    threads : int
        BLAS threads of the second solve.

    Returns
    -------
    AlignmentState
        ``state`` or the solution without distortion, its last stage report
        carrying the test (``distortion_test``, :meth:`DistortionTest.to_dict`)
        and the test's time added to its ``seconds``.

    Raises
    ------
    ValueError
        ``state`` was not solved with distortion, or ``start`` is not a
        state of an earlier stage.
    """
    t0 = time.perf_counter()
    last = state.stages[-1] if state.stages else None
    if last is None or last.distortion == "off":
        raise ValueError("state: expected a solution whose last stage solved distortion, got "
                         f"{'no stages' if last is None else f'stage {last.name} without distortion'}")
    first = STAGE_NAMES.index(start.stages[-1].name) + 1 if start.stages else 0
    end = STAGE_NAMES.index(last.name)
    if first > end:
        raise ValueError(f"start: expected a state before stage {last.name}, got one after stage "
                         f"{start.stages[-1].name}")
    plain = dataclasses.replace(options, distortion="off")
    other = start
    for name in STAGE_NAMES[first:end + 1]:  # the stages the run solved (polish is last when it runs)
        other = run_stage(name, series, other, plain, threads)
    with_ = leave_out(series, state, options)
    without = leave_out(series, other, plain)
    use = ((state.fit_weight(series.obs) > 0) & (other.fit_weight(series.obs) > 0)
           & ~with_.undetermined & ~without.undetermined
           & np.isfinite(with_.resid_xy_px).all(axis=1) & np.isfinite(without.resid_xy_px).all(axis=1))
    z = paired_z(np.hypot(*with_.resid_xy_px[use].T), np.hypot(*without.resid_xy_px[use].T))
    significance = options.distortion_significance
    kept = bool(np.isfinite(z) and z <= -significance)
    alt = other.stages[-1]
    test = DistortionTest(
        mode=last.distortion, kept=kept, significance=significance, z=z, n_compared=int(use.sum()),
        leave_out_with=with_.error, leave_out_without=without.error,
        mean_residual_with=last.mean_residual, mean_residual_without=alt.mean_residual,
        rms_with=last.rms, rms_without=alt.rms, stage=last.name, seconds=time.perf_counter() - t0,
    )
    args = (last.distortion, test.leave_out_with, test.leave_out_without, test.ratio, z)
    if kept:
        log.info("distortion (%s) kept: leave-out error %.4f px with, %.4f px without (ratio %.3f, z %+.2f)", *args)
        chosen = state
    else:
        log.warning("distortion (%s) NOT kept: it does not predict left-out points significantly better than the "
                    "model without it (leave-out error %.4f px with, %.4f px without, ratio %.3f, z %+.2f; kept "
                    "only at z <= %.2f, align.distortion_significance); the solution without distortion is used",
                    *args, -significance)
        chosen = other
    report = dataclasses.replace(chosen.stages[-1], seconds=chosen.stages[-1].seconds + test.seconds,
                                 distortion_test=test.to_dict())
    return dataclasses.replace(chosen, stages=chosen.stages[:-1] + (report,))
