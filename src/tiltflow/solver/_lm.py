"""Levenberg-Marquardt iteration with Marquardt scaling (Nielsen's damping update).

The loop is independent of the problem: it needs ``linearize(state)``
returning ``(cost, normal_equations)``, ``cost(state)`` and
``apply(state, step)``.  Termination follows ``scipy.optimize.least_squares``
(``ftol``, ``xtol``, ``gtol``, iteration limit) with the same status codes.

Robust fits re-weight inside the loop (iteratively re-weighted least
squares without restarting): when an accepted step has nearly converged the
fit under the current weights (its cost decrease below
:data:`REWEIGHT_FTOL` of the cost, or a termination test fires), the
caller's ``reweight(state)`` may return new observation weights; the loop
then re-linearizes under them and goes on with its damping and scaling,
and terminates only once ``reweight`` returns None (the weights settled).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..options import LMOptions

#: A step reducing the cost by less than this fraction re-weights a robust fit (see the module docstring).
REWEIGHT_FTOL = 1e-3

#: Termination reasons, keyed by status (scipy.optimize.least_squares codes).
TERMINATION_MESSAGES = {
    0: "The maximum number of iterations is exceeded.",
    1: "`gtol` termination condition is satisfied.",
    2: "`ftol` termination condition is satisfied.",
    3: "`xtol` termination condition is satisfied.",
    4: "Both `ftol` and `xtol` termination conditions are satisfied.",
    5: "No step reduces the cost any more (damping exceeded 1e16); the point is a minimum to machine precision.",
}


@dataclasses.dataclass(frozen=True)
class LMReport:
    """What the loop did: final cost, counts and the termination reason."""

    initial_cost: float
    cost: float
    iterations: int
    accepted: int
    status: int
    message: str

    @property
    def success(self):
        return self.status > 0


def levenberg_marquardt(problem, state, options=LMOptions(), reweight=None):
    """Minimise ``cost = 0.5 * |r|^2`` from ``state``.

    Parameters
    ----------
    problem : object
        Provides ``linearize(state) -> (cost, NormalEquations)``,
        ``cost(state) -> float``, ``apply(state, step) -> state`` and
        ``norm(state, scale) -> float`` (size of the free parameters
        multiplied by ``scale``).
    state : object
        Starting point, passed back to ``problem`` unchanged in type.
    options : LMOptions
    reweight : callable, optional
        ``reweight(state) -> weights or None``: new observation weights at
        a nearly converged ``state`` (passed to ``problem.set_weight``), or
        None when they have settled (not called again).

    Returns
    -------
    state : object
        The best point found.
    report : LMReport
    """
    cost, ne = problem.linearize(state)
    initial_cost = cost
    diag_e, diag_k = ne.diagonal()
    diag_e = np.maximum(diag_e, 1e-12)
    diag_k = np.maximum(diag_k, 1e-12)
    mu, nu = options.initial_damping, 2.0
    iterations = accepted = 0
    status = 0
    if ne.structure.n_params == 0:
        return state, LMReport(cost, cost, 0, 0, 1, "No free parameters: nothing to solve.")

    def reweighted():
        """Ask for new weights at ``state``; True when they changed (the fit goes on under them)."""
        nonlocal reweight
        if reweight is None:
            return False
        weights = reweight(state)
        if weights is None:
            reweight = None
            return False
        problem.set_weight(weights)
        return True

    relinearize = False
    while iterations < options.max_iterations:
        if relinearize:
            cost, ne = problem.linearize(state)
            de, dk = ne.diagonal()
            diag_e = np.maximum(diag_e, de)
            diag_k = np.maximum(diag_k, dk)
            relinearize = False
        g = ne.gradient()
        scale = np.sqrt(ne.to_flat(diag_e, diag_k))
        if cost == 0.0 or np.max(np.abs(g) / scale) <= options.gtol * np.sqrt(2.0 * cost):
            if reweighted():
                relinearize = True
                continue
            status = 1
            break
        step = ne.solve(mu, diag_e, diag_k)
        iterations += 1
        if step is None:
            mu *= nu
            nu *= 2.0
            if mu > 1e16:
                if reweighted():
                    mu, nu, relinearize = options.initial_damping, 2.0, True
                    continue
                status = 5
                break
            continue
        new_state = problem.apply(state, step)
        new_cost = problem.cost(new_state)
        dscaled = scale * step
        predicted = 0.5 * (mu * float(dscaled @ dscaled) - float(g @ step))
        actual = cost - new_cost
        step_small = np.linalg.norm(dscaled) <= options.xtol * (problem.norm(state, scale) + options.xtol)
        if np.isfinite(new_cost) and actual > 0 and predicted > 0:
            rho = actual / predicted
            mu *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
            nu = 2.0
            f_small = actual <= options.ftol * cost and predicted <= options.ftol * cost
            near = f_small or step_small or actual <= REWEIGHT_FTOL * cost
            state, cost = new_state, new_cost
            accepted += 1
            relinearize = True
            if near and reweighted():
                continue
            if f_small or step_small:
                status = 4 if (f_small and step_small) else (2 if f_small else 3)
                break
        else:
            # a rejected step that the model predicted to gain (and lost) no more than ftol of the cost:
            # the cost is at its minimum to rounding (MINPACK's test counts rejected steps too)
            f_small = np.isfinite(new_cost) and abs(actual) <= options.ftol * cost and 0 <= predicted <= options.ftol * cost
            if step_small or f_small or mu * nu > 1e16:
                if reweighted():
                    mu, nu, relinearize = options.initial_damping, 2.0, True
                    continue
                status = 3 if step_small else (2 if f_small else 5)
                break
            mu *= nu
            nu *= 2.0
    return state, LMReport(initial_cost, cost, iterations, accepted, status, TERMINATION_MESSAGES[status])
