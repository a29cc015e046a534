"""Normal equations of the bundle problem and their Schur-complement solve.

The unknowns are split into *eliminated* blocks -- either one block per
marker (its x, y, z) or one block per view (its five view-local
parameters) -- and a *kept* set (everything else: the view parameters, or
the marker coordinates plus any parameter shared by several views).  Every
observation touches exactly one eliminated block, so ``H_ee`` is block
diagonal and the damped system reduces to a dense one on the kept set
(Triggs et al.; Ceres' DENSE_SCHUR)::

    S = H_kk - H_ke H_ee^-1 H_ek,   S dk = -g_k + H_ke H_ee^-1 g_e

:class:`SchurStructure` works out once per layout where each product of an
observation's Jacobian columns lands; every iteration then only multiplies
and accumulates with ``np.bincount``.  Held parameters have no row: their
Jacobian columns are masked to zero (eliminated side) or sent to a dummy
row that is dropped (kept side), and unused block slots get a unit
diagonal.
"""

from __future__ import annotations

import numpy as np

VIEW_COLS = np.arange(5)
POINT_COLS = np.arange(5, 8)


class SchurStructure:
    """Index bookkeeping for the structured normal equations.

    Parameters
    ----------
    view_index, marker_index : ndarray of int, shape (n_obs,)
        View and marker of each observation.
    view_map : ndarray of int, shape (n_views, 5)
        Free-parameter index of each view parameter, ``-1`` if held;
        several views may share an index.
    point_map : ndarray of int, shape (n_markers, 3)
        Free-parameter index of each marker coordinate, ``-1`` if held.
    n_params : int
    eliminate : {"auto", "points", "views"}
        Which blocks to eliminate; ``"auto"`` picks the choice that leaves
        the smaller dense system.
    """

    def __init__(self, view_index, marker_index, view_map, point_map, n_params, eliminate="auto"):
        view_map = np.asarray(view_map, dtype=np.int64)
        point_map = np.asarray(point_map, dtype=np.int64)
        self.n_params = int(n_params)
        counts = np.bincount(view_map[view_map >= 0], minlength=n_params)
        local = (view_map >= 0) & (counts[np.maximum(view_map, 0)] == 1)
        shared_idx = np.unique(view_map[(view_map >= 0) & ~local])
        point_idx = point_map[point_map >= 0]
        view_idx = np.unique(view_map[view_map >= 0])
        n_kept_views = len(shared_idx) + len(point_idx)
        if eliminate == "auto":
            eliminate = "views" if n_kept_views < len(view_idx) else "points"
        if eliminate not in ("points", "views"):
            raise ValueError(f"eliminate must be 'auto', 'points' or 'views', got {eliminate!r}")
        self.eliminate = eliminate

        if eliminate == "points":
            e_map = point_map  # (n_markers, 3)
            self.e_cols, self.k_cols = POINT_COLS, VIEW_COLS
            group_of_obs = np.asarray(marker_index, dtype=np.int64)
            kept = view_idx
            k_map_obs = view_map[view_index]  # (n_obs, 5)
        else:
            e_map = np.where(local, view_map, -1)  # (n_views, 5)
            self.e_cols = VIEW_COLS
            shared_cols = np.flatnonzero(((view_map >= 0) & ~local).any(axis=0))
            self.k_cols = np.concatenate([POINT_COLS, shared_cols])
            group_of_obs = np.asarray(view_index, dtype=np.int64)
            kept = np.concatenate([shared_idx, point_idx])
            k_map_obs = np.concatenate(
                [point_map[marker_index], np.where(local, -1, view_map)[view_index][:, shared_cols]], axis=1
            )
        self.e_map = e_map
        self.n_groups, b = e_map.shape
        self.block_size = b
        m = len(kept)
        self.n_kept = m
        self.kept = kept
        kept_pos = np.full(n_params, m, dtype=np.int64)  # m = dummy row
        kept_pos[kept] = np.arange(m)
        kpos = np.where(k_map_obs >= 0, kept_pos[np.maximum(k_map_obs, 0)], m)  # (n_obs, nk)
        self.e_free = e_map >= 0
        self._obs_layout = (group_of_obs, kpos)
        self._targets = None
        # flat-vector positions of the eliminated parameters
        self._e_param = e_map[self.e_free]
        # kept-vector position of every view / point parameter (-1: held or eliminated)
        def kept_position(pmap, eliminated):
            pos = np.where(pmap >= 0, kept_pos[np.maximum(pmap, 0)], -1)
            pos[(pos == m) | eliminated] = -1
            return np.ascontiguousarray(pos)

        elim_view = (e_map >= 0) if eliminate == "views" else np.zeros(view_map.shape, dtype=bool)
        elim_point = (point_map >= 0) if eliminate == "points" else np.zeros(point_map.shape, dtype=bool)
        self.kpos_view = kept_position(view_map, elim_view)
        self.kpos_point = kept_position(point_map, elim_point)

    def zeros(self):
        """Zeroed arrays ``(hee, hek, hkk, ge, gk)`` for the compiled kernel."""
        b, m, ng = self.block_size, self.n_kept, self.n_groups
        return np.zeros((ng, b, b)), np.zeros((ng, b, m)), np.zeros((m, m)), np.zeros((ng, b)), np.zeros(m)

    def _numpy_targets(self):
        """Scatter targets of the pure-numpy assembly (built on first use)."""
        if self._targets is None:
            g, kpos = self._obs_layout
            b, m = self.block_size, self.n_kept
            mp = m + 1
            ib = np.arange(b)
            self._targets = {
                "mask": self.e_free[g].astype(float)[:, None, :],  # (n_obs, 1, b)
                "ee": ((g[:, None, None] * b + ib[None, :, None]) * b + ib[None, None, :]).ravel(),
                "ek": ((g[:, None, None] * b + ib[None, :, None]) * mp + kpos[:, None, :]).ravel(),
                "kk": (kpos[:, :, None] * mp + kpos[:, None, :]).ravel(),
                "ge": (g[:, None] * b + ib[None, :]).ravel(),
                "gk": kpos.ravel(),
            }
        return self._targets

    def assemble(self, jac, resid):
        """Accumulate ``J^T J`` and ``J^T r`` in block form.

        Parameters
        ----------
        jac : ndarray, shape (n_obs, 2, 8)
            Weighted Jacobian rows of each observation (five view columns,
            then three point columns).
        resid : ndarray, shape (n_obs, 2)
            Weighted residuals.

        Returns
        -------
        NormalEquations
        """
        b, m, ng = self.block_size, self.n_kept, self.n_groups
        mp = m + 1
        t = self._numpy_targets()
        je = jac[:, :, self.e_cols] * t["mask"]  # (n_obs, 2, b)
        jk = jac[:, :, self.k_cols]  # (n_obs, 2, nk)
        hee = np.bincount(t["ee"], _atb(je, je), minlength=ng * b * b).reshape(ng, b, b)
        hek = np.bincount(t["ek"], _atb(je, jk), minlength=ng * b * mp).reshape(ng, b, mp)[:, :, :m]
        hkk = np.bincount(t["kk"], _atb(jk, jk), minlength=mp * mp).reshape(mp, mp)[:m, :m]
        r0, r1 = resid[:, 0:1], resid[:, 1:2]
        ge = np.bincount(t["ge"], (je[:, 0] * r0 + je[:, 1] * r1).ravel(), minlength=ng * b).reshape(ng, b)
        gk = np.bincount(t["gk"], (jk[:, 0] * r0 + jk[:, 1] * r1).ravel(), minlength=mp)[:m]
        return NormalEquations(self, hee, np.ascontiguousarray(hek), np.ascontiguousarray(hkk), ge, gk)


def _atb(a, b):
    """Flattened per-observation products ``a_k^T b_k`` of two-row blocks.

    ``a`` (n, 2, p) and ``b`` (n, 2, q) give (n * p * q,) values; written
    out because batched ``matmul`` on 2-row blocks is slow.
    """
    out = a[:, 0, :, None] * b[:, 0, None, :]
    out += a[:, 1, :, None] * b[:, 1, None, :]
    return out.ravel()


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
        """Scatter block-layout values ``(e (n_groups, b), k (m,))`` to a flat vector."""
        st = self.structure
        out = np.zeros(st.n_params)
        out[st._e_param] = e[st.e_free]
        out[st.kept] = k
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
        b = st.block_size
        hee = self.hee + (mu * diag_e)[:, :, None] * np.eye(b)
        gi, si = np.nonzero(~st.e_free)  # held slots: zero rows (masked Jacobian), unit diagonal
        hee[gi, si, si] = 1.0
        ge = np.where(st.e_free, self.ge, 0.0)
        try:
            hee_inv = np.linalg.inv(hee)
        except np.linalg.LinAlgError:
            return None
        m = st.n_kept
        if m:
            w = hee_inv @ self.hek  # (n_groups, b, m)
            nb = st.n_groups * b
            w_flat = w.reshape(nb, m)
            s = self.hkk - self.hek.reshape(nb, m).T @ w_flat
            s[np.diag_indices(m)] += mu * diag_k
            rhs = -self.gk + w_flat.T @ ge.reshape(nb)
            # Cholesky only tests positive definiteness; the kept system is a few hundred
            # unknowns, so a plain solve costs little and spares jobs importing scipy.linalg.
            try:
                np.linalg.cholesky(s)
            except np.linalg.LinAlgError:
                return None
            dk = np.linalg.solve(s, rhs)
            de = (hee_inv @ (-ge - self.hek @ dk)[:, :, None])[:, :, 0]
        else:
            dk = np.zeros(0)
            de = (hee_inv @ (-ge)[:, :, None])[:, :, 0]
        step = self.to_flat(de, dk)
        if not np.all(np.isfinite(step)):
            return None
        return step
