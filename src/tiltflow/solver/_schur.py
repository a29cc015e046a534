"""Normal equations of the bundle problem and their Schur-complement solve.

The unknowns are split into *eliminated* blocks -- either one block per
marker (its free x, y, z) or one block per view (its free view-local
parameters) -- and a *kept* set (everything else).  Every observation
touches at most one eliminated block, so ``H_ee`` is block diagonal and the
damped system reduces to a dense one on the kept set (Triggs et al.,
Ceres' SPARSE_SCHUR/DENSE_SCHUR)::

    S = H_kk - H_ke H_ee^-1 H_ek,   S dk = -g_k + H_ke H_ee^-1 g_e

:class:`SchurStructure` works out, once per problem layout, where each
entry of each observation's 8x8 block ``J_k^T J_k`` lands; the numbers are
then accumulated with ``np.bincount`` every iteration.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

N_COLS = 8  # 5 view columns + 3 point columns per observation


class SchurStructure:
    """Index bookkeeping for the structured normal equations.

    Parameters
    ----------
    columns : ndarray of int, shape (n_obs, 8)
        For each observation, the free-parameter index of its five view
        columns and three point columns, ``-1`` where the parameter is held.
    n_params : int
        Length of the free-parameter vector.
    point_params : ndarray of bool, shape (n_params,)
        True for parameters that are marker coordinates.
    param_owner : ndarray of int, shape (n_params,)
        For point parameters, the marker they belong to; for view
        parameters, the single view that uses them or ``-1`` when several
        views share them (a single rotation, a tilt offset).
    eliminate : {"auto", "points", "views"}
        Which blocks to eliminate; ``"auto"`` picks the choice that leaves
        the smaller dense system (``"views"`` puts shared view parameters in
        the kept set).
    """

    def __init__(self, columns, n_params, point_params, param_owner, eliminate="auto"):
        columns = np.asarray(columns, dtype=np.int64)
        point_params = np.asarray(point_params, dtype=bool)
        param_owner = np.asarray(param_owner, dtype=np.int64)
        n_point = int(point_params.sum())
        n_view = n_params - n_point
        view_local = (~point_params) & (param_owner >= 0)
        n_shared = int(((~point_params) & (param_owner < 0)).sum())
        if eliminate == "auto":
            eliminate = "views" if (n_point + n_shared) < n_view else "points"
        if eliminate not in ("points", "views"):
            raise ValueError(f"eliminate must be 'auto', 'points' or 'views', got {eliminate!r}")
        self.eliminate = eliminate
        elim = point_params if eliminate == "points" else view_local
        self.block_size = 3 if eliminate == "points" else 5
        b = self.block_size

        # groups: renumber owners of eliminated parameters 0..n_groups-1
        owners = param_owner[elim]
        uniq, group_of = np.unique(owners, return_inverse=True)
        self.n_groups = len(uniq)
        group = np.full(n_params, -1, dtype=np.int64)
        group[elim] = group_of
        slot = np.full(n_params, -1, dtype=np.int64)
        # slot = rank of the parameter within its group, in index order
        elim_idx = np.flatnonzero(elim)
        order = np.lexsort((elim_idx, group[elim_idx]))
        sorted_groups = group[elim_idx][order]
        starts = np.searchsorted(sorted_groups, sorted_groups, side="left")
        slot[elim_idx[order]] = np.arange(len(order)) - starts
        if len(order) and slot.max() >= b:
            raise ValueError("an eliminated block has more parameters than its block size")
        kept_pos = np.full(n_params, -1, dtype=np.int64)
        kept_idx = np.flatnonzero(~elim)
        kept_pos[kept_idx] = np.arange(len(kept_idx))
        self.n_kept = len(kept_idx)
        self.n_params = n_params
        self.group, self.slot, self.kept_pos = group, slot, kept_pos

        n_obs = columns.shape[0]
        valid = columns >= 0
        safe = np.where(valid, columns, 0)
        is_e = valid & elim[safe]
        is_k = valid & ~elim[safe]
        g_col = np.where(is_e, group[safe], -1)
        # every observation may touch at most one eliminated block
        g_obs = g_col.max(axis=1)
        if np.any((g_col >= 0) & (g_col != g_obs[:, None])):
            raise ValueError("an observation touches two eliminated blocks; the layout is not bundle-shaped")
        s_col = np.where(is_e, slot[safe], -1)
        k_col = np.where(is_k, kept_pos[safe], -1)
        m = self.n_kept

        obs = np.arange(n_obs)[:, None, None]
        ii = np.arange(N_COLS)[None, :, None]
        jj = np.arange(N_COLS)[None, None, :]
        src = (obs * N_COLS + ii) * N_COLS + jj  # flat index into (n_obs, 8, 8)

        ee = is_e[:, :, None] & is_e[:, None, :]
        tgt = (g_obs[:, None, None] * b + s_col[:, :, None]) * b + s_col[:, None, :]
        self._ee_src, self._ee_tgt = src[ee], tgt[ee]
        ek = is_e[:, :, None] & is_k[:, None, :]
        tgt = (g_obs[:, None, None] * b + s_col[:, :, None]) * m + k_col[:, None, :]
        self._ek_src, self._ek_tgt = src[ek], tgt[ek]
        kk = is_k[:, :, None] & is_k[:, None, :]
        tgt = k_col[:, :, None] * m + k_col[:, None, :]
        self._kk_src, self._kk_tgt = src[kk], tgt[kk]
        gsrc = np.arange(n_obs)[:, None] * N_COLS + np.arange(N_COLS)[None, :]
        self._ge_src = gsrc[is_e]
        self._ge_tgt = (g_obs[:, None] * b + s_col)[is_e]
        self._gk_src, self._gk_tgt = gsrc[is_k], k_col[is_k]
        # slots of each group that hold no parameter get an identity diagonal
        used = np.zeros((self.n_groups, b), dtype=bool)
        used[group[elim_idx], slot[elim_idx]] = True
        self._unused = ~used

    def assemble(self, jac, resid):
        """Accumulate ``J^T J`` and ``J^T r`` in block form.

        Parameters
        ----------
        jac : ndarray, shape (n_obs, 2, 8)
            Weighted Jacobian rows of each observation (view columns then
            point columns).
        resid : ndarray, shape (n_obs, 2)
            Weighted residuals.

        Returns
        -------
        NormalEquations
        """
        b, m, ng = self.block_size, self.n_kept, self.n_groups
        jtj = np.einsum("kri,krj->kij", jac, jac).ravel()
        jtr = np.einsum("kri,kr->ki", jac, resid).ravel()
        hee = np.bincount(self._ee_tgt, jtj[self._ee_src], minlength=ng * b * b).reshape(ng, b, b)
        hek = np.bincount(self._ek_tgt, jtj[self._ek_src], minlength=ng * b * m).reshape(ng, b, m)
        hkk = np.bincount(self._kk_tgt, jtj[self._kk_src], minlength=m * m).reshape(m, m)
        ge = np.bincount(self._ge_tgt, jtr[self._ge_src], minlength=ng * b).reshape(ng, b)
        gk = np.bincount(self._gk_tgt, jtr[self._gk_src], minlength=m)
        return NormalEquations(self, hee, hek, hkk, ge, gk)


class NormalEquations:
    """``J^T J`` and ``J^T r`` in the block layout of a :class:`SchurStructure`."""

    def __init__(self, structure, hee, hek, hkk, ge, gk):
        self.structure = structure
        self.hee, self.hek, self.hkk, self.ge, self.gk = hee, hek, hkk, ge, gk

    def diagonal(self):
        """Diagonal of ``J^T J`` as ``(diag_e (n_groups, b), diag_k (m,))``."""
        return np.einsum("gii->gi", self.hee).copy(), np.diag(self.hkk).copy()

    def gradient(self):
        """``J^T r`` as a flat free-parameter vector."""
        return self.to_flat(self.ge, self.gk)

    def to_flat(self, e, k):
        st = self.structure
        out = np.zeros(st.n_params)
        isel = st.group >= 0
        out[isel] = e[st.group[isel], st.slot[isel]]
        ksel = st.kept_pos >= 0
        out[ksel] = k[st.kept_pos[ksel]]
        return out

    def solve(self, mu, diag_e, diag_k):
        """Solve ``(J^T J + mu D) delta = -J^T r`` by the Schur complement.

        Parameters
        ----------
        mu : float
            Levenberg-Marquardt damping.
        diag_e, diag_k : ndarray
            Marquardt scaling ``D`` in the layout of :meth:`diagonal`.

        Returns
        -------
        ndarray, shape (n_params,) or None
            The step, or None when the damped system is not positive
            definite (the caller raises ``mu``).
        """
        st = self.structure
        hee = self.hee + mu * diag_e[:, :, None] * np.eye(st.block_size)
        hee[st._unused] = 0.0
        idx_g, idx_s = np.nonzero(st._unused)
        hee[idx_g, idx_s, idx_s] = 1.0
        try:
            hee_inv = np.linalg.inv(hee)
        except np.linalg.LinAlgError:
            return None
        m = st.n_kept
        nb = st.n_groups * st.block_size
        if m:
            w = np.matmul(hee_inv, self.hek)  # (n_groups, b, m)
            w_flat = w.reshape(nb, m)
            s = self.hkk - self.hek.reshape(nb, m).T @ w_flat
            s[np.diag_indices(m)] += mu * diag_k
            rhs = -self.gk + w_flat.T @ self.ge.reshape(nb)
            try:
                cho = scipy.linalg.cho_factor(s, check_finite=False)
            except np.linalg.LinAlgError:
                return None
            dk = scipy.linalg.cho_solve(cho, rhs, check_finite=False)
            de = np.einsum("gij,gj->gi", hee_inv, -self.ge - self.hek @ dk)
        else:
            dk = np.zeros(0)
            de = np.einsum("gij,gj->gi", hee_inv, -self.ge)
        step = self.to_flat(de, dk)
        if not np.all(np.isfinite(step)):
            return None
        return step
