"""Normal equations of the bundle problem and their Schur-complement solve.

The unknowns are split into *eliminated* blocks -- either one block per
marker (its x, y, z) or one block per view (its view-local parameters) --
and a *kept* set (everything else: the view parameters, or the marker
coordinates plus any parameter several views depend on: one shared value,
or the group centres a grouped parameter is interpolated from).  Every
observation touches exactly one eliminated block, so ``H_ee`` is block
diagonal and the damped system reduces to a dense one on the kept set
(Triggs et al.; Ceres' DENSE_SCHUR)::

    S = H_kk - H_ke H_ee^-1 H_ek,   S dk = -g_k + H_ke H_ee^-1 g_e

A view parameter depends on at most two unknowns (a grouped parameter is
linearly interpolated between two group centres), so an observation's
Jacobian with respect to the unknowns has ``2 * N_VIEW`` view *slots*
(the derivative by view parameter ``c`` times the slot's weight) and three
point columns.  :class:`SchurStructure` works out once per layout where
each product of an observation's slots lands; every iteration then only
multiplies and accumulates with ``np.bincount``.  Held parameters have no
row: their columns are masked to zero (eliminated side) or sent to a dummy
row that is dropped (kept side), and unused block slots get a unit
diagonal.
"""

from __future__ import annotations

import functools
import sys

import numpy as np

from ..projection import N_VIEW

#: Columns of the expanded per-observation Jacobian: view parameter c, slot k at 2 c + k; then x, y, z.
N_SLOTS = 2 * N_VIEW
POINT_COLS = np.arange(N_SLOTS, N_SLOTS + 3)
SLOT0_COLS = np.arange(0, N_SLOTS, 2)


def expand_jacobian(jac_view, jac_point, weight_obs):
    """The Jacobian of each observation with respect to its view slots and point.

    Parameters
    ----------
    jac_view : ndarray, shape (n_obs, 2, N_VIEW)
    jac_point : ndarray, shape (n_obs, 2, 3)
    weight_obs : ndarray, shape (n_obs, N_VIEW, 2)
        Slot weights of each observation's view (``layout.view_weight[view_index]``).

    Returns
    -------
    ndarray, shape (n_obs, 2, 2 N_VIEW + 3)
    """
    slots = np.repeat(jac_view, 2, axis=2) * weight_obs.reshape(len(weight_obs), 1, N_SLOTS)
    return np.concatenate([slots, jac_point], axis=2)


#: The numpy path forms the normal equations on the grid of every view x marker pair (matrix
#: products, no scatter) when the view blocks are eliminated, the kept unknowns are marker
#: coordinates only, and there are at most this many pairs per observation (0: never) ...
GRID_PAIRS_PER_OBSERVATION = 4
#: ... and the grid values take at most this many bytes.
GRID_MAX_BYTES = 32 << 20


@functools.cache
def _triu_indices(q):
    """``np.triu_indices(q)`` (row by row), computed once per size."""
    return np.triu_indices(q)


class SchurStructure:
    """Index bookkeeping for the structured normal equations.

    Parameters
    ----------
    view_index, marker_index : ndarray of int, shape (n_obs,)
        View and marker of each observation.
    layout : tiltflow.solver.Layout
        Which unknowns each view parameter and marker coordinate depend on.
    eliminate : {"auto", "points", "views"}
        Which blocks to eliminate; ``"auto"`` picks the choice that leaves
        the smaller dense system.
    """

    def __init__(self, view_index, marker_index, layout, eliminate="auto"):
        view_map = np.asarray(layout.view_map, dtype=np.int64)  # (n_views, N_VIEW, 2)
        point_map = np.asarray(layout.point_map, dtype=np.int64)
        n_params = int(layout.n_params)
        self.n_params = n_params
        used = view_map >= 0
        counts = np.bincount(view_map[used], minlength=n_params)
        # view-local: one unknown used by this view parameter alone, with weight 1
        local = (used[:, :, 0] & ~used[:, :, 1] & (counts[np.maximum(view_map[:, :, 0], 0)] == 1)
                 & (layout.view_weight[:, :, 0] == 1.0))
        view_idx = np.flatnonzero(counts)  # the unknowns some view parameter uses, ascending
        nonlocal_idx = np.flatnonzero(np.bincount(
            np.concatenate([view_map[:, :, 0][used[:, :, 0] & ~local], view_map[:, :, 1][used[:, :, 1]]]),
            minlength=n_params))
        point_idx = point_map[point_map >= 0]
        if eliminate == "auto":
            eliminate = "views" if len(nonlocal_idx) + len(point_idx) < len(view_idx) else "points"
        if eliminate not in ("points", "views"):
            raise ValueError(f"eliminate must be 'auto', 'points' or 'views', got {eliminate!r}")
        self.eliminate = eliminate

        slot_kept = used.copy()  # (n_views, N_VIEW, 2): which slots go to the kept side
        if eliminate == "points":
            e_map = point_map
            group_of_obs = np.asarray(marker_index, dtype=np.int64)
            kept = view_idx
        else:
            e_map = np.where(local, view_map[:, :, 0], -1)
            slot_kept[:, :, 0] &= ~local
            group_of_obs = np.asarray(view_index, dtype=np.int64)
            kept = np.concatenate([nonlocal_idx, point_idx])
        # blocks keep only the columns some group frees (e.g. no distortion columns in the view blocks when
        # distortion is off): smaller blocks, fewer rows in the reduced system's product
        e_colmap = np.full(e_map.shape[1], -1, dtype=np.int64)
        e_used = np.flatnonzero((e_map >= 0).any(axis=0))
        if not len(e_used):
            e_used = np.arange(1)  # every block held: one unit-diagonal column
        e_colmap[e_used] = np.arange(len(e_used))
        self.e_colmap = e_colmap
        e_map = e_map[:, e_used]
        self.e_map = e_map
        self.n_groups, b = e_map.shape
        self.block_size = b
        m = len(kept)
        self.n_kept = m
        self.kept = kept
        kept_pos = np.full(n_params, m, dtype=np.int64)  # m = dummy row
        kept_pos[kept] = np.arange(m)
        self.e_free = e_map >= 0
        # flat-vector positions of the eliminated parameters
        self._e_param = e_map[self.e_free]
        # kept-vector position of every view slot / point coordinate (-1: held or eliminated)
        self.kpos_view = np.ascontiguousarray(np.where(slot_kept, kept_pos[np.maximum(view_map, 0)], -1))
        pos = np.where(point_map >= 0, kept_pos[np.maximum(point_map, 0)], -1)
        if eliminate == "points":
            pos[:] = -1
        self.kpos_point = np.ascontiguousarray(pos)
        self.view_weight = np.ascontiguousarray(layout.view_weight, dtype=float)
        # the columns of the expanded Jacobian each side uses (slots no view uses are left out)
        slot_cols = np.flatnonzero(slot_kept.any(axis=0).reshape(-1))
        if eliminate == "points":
            self.e_cols, self.k_cols = POINT_COLS[e_used], slot_cols
            kpos = self.kpos_view[view_index].reshape(len(view_index), N_SLOTS)[:, slot_cols]
        else:
            self.e_cols = SLOT0_COLS[e_used]
            # point columns only where some marker coordinate is free (none when the stage holds the markers)
            point_cols = np.flatnonzero((self.kpos_point >= 0).any(axis=0))
            self.k_cols = np.concatenate([POINT_COLS[point_cols], slot_cols])
            kpos = np.concatenate([self.kpos_point[marker_index][:, point_cols],
                                   self.kpos_view[view_index].reshape(len(view_index), N_SLOTS)[:, slot_cols]], axis=1)
        # eliminated group of each entity (marker or view) and entity of each group
        self.group_of = np.arange(len(e_map))
        self.group_entity = self.group_of
        self.windows = (np.zeros(len(e_map), dtype=np.int64), np.full(len(e_map), m, dtype=np.int64))
        if eliminate == "points" and len(e_map) > 1 and m:
            group_of_obs = self._band_order(view_index, marker_index, m)
        self._obs_layout = (group_of_obs, np.where(kpos >= 0, kpos, m))
        self._plan = None
        self._grid = None
        self._chunks = None
        # the active columns (block columns, then kept columns): which base derivative each takes
        # (N_VIEW view parameters, then x, y, z) and with what weight -- the product of a per-view factor
        # (the slot's weight; whether an eliminated view block frees the column) and, when eliminated
        # point blocks hold some coordinates, a per-marker one (whether the block frees it)
        cols = np.concatenate([self.e_cols, self.k_cols])
        slots = cols < N_SLOTS
        self.column_source = np.where(slots, cols // 2, N_VIEW + cols - N_SLOTS)
        n_views = len(view_map)
        view_factor = np.ones((len(cols), n_views))
        view_factor[slots] = self.view_weight.reshape(n_views, N_SLOTS)[:, cols[slots]].T
        marker_factor = None
        if eliminate == "views":
            view_factor[:b] *= self.e_free.T
        elif not self.e_free.all():
            marker_factor = np.ones((len(cols), len(point_map)))
            marker_factor[:b] = self.e_free[self.group_of].T
        self.view_factor, self.marker_factor = view_factor, marker_factor
        self._indices = (np.asarray(view_index, dtype=np.int64), np.asarray(marker_index, dtype=np.int64))

    def _band_order(self, view_index, marker_index, m):
        """Number the marker blocks by the first kept unknown they touch; returns each observation's group.

        The kept unknowns are numbered view by view (in the views' order, normally tilt order) after
        any shared ones; a track covers a contiguous run of views, so consecutive blocks in this
        order couple to a narrow band of the reduced system: ``windows`` holds each group's range
        ``[lo, hi)`` of kept positions, which :func:`_mixed_reduced_solve` forms chunk by chunk.
        """
        n_views = len(self.kpos_view)
        kv = self.kpos_view.reshape(n_views, -1)
        lo_view = np.where(kv >= 0, kv, m).min(axis=1)
        hi_view = np.where(kv >= 0, kv + 1, 0).max(axis=1)
        n_markers = len(self.e_map)
        lo = np.full(n_markers, m, dtype=np.int64)
        hi = np.zeros(n_markers, dtype=np.int64)
        np.minimum.at(lo, marker_index, lo_view[view_index])
        np.maximum.at(hi, marker_index, hi_view[view_index])
        entity = np.argsort(lo, kind="stable")
        self.group_entity = entity
        self.group_of = np.empty_like(entity)
        self.group_of[entity] = np.arange(n_markers)
        self.e_map = self.e_map[entity]
        self.e_free = self.e_map >= 0
        self._e_param = self.e_map[self.e_free]
        self.windows = (lo[entity], hi[entity])
        return self.group_of[np.asarray(marker_index, dtype=np.int64)]

    def column_weights(self):
        """Weights of the active columns of every observation, shape (b + nk, n_obs)."""
        vi, mi = self._indices
        w = self.view_factor[:, vi]
        if self.marker_factor is not None:
            w *= self.marker_factor[:, mi]
        return w

    def chunks(self):
        """:func:`band_chunks` of this structure's groups (built on first use)."""
        if self._chunks is None:
            self._chunks = band_chunks(self.windows, self.block_size)
        return self._chunks

    def grid_plan(self, n_views, n_markers):
        """Index arrays of the grid assembly (:meth:`assemble_grid`), or None where it does not apply.

        It applies when the view blocks are eliminated, every kept unknown is a marker coordinate,
        each marker is seen at most once per view, and the view x marker grid is small
        (:data:`GRID_PAIRS_PER_OBSERVATION`, :data:`GRID_MAX_BYTES`).  Built on first use.
        """
        if self._grid is None:
            self._grid = False
            vi, mi = self._indices
            pairs = n_views * n_markers
            n_point_cols = int((self.k_cols >= N_SLOTS).sum())
            q = len(self.column_source)
            if (self.eliminate == "views" and n_point_cols == len(self.k_cols)
                    and pairs <= GRID_PAIRS_PER_OBSERVATION * len(vi) and 16 * (1 + q) * pairs <= GRID_MAX_BYTES):
                cell = vi * n_markers + mi
                if np.bincount(cell, minlength=pairs).max(initial=0) <= 1:
                    kp = self.kpos_point[:, self.k_cols - N_SLOTS]  # (n_markers, p): kept position or -1
                    valid = kp >= 0
                    p = kp.shape[1]
                    src = np.empty(self.n_kept, dtype=np.int64)  # (marker, column) of each kept unknown
                    src[kp[valid]] = np.flatnonzero(valid.ravel())
                    none = np.zeros(0, dtype=np.int64)
                    rows, cols, block = [none], [none], [none]
                    for c in range(p):
                        for d in range(p):
                            both = np.flatnonzero(valid[:, c] & valid[:, d])
                            rows.append(kp[both, c])
                            cols.append(kp[both, d])
                            block.append(both * p * p + c * p + d)
                    # hek[v, i, k] = X[i, c_k, v, m_k] for the products X (b, p, n_views, n_markers)
                    b = self.block_size
                    m_k, c_k = np.divmod(src, max(p, 1))
                    coupling = (((np.arange(b)[None, :, None] * p + c_k[None, None, :]) * n_views
                                 + np.arange(n_views)[:, None, None]) * n_markers + m_k[None, None, :])
                    self._grid = (cell, coupling, np.concatenate(rows), np.concatenate(cols), np.concatenate(block),
                                  kp[valid], np.flatnonzero(valid.ravel()))
        return self._grid or None

    def assemble_grid(self, grid):
        """``J^T J`` and ``J^T r`` from the weighted rows on the view x marker grid (matrix products).

        Parameters
        ----------
        grid : ndarray, shape (1 + b + p, 2, n_views, n_markers)
            Row 0 the weighted residuals, then the weighted derivatives by the
            view block's ``b`` columns and the ``p`` marker coordinate columns,
            zero where a marker is not seen (:meth:`grid_plan` must apply).

        Returns
        -------
        NormalEquations
        """
        _, coupling, rows, cols, block, kept, flat = self._grid
        b, m = self.block_size, self.n_kept
        _, _, n_views, n_markers = grid.shape
        resid, je, jp = grid[0], grid[1:1 + b], grid[1 + b:]
        p = len(jp)
        a = je.transpose(2, 0, 1, 3).reshape(n_views, b, 2 * n_markers)  # each view's block columns
        hee = a @ a.transpose(0, 2, 1)
        ge = (a @ resid.transpose(1, 0, 2).reshape(n_views, 2 * n_markers, 1))[:, :, 0]
        hkk, gk = np.zeros((m, m)), np.zeros(m)
        if p:
            # each (view, marker) cell is one observation: its block x coordinate products are hek's entries
            products = je[:, None, 0] * jp[None, :, 0]  # (b, p, n_views, n_markers)
            products += je[:, None, 1] * jp[None, :, 1]
            hek = products.reshape(-1)[coupling]
            c = jp.transpose(3, 0, 1, 2).reshape(n_markers, p, 2 * n_views)  # each marker's coordinate columns
            hkk[rows, cols] = (c @ c.transpose(0, 2, 1)).reshape(-1)[block]
            gk[kept] = (c @ resid.transpose(2, 0, 1).reshape(n_markers, 2 * n_views, 1)).reshape(-1)[flat]
        else:
            hek = np.zeros((n_views, b, m))
        return NormalEquations(self, hee, hek, hkk, ge, gk)

    def zeros(self):
        """Zeroed arrays ``(hee, hek, hkk, ge, gk)`` for the compiled kernel."""
        b, m, ng = self.block_size, self.n_kept, self.n_groups
        return np.zeros((ng, b, b)), np.zeros((ng, b, m)), np.zeros((m, m)), np.zeros((ng, b)), np.zeros(m)

    def blocks(self, jac_view, jac_point):
        """The eliminated-side and kept-side Jacobian blocks of every observation.

        Parameters
        ----------
        jac_view : ndarray, shape (n_obs, 2, N_VIEW)
        jac_point : ndarray, shape (n_obs, 2, 3)
            Weighted derivatives (:func:`tiltflow.projection.project_with_jacobian`).

        Returns
        -------
        group : ndarray of int, shape (n_obs,)
            Eliminated block of each observation.
        je : ndarray, shape (n_obs, 2, b)
            Derivatives by the block's parameters (0 where held).
        jk : ndarray, shape (n_obs, 2, nk)
            Derivatives by kept unknowns.
        kpos : ndarray of int, shape (n_obs, nk)
            Their kept positions; ``n_kept`` (a dummy row) where held.
        """
        g, kpos = self._obs_layout
        b = self.block_size
        jac = np.concatenate([jac_view, jac_point], axis=2)[:, :, self.column_source]
        jac *= self.column_weights().T[:, None, :]
        return g, jac[:, :, :b], jac[:, :, b:], kpos

    def _numpy_plan(self):
        """Where the numpy assembly accumulates each product (built on first use).

        The active columns of an observation are its block's ``b`` columns
        then its ``nk`` kept columns; for each pair ``i <= j`` of them (the
        upper triangle of the per-observation ``J^T J``, row by row) and for
        each column's gradient entry, the flat position in one buffer
        holding ``hee`` (upper triangles), ``hek``, ``hkk`` (upper triangle,
        dummy row and column ``m`` for held unknowns), ``ge`` and ``gk``.
        One ``bincount`` then accumulates every product of an iteration.
        """
        if self._plan is None:
            g, kpos = self._obs_layout
            b, m, ng = self.block_size, self.n_kept, self.n_groups
            mp = m + 1
            q = b + kpos.shape[1]
            ends = np.cumsum([ng * b * b, ng * b * mp, mp * mp, ng * b, mp])
            iu, ju = _triu_indices(q)
            # the position of every active column of every observation: (q, n_obs)
            pos = np.concatenate([g[None, :] * b + np.arange(b)[:, None], kpos.T])
            targets = np.empty((len(iu) + q, len(g)), dtype=np.int64)
            ee, ek, kk = (ju < b), (iu < b) & (ju >= b), (iu >= b)
            targets[:len(iu)][ee] = pos[iu[ee]] * b + ju[ee][:, None]
            targets[:len(iu)][ek] = ends[0] + pos[iu[ek]] * mp + pos[ju[ek]]
            lo, hi = np.minimum(pos[iu[kk]], pos[ju[kk]]), np.maximum(pos[iu[kk]], pos[ju[kk]])
            targets[:len(iu)][kk] = ends[1] + lo * mp + hi
            targets[len(iu):len(iu) + b] = ends[2] + pos[:b]
            targets[len(iu) + b:] = ends[3] + pos[b:]
            self._plan = (targets.reshape(-1), np.cumsum(np.concatenate([[0], np.arange(q, 0, -1)])), ends)
        return self._plan

    def assemble(self, jac, resid):
        """Accumulate ``J^T J`` and ``J^T r`` in block form.

        Parameters
        ----------
        jac : ndarray, shape (2, b + nk, n_obs)
            Weighted derivatives of each observation's two rows by its
            active columns (block columns, then kept columns; column weights
            applied: :meth:`column_weights`).
        resid : ndarray, shape (2, n_obs)
            Weighted residuals.

        Returns
        -------
        NormalEquations
        """
        b, m, ng = self.block_size, self.n_kept, self.n_groups
        mp = m + 1
        targets, starts, ends = self._numpy_plan()
        j0, j1 = jac
        q, n = j0.shape
        npairs = starts[-1]
        values = np.empty((npairs + q, n))
        tmp = np.empty((q, n))
        for i in range(q):  # row i of the upper triangle: contiguous products, no gathered copies
            lo, hi = starts[i], starts[i + 1]
            np.multiply(j0[i], j0[i:], out=values[lo:hi])
            np.multiply(j1[i], j1[i:], out=tmp[:hi - lo])
            values[lo:hi] += tmp[:hi - lo]
        np.multiply(j0, resid[0], out=values[npairs:])
        np.multiply(j1, resid[1], out=tmp)
        values[npairs:] += tmp
        flat = np.bincount(targets, values.reshape(-1), minlength=ends[-1])
        # upper triangles (the rest zero) -> symmetric: add the transpose, halve the doubled diagonal
        upper = flat[:ends[0]].reshape(ng, b, b)
        hee = upper + upper.transpose(0, 2, 1)
        hee.reshape(ng, b * b)[:, ::b + 1] *= 0.5
        hek = flat[ends[0]:ends[1]].reshape(ng, b, mp)[:, :, :m]
        upper = flat[ends[1]:ends[2]].reshape(mp, mp)[:m, :m]
        hkk = upper + upper.T
        hkk.reshape(-1)[::m + 1] *= 0.5
        return NormalEquations(self, hee, np.ascontiguousarray(hek), hkk, flat[ends[2]:ends[3]].reshape(ng, b),
                               flat[ends[3]:ends[3] + m].copy())


#: Double-precision kept systems from this size on are solved by scipy's Cholesky (one
#: factorisation) when ``scipy.linalg`` is loaded (``warm_up`` loads it with the compiled kernels,
#: for large problems; there this is the fallback of :func:`_mixed_reduced_solve`); otherwise by
#: numpy (a Cholesky as positive-definiteness test, then an LU solve), which spares a small job
#: importing scipy.linalg.
SCIPY_CHOLESKY_MIN = 200


def _spd_solve(s, rhs):
    """Solve ``s x = rhs`` for a symmetric ``s``; None if ``s`` is not positive definite."""
    linalg = sys.modules.get("scipy.linalg")
    if linalg is not None and len(s) >= SCIPY_CHOLESKY_MIN:
        try:
            factor = linalg.cho_factor(s, lower=False, overwrite_a=True, check_finite=False)
        except np.linalg.LinAlgError:
            return None
        return linalg.cho_solve(factor, rhs, check_finite=False)
    try:
        np.linalg.cholesky(s)
    except np.linalg.LinAlgError:
        return None
    return np.linalg.solve(s, rhs)


def _bmv(a, v):
    """Batched ``a @ v`` for (n, k, k) and (n, k)."""
    return np.einsum("nij,nj->ni", a, v)


def _bmv_t(a, v):
    """Batched ``a^T @ v`` for (n, k, k) and (n, k)."""
    return np.einsum("nji,nj->ni", a, v)


#: Reduced systems from this size on are formed and factorised in single precision (twice the
#: BLAS speed, half the memory traffic) and refined in double precision (see
#: :func:`_mixed_reduced_solve`); needs scipy.linalg loaded, as ``warm_up`` does for large problems.
MIXED_MIN = 200
#: Rows of the whitened coupling ``U`` formed (and converted to single precision) at a time: a chunk of
#: consecutive eliminated groups, whose product touches only the union of their kept-unknown windows.
MIXED_CHUNK_ROWS = 1024
#: The refined reduced step is accepted when its residual is below this fraction of the right-hand side
#: (double-precision accuracy for the step) ...
MIXED_RTOL = 1e-10
#: ... within this many refinements; otherwise the system is solved again in double precision.
MIXED_MAX_REFINEMENTS = 3


def band_chunks(windows, block_size):
    """Chunks ``(g0, g1, lo, hi)`` of consecutive groups and the kept positions ``lo:hi`` they touch.

    ``windows`` is ``(lo, hi)`` per group (:attr:`SchurStructure.windows`); a chunk holds about
    :data:`MIXED_CHUNK_ROWS` rows (``block_size`` per group).  Chunks touching nothing are left out.
    """
    lo, hi = windows
    per = max(1, MIXED_CHUNK_ROWS // max(block_size, 1))
    chunks = []
    for g0 in range(0, len(lo), per):
        g1 = min(g0 + per, len(lo))
        wl, wh = int(lo[g0:g1].min()), int(hi[g0:g1].max())
        if wh > wl:
            chunks.append((g0, g1, wl, wh))
    return chunks


def _hek_dot(hek, chunks, x):
    """``hek @ x`` (n_groups, b), each chunk of groups over its window of ``x`` only."""
    ng, b, _ = hek.shape
    out = np.zeros((ng, b))
    for g0, g1, wl, wh in chunks:
        out[g0:g1] = (hek[g0:g1, :, wl:wh].reshape(-1, wh - wl) @ x[wl:wh]).reshape(-1, b)
    return out


def _hek_tdot(hek, chunks, v):
    """``sum_g hek_g^T v_g`` (m,) for ``v`` (n_groups, b), chunk by chunk over their windows."""
    out = np.zeros(hek.shape[2])
    for g0, g1, wl, wh in chunks:
        out[wl:wh] += v[g0:g1].reshape(-1) @ hek[g0:g1, :, wl:wh].reshape(-1, wh - wl)
    return out


def _mixed_reduced_solve(linalg, linv, hek, hkk, damping_k, rhs, chunks=None):
    """Solve the reduced system ``S dk = rhs``, ``S = hkk + diag(damping_k) - U^T U``, ``U = L^-1 hek``.

    ``S`` is accumulated in single precision (``ssyrk`` over chunks of
    :data:`MIXED_CHUNK_ROWS` rows of ``U``, so no double-precision copy of
    ``U`` is made; each chunk updates only the block of ``S`` its groups'
    windows span) and factorised by ``spotrf``; the single-precision
    solution is then corrected by iterative refinement, its residual
    evaluated in double precision with ``S`` applied implicitly (``hkk``,
    ``L`` and ``hek`` over the windows), until the residual is below
    :data:`MIXED_RTOL` of the right-hand side: the step of the
    double-precision system.  The reduced systems of bundle problems are
    well conditioned once Jacobi-scaled (measured condition numbers
    1e2-1e4 on 121 views x 200 markers; single-precision steps within
    5e-6), so one or two refinements suffice; when
    :data:`MIXED_MAX_REFINEMENTS` do not, or single precision loses
    definiteness, the system is solved again in double precision.

    Parameters
    ----------
    linalg : module
        ``scipy.linalg``.
    linv : ndarray, shape (n_groups, b, b)
        Inverse Cholesky factors of the damped eliminated blocks.
    hek : ndarray, shape (n_groups, b, m)
    hkk : ndarray, shape (m, m)
    damping_k : ndarray, shape (m,)
        Damping added to the diagonal of ``hkk``.
    rhs : ndarray, shape (m,)
    chunks : list, optional
        :func:`band_chunks` of the groups' windows of kept positions where
        ``hek`` may be non-zero (:meth:`SchurStructure.chunks`); default:
        every group over all kept positions.

    Returns
    -------
    ndarray, shape (m,) or None
        None when ``S`` is not positive definite.
    """
    ng, b, m = hek.shape
    if chunks is None:
        chunks = band_chunks((np.zeros(ng, dtype=np.int64), np.full(ng, m, dtype=np.int64)), b)
    blas, lapack = linalg.blas, linalg.lapack
    s32 = np.array(hkk, dtype=np.float32, order="F")
    s32[np.diag_indices(m)] += damping_k
    for g0, g1, wl, wh in chunks:
        u = (linv[g0:g1] @ hek[g0:g1, :, wl:wh]).reshape(-1, wh - wl).astype(np.float32)
        # upper triangle of S -= U^T U on the chunk's block (u.T is Fortran-ordered: no copy)
        s32[wl:wh, wl:wh] = blas.ssyrk(-1.0, u.T, beta=1.0, c=s32[wl:wh, wl:wh], trans=0, lower=0)
    factor, info = lapack.spotrf(s32, lower=0, clean=0, overwrite_a=1)
    if info == 0:

        def apply_s(x):
            ux = _bmv(linv, _hek_dot(hek, chunks, x))
            return hkk @ x + damping_k * x - _hek_tdot(hek, chunks, _bmv_t(linv, ux))

        x = lapack.spotrs(factor, rhs.astype(np.float32), lower=0)[0].astype(float)
        target = MIXED_RTOL * np.linalg.norm(rhs)
        for _ in range(MIXED_MAX_REFINEMENTS):
            r = rhs - apply_s(x)
            if np.linalg.norm(r) <= target:
                return x
            x += lapack.spotrs(factor, r.astype(np.float32), lower=0)[0]
        if np.linalg.norm(rhs - apply_s(x)) <= target:
            return x
    # single precision was not enough: the double-precision system
    u = (linv @ hek).reshape(-1, m)
    s = hkk - u.T @ u
    s[np.diag_indices(m)] += damping_k
    return _spd_solve(s, rhs)


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
        # whiten each block by its Cholesky factor (hee = L L^T): with U = L^-1 hek and
        # y = L^-1 ge the reduced system is S = hkk - U^T U (a symmetric rank-k product,
        # half a general one), rhs = -gk + U^T y
        try:
            linv = np.linalg.inv(np.linalg.cholesky(hee))
        except np.linalg.LinAlgError:
            return None
        y = _bmv(linv, ge)
        m = st.n_kept
        linalg = sys.modules.get("scipy.linalg")
        if m >= MIXED_MIN and linalg is not None:
            chunks = st.chunks()
            rhs = -self.gk + _hek_tdot(self.hek, chunks, _bmv_t(linv, y))
            dk = _mixed_reduced_solve(linalg, linv, self.hek, self.hkk, mu * diag_k, rhs, chunks)
            if dk is None:
                return None
            de = _bmv_t(linv, -y - _bmv(linv, _hek_dot(self.hek, chunks, dk)))
        elif m:
            u = linv @ self.hek  # (n_groups, b, m)
            u_flat = u.reshape(st.n_groups * b, m)
            s = u_flat.T @ u_flat  # numpy calls BLAS syrk for a product with its own transpose
            np.subtract(self.hkk, s, out=s)
            s[np.diag_indices(m)] += mu * diag_k
            rhs = -self.gk + u_flat.T @ y.reshape(-1)
            dk = _spd_solve(s, rhs)
            if dk is None:
                return None
            # de = hee^-1 (-ge - hek dk) = L^-T (-y - U dk)
            de = _bmv_t(linv, -y - u @ dk)
        else:
            dk = np.zeros(0)
            de = _bmv_t(linv, -y)
        step = self.to_flat(de, dk)
        if not np.all(np.isfinite(step)):
            return None
        return step
