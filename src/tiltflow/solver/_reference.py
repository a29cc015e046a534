"""The bundle problem for ``scipy.optimize.least_squares``: an independent
reference solver for tests and benchmarks (same model, same layout)."""

from __future__ import annotations

import numpy as np
import scipy.sparse

from .. import projection
from ._schur import expand_jacobian


class ScipyProblem:
    """Residuals, Jacobian and sparsity pattern of a layout, for scipy.

    Parameters
    ----------
    obs : Observations
    views : ndarray, shape (n_views, 7) or (n_views, 5)
        Start values; held parameters keep them.
    points_xyz_px : ndarray, shape (n_markers, 3)
    layout : Layout

    The unknown vector ``x`` holds increments from the start (``x0 = 0``).
    """

    def __init__(self, obs, views, points_xyz_px, layout):
        self.obs, self.layout = obs, layout
        self.views0, self.points0 = projection.full_views(views), np.asarray(points_xyz_px, float)
        self.x0 = np.zeros(layout.n_params)
        # (observation, expanded Jacobian column) -> parameter index, -1 where held
        n = len(obs.view_index)
        self._cols = np.concatenate(
            [layout.view_map[obs.view_index].reshape(n, -1), layout.point_map[obs.marker_index]], axis=1
        )
        # the Jacobian's non-zero entries: observation, expanded column, and their (row, parameter)
        self._obs_idx, self._col = np.nonzero(self._cols >= 0)
        params = self._cols[self._obs_idx, self._col]
        self._rows = np.concatenate([2 * self._obs_idx, 2 * self._obs_idx + 1])
        self._params = np.concatenate([params, params])

    def unpack(self, x):
        """``(views, points)`` at ``x``."""
        return self.layout.apply(self.views0, self.points0, x)

    def fun(self, x):
        """Residuals ``pred - obs``, flattened to (2 n_obs,)."""
        v, p = self.unpack(x)
        o = self.obs
        return (projection.project(p, v, o.marker_index, o.view_index, o.centre_xy_px) - o.xy_px).ravel()

    def jac(self, x):
        """Dense analytic Jacobian, (2 n_obs, n_params)."""
        v, p = self.unpack(x)
        o = self.obs
        _, jv, jp = projection.project_with_jacobian(p, v, o.marker_index, o.view_index, o.centre_xy_px)
        block = expand_jacobian(jv, jp, self.layout.view_weight[o.view_index])
        out = np.zeros((len(o.marker_index), 2, self.layout.n_params))
        rows = np.arange(len(o.marker_index))
        for c in range(block.shape[2]):
            ok = self._cols[:, c] >= 0
            np.add.at(out, (rows[ok], slice(None), self._cols[ok, c]), block[ok, :, c])
        return out.reshape(-1, self.layout.n_params)

    def jac_sparse(self, x):
        """Exact Jacobian as a sparse CSR matrix, (2 n_obs, n_params) (scipy's ``jac=`` callable)."""
        v, p = self.unpack(x)
        o = self.obs
        _, jv, jp = projection.project_with_jacobian(p, v, o.marker_index, o.view_index, o.centre_xy_px)
        block = expand_jacobian(jv, jp, self.layout.view_weight[o.view_index])  # (n, 2, n_cols)
        vals = np.concatenate([block[self._obs_idx, 0, self._col], block[self._obs_idx, 1, self._col]])
        n = len(o.marker_index)
        return scipy.sparse.csr_matrix((vals, (self._rows, self._params)), shape=(2 * n, self.layout.n_params))

    def sparsity(self):
        """Sparse 0/1 pattern of the Jacobian (for finite differences)."""
        n = len(self.obs.marker_index)
        pattern = scipy.sparse.coo_matrix((np.ones(len(self._rows)), (self._rows, self._params)),
                                          shape=(2 * n, self.layout.n_params))
        pattern = pattern.tocsr()
        pattern.data[:] = 1.0
        return pattern
