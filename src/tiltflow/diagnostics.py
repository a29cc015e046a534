"""Leave-out errors and standard errors from the Gauss-Newton hat matrix.

At the least-squares solution, removing observation ``k`` and re-fitting
everything (alignment and 3D positions) changes its residual, to first
order, to ``(I - H_kk)^-1 r_k`` where ``H_kk = J_k (J^T J)^-1 J_k^T`` is
its 2x2 leverage block (Cook & Weisberg; exact for the linearised
problem).  ``(J^T J)^-1`` comes from the same Schur complement the solver
uses, so this costs about one solver iteration plus the inverse of the
reduced system.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from . import projection
from .align import stage_layout
from .solver import BundleProblem, Layout, Observations
from .stages import FULL_MODEL, get_stage

log = logging.getLogger(__name__)

#: Leverage above which removing an observation leaves something undetermined.
LEVERAGE_LIMIT = 0.99


@dataclasses.dataclass(frozen=True)
class LeaveOut:
    """Leave-one-out prediction errors of every observation.

    Attributes
    ----------
    resid_xy_px : ndarray, shape (n_obs, 2)
        ``fit - observed`` when the observation is left out of the fit
        (alignment re-fitted too).
    leverage : ndarray, shape (n_obs,)
        Largest eigenvalue of the observation's 2x2 hat block.
    undetermined : ndarray of bool, shape (n_obs,)
        Leverage above :data:`LEVERAGE_LIMIT`: without this point a view
        or a marker is not determined; kept out of :attr:`error`.
    error : float
        Mean length of the leave-out residuals (determined points with
        weight > 0), pixels.
    imod_resid_xy_px : ndarray, shape (n_obs, 2)
        IMOD's version: only the marker's 3D position re-fitted, the
        alignment held (optimistic when views have few markers).
    imod_error : float
    """

    resid_xy_px: np.ndarray
    leverage: np.ndarray
    undetermined: np.ndarray
    error: float
    imod_resid_xy_px: np.ndarray
    imod_error: float


def _solve2(a, r):
    """Solve stacked 2x2 systems ``a (n,2,2) x = r (n,2)``."""
    det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]
    det = np.where(np.abs(det) < 1e-300, np.nan, det)
    x0 = (a[:, 1, 1] * r[:, 0] - a[:, 0, 1] * r[:, 1]) / det
    x1 = (-a[:, 1, 0] * r[:, 0] + a[:, 0, 0] * r[:, 1]) / det
    return np.column_stack([x0, x1])


def _max_eig2(h):
    tr = h[:, 0, 0] + h[:, 1, 1]
    det = h[:, 0, 0] * h[:, 1, 1] - h[:, 0, 1] * h[:, 1, 0]
    return 0.5 * tr + np.sqrt(np.maximum(0.25 * tr**2 - det, 0.0))


@dataclasses.dataclass(frozen=True)
class Covariance:
    """The normal equations of the full model at a solution and the blocks of their inverse.

    One set-up serves the leave-out errors and the standard errors.

    Attributes
    ----------
    obs : Observations
        The observations with their weights in the fit.
    layout : Layout
        The full model's free parameters (the polish stage's layout).
    cost : float
        ``0.5 sum w r^2`` at the solution, px^2.
    normal : NormalEquations
        Schur-ordered ``J^T J`` and ``J^T r``.
    hee_inv : ndarray, shape (n_groups, b, b)
    w : ndarray, shape (n_groups, b, m)
        ``Hee^-1 Hek``.
    s_inv : ndarray, shape (m, m)
        Inverse of the reduced (Schur) system: ``C_kk = S^-1``,
        ``C_ek = -W S^-1``, ``C_ee = Hee^-1 + W S^-1 W^T``.
    """

    obs: Observations
    layout: Layout
    cost: float
    normal: object
    hee_inv: np.ndarray
    w: np.ndarray
    s_inv: np.ndarray


def covariance(series, state, options):
    """:class:`Covariance` of the full model (:data:`tiltflow.stages.FULL_MODEL`) at ``state``.

    Parameters
    ----------
    series : tiltflow.model.Series
    state : tiltflow.model.AlignmentState
        The final solution; its fit weights are used.
    options : tiltflow.options.AlignOptions
        Which parameters the model has.
    """
    obs = series.obs.with_weight(state.fit_weight(series.obs))
    last = state.stages[-1] if state.stages else None
    distortion = last.distortion if last is not None and get_stage(last.name).distortion else "off"
    layout = stage_layout(FULL_MODEL, series, state, options, obs.weight, distortion)
    cost, ne = BundleProblem(obs, layout, "auto").linearize((state.views, state.points_xyz_px))
    hee_inv, w, s_inv = _covariance_blocks(ne)
    return Covariance(obs, layout, cost, ne, hee_inv, w, s_inv)


def leave_out(series, state, options, cov=None):
    """Leave-one-out residuals of all observations at ``state``.

    Parameters
    ----------
    series : tiltflow.model.Series
    state : tiltflow.model.AlignmentState
        The final solution; its weights are used.
    options : tiltflow.options.AlignOptions
        Which parameters the model has (the polish-stage layout).
    cov : Covariance, optional
        :func:`covariance` of the same state, if already computed.

    Returns
    -------
    LeaveOut
    """
    cov = covariance(series, state, options) if cov is None else cov
    obs, ne = cov.obs, cov.normal
    views, points = state.views, state.points_xyz_px
    st = ne.structure
    m = st.n_kept
    pred, jv, jp = projection.project_with_jacobian(points, views, obs.marker_index, obs.view_index, obs.centre_xy_px)
    sw = np.sqrt(obs.weight)[:, None, None]
    r = (pred - obs.xy_px) * sw[:, :, 0]

    g, je, jk, kpos = st.blocks(jv * sw, jp * sw)
    valid = kpos < m
    jk = jk * valid[:, None, :]
    kp = np.where(valid, kpos, 0)
    h = _hat_blocks(cov, g, je, jk, kp)
    lev = _max_eig2(h)
    undetermined = lev > LEVERAGE_LIMIT
    i_minus_h = np.eye(2)[None] - h
    loo = _solve2(i_minus_h, r)
    # back to unweighted pixels
    wsafe = np.where(obs.weight > 0, np.sqrt(obs.weight), 1.0)[:, None]
    loo = loo / wsafe
    loo[obs.weight == 0] = (pred - obs.xy_px)[obs.weight == 0]
    use = (~undetermined) & (obs.weight > 0) & np.isfinite(loo).all(axis=1)
    error = float(np.mean(np.hypot(loo[use, 0], loo[use, 1]))) if use.any() else float("nan")

    imod = _imod_leave_out(obs, jp * sw, r) / wsafe
    imod_use = (obs.weight > 0) & np.isfinite(imod).all(axis=1)
    imod_error = float(np.mean(np.hypot(imod[imod_use, 0], imod[imod_use, 1]))) if imod_use.any() else float("nan")
    return LeaveOut(loo, lev, undetermined, error, imod, imod_error)


#: Bytes of ``W S^-1`` (groups x block x kept unknowns) formed at a time by :func:`_group_chunks`:
#: the diagnostics of a patch-tracking problem (20,000 markers x 600 view unknowns) stay within
#: memory linear in the observations.
CHUNK_BYTES = 32 * 2**20


def _group_chunks(cov):
    """``(groups, B, A)`` for consecutive chunks of eliminated groups.

    ``B = W S^-1`` (n, b, m) is the groups' rows of ``-C_ek``, ``A = W S^-1 W^T`` (n, b, b) the
    part of ``C_ee`` beyond ``Hee^-1``; a chunk holds at most :data:`CHUNK_BYTES` of ``B``.
    """
    n_groups, b, m = cov.w.shape
    per_group = max(b * m * 8, 1)
    step = max(1, CHUNK_BYTES // per_group)
    for lo in range(0, n_groups, step):
        w = cov.w[lo:lo + step]
        if m:
            bmat = (w.reshape(-1, m) @ cov.s_inv).reshape(w.shape)
            a = np.einsum("gbm,gcm->gbc", bmat, w)
        else:
            bmat, a = w, np.zeros((len(w), b, b))
        yield slice(lo, lo + len(w)), bmat, a


def _hat_blocks(cov, g, je, jk, kp):
    """The 2x2 hat block ``J_n (J^T J)^-1 J_n^T`` of every observation, shape (n_obs, 2, 2).

    With ``C_ee = Hee^-1 + W S^-1 W^T``, ``C_ek = -W S^-1`` and ``C_kk = S^-1``, computed per chunk
    of eliminated groups (:func:`_group_chunks`): memory stays linear in the observations (no
    observations x kept unknowns array).

    Parameters
    ----------
    g : ndarray of int, shape (n_obs,)
        Eliminated group of each observation.
    je : ndarray, shape (n_obs, 2, b)
    jk : ndarray, shape (n_obs, 2, nk)
        Weighted derivatives by the group's and by the kept unknowns (0 where held).
    kp : ndarray of int, shape (n_obs, nk)
        Kept positions of ``jk``'s columns (any valid position where held).
    """
    h = np.zeros((len(g), 2, 2))
    m = cov.s_inv.shape[0]
    order = np.argsort(g, kind="stable")
    bounds = np.searchsorted(g[order], np.arange(len(cov.w) + 1))
    for groups, bmat, a in _group_chunks(cov):
        idx = order[bounds[groups.start]:bounds[groups.stop]]
        gl = g[idx] - groups.start
        e, k = je[idx], jk[idx]
        hc = np.einsum("nrb,nbc,nsc->nrs", e, cov.hee_inv[g[idx]] + a[gl], e)
        if m:
            # cross terms -J_e W S^-1 J_k^T (and transpose), then J_k S^-1 J_k^T
            bk = bmat[gl[:, None], :, kp[idx]]  # (n, nk, b)
            cross = -np.einsum("nrb,nkb,nsk->nrs", e, bk, k)
            hc += cross + cross.transpose(0, 2, 1)
            ckk = cov.s_inv[kp[idx][:, :, None], kp[idx][:, None, :]]  # (n, nk, nk)
            hc += np.einsum("nrk,nkl,nsl->nrs", k, ckk, k)
        h[idx] = hc
    return h


def _covariance_blocks(ne):
    """Blocks of ``(J^T J)^-1`` through the Schur complement.

    Returns ``(hee_inv (g, b, b), w = hee_inv @ hek (g, b, m), s_inv (m, m))``:
    ``C_kk = S^-1``, ``C_ek = -W S^-1``, ``C_ee = Hee^-1 + W S^-1 W^T``.
    """
    st = ne.structure
    b, m = st.block_size, st.n_kept
    hee = ne.hee.copy()
    gi, si = np.nonzero(~st.e_free)
    hee[gi, si, si] = 1.0
    try:
        hee_inv = np.linalg.inv(hee)
    except np.linalg.LinAlgError:
        bad = [int(st.group_entity[g]) for g in range(st.n_groups) if np.linalg.matrix_rank(hee[g]) < b]
        log.warning("%s blocks %s are not determined by their weighted observations; their standard errors and "
                    "leave-out errors use a pseudo-inverse and are not meaningful",
                    "marker" if st.eliminate == "points" else "view", bad)
        hee_inv = np.linalg.pinv(hee)
    hee_inv[gi, si, :] = 0.0
    hee_inv[gi, :, si] = 0.0
    if m:
        w = hee_inv @ ne.hek
        nb = st.n_groups * b
        s = ne.hkk - ne.hek.reshape(nb, m).T @ w.reshape(nb, m)
        try:
            l_inv = np.linalg.inv(np.linalg.cholesky(s))  # S^-1 = L^-T L^-1 (numpy only: no scipy.linalg load)
            s_inv = l_inv.T @ l_inv
        except np.linalg.LinAlgError:
            log.warning("the reduced normal equations are singular (a view or marker is not determined by its "
                        "weighted observations); standard errors and leave-out errors use a pseudo-inverse")
            s_inv = np.linalg.pinv(s)
    else:
        w = np.zeros((st.n_groups, b, 0))
        s_inv = np.zeros((0, 0))
    return hee_inv, w, s_inv


@dataclasses.dataclass(frozen=True)
class StandardErrors:
    """Standard errors of the solved parameters (Gauss-Newton covariance at the solution).

    Attributes
    ----------
    views : ndarray, shape (n_views, 7)
        Per view: tilt (rad), rotation (rad), scale, dx, dy (px), dmag, skew (rad); 0 where held
        (gauge, tied or interpolated parameters).
    points_xyz_px : ndarray, shape (n_markers, 3)
    sigma_px : float
        Residual scale per coordinate: ``sqrt(sum w r^2 / (n_residuals - n_params))``.
    """

    views: np.ndarray
    points_xyz_px: np.ndarray
    sigma_px: float


def standard_errors(series, state, options, cov=None):
    """Standard errors ``sigma * sqrt(diag((J^T J)^-1))`` of the polish-stage parameters.

    ``cov`` is :func:`covariance` of the same state, if already computed.
    """
    cov = covariance(series, state, options) if cov is None else cov
    obs, layout, cost, ne = cov.obs, cov.layout, cov.cost, cov.normal
    hee_inv, s_inv = cov.hee_inv, cov.s_inv
    diag_e = np.einsum("gbb->gb", hee_inv).copy()
    for groups, _, a in _group_chunks(cov):
        diag_e[groups] += np.einsum("gbb->gb", a)
    diag_k = np.diag(s_inv).copy()
    var = ne.to_flat(diag_e, diag_k)
    n_res = 2 * int((obs.weight > 0).sum())
    dof = max(n_res - layout.n_params, 1)
    sigma = float(np.sqrt(2.0 * cost / dof))
    se = sigma * np.sqrt(np.maximum(var, 0.0))
    view_se = _view_standard_errors(layout, ne, se, sigma, s_inv)
    point_se = np.where(layout.point_map >= 0, se[np.maximum(layout.point_map, 0)], 0.0)
    return StandardErrors(view_se, point_se, sigma)


def _view_standard_errors(layout, ne, se, sigma, s_inv):
    """Standard error of every view parameter, shape (n_views, N_VIEW).

    A parameter that follows one unknown has that unknown's; one
    interpolated between two group centres (both kept unknowns) has
    ``sigma sqrt(w^T C w)`` with the centres' covariance ``C``.
    """
    vm, vw = layout.view_map, layout.view_weight
    out = np.where(vm[:, :, 0] >= 0, se[np.maximum(vm[:, :, 0], 0)] * np.abs(vw[:, :, 0]), 0.0)
    two = (vm[:, :, 0] >= 0) & (vm[:, :, 1] >= 0)
    if two.any():
        st = ne.structure
        pos = np.full(layout.n_params, -1)
        pos[st.kept] = np.arange(st.n_kept)
        i0, i1 = pos[vm[:, :, 0][two]], pos[vm[:, :, 1][two]]
        w0, w1 = vw[:, :, 0][two], vw[:, :, 1][two]
        var = w0**2 * s_inv[i0, i0] + w1**2 * s_inv[i1, i1] + 2 * w0 * w1 * s_inv[i0, i1]
        out[two] = sigma * np.sqrt(np.maximum(var, 0.0))
    return out


def _imod_leave_out(obs, jp, r):
    """Leave-out residuals with only the marker's 3D position re-fitted."""
    n_m = obs.n_markers
    a = np.einsum("nri,nrj->nij", jp, jp)
    hpp = np.zeros((n_m, 3, 3))
    np.add.at(hpp, obs.marker_index, a)
    hpp_inv = np.linalg.pinv(hpp)
    h = np.einsum("nri,nij,nsj->nrs", jp, hpp_inv[obs.marker_index], jp)
    return _solve2(np.eye(2)[None] - h, r)
