"""The fiducial bundle problem: observations, free-parameter layout, solve."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time

import numpy as np

from .. import projection
from ..projection import N_VIEW
from ..model import Observations
from ..options import LMOptions
from ._lm import LMReport, levenberg_marquardt
from ._schur import NormalEquations, SchurStructure

#: From this many observations on, ``compiled="auto"`` uses the numba kernels.  Below it the
#: numpy path is used: loading numba and its cached kernels (~0.35 s per process) costs more
#: than it saves (measured: 0.33 ms vs 0.04 ms per linearization at 485 observations,
#: 14 ms vs 0.7 ms at 9,500; a stage takes 10-100 linearizations).
COMPILED_MIN_OBSERVATIONS = 5000


def use_compiled(compiled, n_obs):
    """Resolve ``compiled`` (True, False or ``"auto"``) for a problem of ``n_obs`` observations."""
    if compiled == "auto":
        return n_obs >= COMPILED_MIN_OBSERVATIONS
    if not isinstance(compiled, bool):
        raise ValueError(f"compiled must be True, False or 'auto', got {compiled!r}")
    return compiled


def _kernels():
    """The numba kernels, imported on first use (numba is not loaded by small solves)."""
    from . import _kernels as kernels

    return kernels


def window_medians(values, lo, hi):
    """Median of each window ``values[lo[w]:hi[w]]`` (non-empty windows), shape (n_windows,).

    The mean of the two middle values for an even count, as ``np.median``.
    Compiled (one selection per window) from :data:`COMPILED_MIN_OBSERVATIONS`
    values on, where the numba kernels are loaded anyway; otherwise all
    windows at once, padded with +inf to one width and sorted row-wise
    (measured: 0.04 ms at 107 windows x 100 values; 14 ms in numpy vs
    2 ms compiled at 61 windows x 7,750).
    """
    values = np.asarray(values, dtype=float)
    lo, hi = np.asarray(lo, dtype=np.int64), np.asarray(hi, dtype=np.int64)
    count = hi - lo
    if len(count) and count.min() < 1:
        raise ValueError(f"windows must not be empty; window {int(np.argmin(count))} is")
    if not len(count):
        return np.zeros(0)
    if use_compiled("auto", len(values)):
        return _kernels().window_medians(values, lo, hi)
    idx = lo[:, None] + np.arange(count.max())[None, :]
    runs = np.where(idx < hi[:, None], values[np.minimum(idx, len(values) - 1)], np.inf)
    runs.sort(axis=1)
    rows = np.arange(len(count))
    return (runs[rows, (count - 1) // 2] + runs[rows, count // 2]) / 2.0


@dataclasses.dataclass(frozen=True)
class Layout:
    """Which parameters are free and how they map to the unknown vector.

    A view parameter depends on at most two unknowns: its own, one shared
    by several views (one rotation for all), or -- grouped like IMOD's
    automapping -- the two group centres it is linearly interpolated
    between.  A step ``delta`` of the unknowns changes view parameter
    ``(j, c)`` by ``sum_k view_weight[j, c, k] * delta[view_map[j, c, k]]``.

    Attributes
    ----------
    view_map : ndarray of int, shape (n_views, N_VIEW, 2)
        Unknowns of each view parameter (:data:`tiltflow.projection.VIEW_COLUMNS`),
        ``-1`` for an unused slot; both ``-1``: held.
    view_weight : ndarray, shape (n_views, N_VIEW, 2)
        Their weights (0 for unused slots).
    point_map : ndarray of int, shape (n_markers, 3)
        Index of each marker coordinate, ``-1`` if held.
    n_params : int
    """

    view_map: np.ndarray
    view_weight: np.ndarray
    point_map: np.ndarray
    n_params: int

    @property
    def view_free(self):
        """Which view parameters depend on some unknown, shape (n_views, N_VIEW)."""
        return (self.view_map >= 0).any(axis=2)

    @classmethod
    def from_masks(cls, view_free, point_free, shared_columns=(), groups=None):
        """Build a layout from boolean masks.

        Parameters
        ----------
        view_free : ndarray of bool, shape (n_views, N_VIEW) or (n_views, 5)
        point_free : ndarray of bool, shape (n_markers, 3)
        shared_columns : iterable of int
            View columns (e.g. ``projection.ROT``) whose free entries are
            one parameter shared by all those views.
        groups : dict, optional
            ``column -> (weights, free, ...)``: the column is grouped;
            ``weights`` (n_views, n_centres) interpolates each view's value
            from the group centres (at most two non-zero per row, rows of
            views that are not free are ignored) and ``free`` (n_centres,)
            says which centres are unknowns (a held centre keeps its value).
            ``view_free`` of a grouped column says which views follow the
            groups; the others are held.

        Unknowns are numbered: shared parameters, group centres, view-local
        parameters (view by view), marker coordinates.
        """
        view_free = np.asarray(view_free, dtype=bool)
        if view_free.shape[1] < N_VIEW:
            view_free = np.concatenate([view_free, np.zeros((len(view_free), N_VIEW - view_free.shape[1]), bool)], 1)
        point_free = np.asarray(point_free, dtype=bool)
        n_v = len(view_free)
        view_map = np.full((n_v, N_VIEW, 2), -1, dtype=np.int64)
        view_weight = np.zeros((n_v, N_VIEW, 2))
        n = 0
        shared = set(shared_columns)
        groups = dict(groups or {})
        for col in range(N_VIEW):
            rows = np.flatnonzero(view_free[:, col])
            if col in shared and len(rows):
                view_map[rows, col, 0] = n
                view_weight[rows, col, 0] = 1.0
                n += 1
        for col, spec in sorted(groups.items()):
            weights = np.asarray(spec[0], dtype=float)
            free = np.asarray(spec[1], dtype=bool)
            index = np.full(len(free), -1, dtype=np.int64)
            index[free] = n + np.arange(int(free.sum()))
            n += int(free.sum())
            for j in np.flatnonzero(view_free[:, col]):
                nz = [k for k in np.flatnonzero(weights[j]) if free[k]]
                if len(nz) > 2:
                    raise ValueError(f"view {j}, column {col}: a grouped parameter interpolates between at most two "
                                     f"centres, got weights on {len(np.flatnonzero(weights[j]))}")
                for slot, k in enumerate(nz):
                    view_map[j, col, slot] = index[k]
                    view_weight[j, col, slot] = weights[j, k]
        free_local = view_free.copy()
        for col in list(shared) + list(groups):
            free_local[:, col] = False
        k = int(free_local.sum())
        view_map[:, :, 0][free_local] = n + np.arange(k)  # row-major: per view blocks
        view_weight[:, :, 0][free_local] = 1.0
        n += k
        point_map = np.full(point_free.shape, -1, dtype=np.int64)
        k = int(point_free.sum())
        point_map[point_free] = n + np.arange(k)
        n += k
        return cls(view_map, view_weight, point_map, n)

    def apply(self, views, points, step):
        """``(views, points)`` moved by ``step`` (copies)."""
        views = views.copy()
        points = points.copy()
        for slot in range(2):
            sel = self.view_map[:, :, slot] >= 0
            views[sel] += self.view_weight[:, :, slot][sel] * step[self.view_map[:, :, slot][sel]]
        sel = self.point_map >= 0
        points[sel] += step[self.point_map[sel]]
        return views, points

    def values(self, views, points):
        """The unknowns' current values (a grouped or shared unknown: its value at a view that follows it alone)."""
        x = np.zeros(self.n_params)
        alone = (self.view_map[:, :, 0] >= 0) & (self.view_map[:, :, 1] < 0) & (self.view_weight[:, :, 0] == 1.0)
        x[self.view_map[:, :, 0][alone]] = views[alone]
        sel = self.point_map >= 0
        x[self.point_map[sel]] = points[sel]
        return x


@dataclasses.dataclass(frozen=True)
class BundleSolution:
    """Result of :func:`solve_bundle`.

    Attributes
    ----------
    views : ndarray, shape (n_views, 7)
        Solved view parameters (:data:`tiltflow.projection.VIEW_COLUMNS`).
    points_xyz_px : ndarray, shape (n_markers, 3)
    report : LMReport
    seconds : float
        Wall time of the solve (set-up included, I/O excluded).
    eliminated : str
        ``"points"`` or ``"views"``: which blocks the Schur complement removed.
    n_params : int
    """

    views: np.ndarray
    points_xyz_px: np.ndarray
    report: LMReport
    seconds: float
    eliminated: str
    n_params: int


class BundleProblem:
    """Residuals and normal equations of the fiducial model for a layout."""

    def __init__(self, obs: Observations, layout: Layout, eliminate="auto", compiled="auto"):
        self.compiled = use_compiled(compiled, len(obs.view_index))
        self.obs = obs
        self.layout = layout
        self.sqrt_w = np.sqrt(obs.weight)[:, None]
        self.structure = SchurStructure(obs.view_index, obs.marker_index, layout, eliminate)
        # the numpy path evaluates the view maps (projection.view_maps) of the prediction, then those of
        # the active columns
        self._map_rows = np.concatenate([[0], 1 + self.structure.column_source])
        self._xy_rows_cache = None
        self._grid_weights = None

    @property
    def _xy_rows(self):
        """The observations relative to the image centre, one row per coordinate, shape (2, n_obs) (numpy path)."""
        if self._xy_rows_cache is None:
            o = self.obs
            self._xy_rows_cache = np.ascontiguousarray((o.xy_px - np.asarray(o.centre_xy_px, dtype=float)).T)
        return self._xy_rows_cache

    def set_weight(self, weight):
        """Replace the observation weights, shape (n_obs,) (robust re-weighting; the layout stays)."""
        weight = np.asarray(weight, dtype=float)
        if weight.shape != self.sqrt_w[:, 0].shape:
            raise ValueError(f"weight must have shape {self.sqrt_w[:, 0].shape}, got {weight.shape}")
        self.sqrt_w = np.sqrt(weight)[:, None]
        self._grid_weights = None

    def _grid_weight_rows(self, plan):
        """The weights and weighted centred observations on the view x marker grid (0 where not seen)."""
        if self._grid_weights is None:
            o = self.obs
            cell = plan[0]
            n_cells = o.n_views * o.n_markers
            w = np.zeros(n_cells)
            w[cell] = self.sqrt_w[:, 0]
            xyw = np.zeros((2, n_cells))
            xyw[:, cell] = self._xy_rows * self.sqrt_w[:, 0]
            self._grid_weights = (w.reshape(o.n_views, o.n_markers), xyw.reshape(2, o.n_views, o.n_markers))
        return self._grid_weights

    def _residual_rows(self, views, points):
        """Unweighted residuals ``pred - obs`` as rows, shape (2, n_obs) (numpy path)."""
        o = self.obs
        pred = projection.apply_view_maps(projection.view_maps(views, derivatives=False)[0], points, o.marker_index,
                                          o.view_index)
        pred -= self._xy_rows
        return pred

    def residual_vectors(self, state):
        """Unweighted residuals ``pred - obs``, shape (n_obs, 2)."""
        views, points = state
        o = self.obs
        if self.compiled:
            out = np.empty((len(o.view_index), 2))
            kernels = _kernels()
            kernels.residual_vectors(points, views, kernels.view_trig(views), o.marker_index, o.view_index, o.xy_px,
                                     o.centre_xy_px[0], o.centre_xy_px[1], out)
            return out
        return np.ascontiguousarray(self._residual_rows(views, points).T)

    def cost(self, state):
        views, points = state
        if self.compiled:
            o = self.obs
            kernels = _kernels()
            return float(kernels.cost(points, views, kernels.view_trig(views), o.marker_index, o.view_index, o.xy_px,
                                      self.sqrt_w[:, 0], o.centre_xy_px[0], o.centre_xy_px[1]))
        r = self._residual_rows(views, points)
        r *= self.sqrt_w[:, 0]
        r = r.reshape(-1)
        return 0.5 * float(r @ r)

    def linearize(self, state):
        views, points = state
        st, o = self.structure, self.obs
        if self.compiled:
            arrays = st.zeros()
            kernels = _kernels()
            c = kernels.linearize(
                points, views, kernels.view_trig(views), o.marker_index, o.view_index, o.xy_px, self.sqrt_w[:, 0],
                o.centre_xy_px[0], o.centre_xy_px[1], st.eliminate == "points", st.group_of, st.e_free, st.e_colmap,
                st.kpos_view, st.view_weight, st.kpos_point, *arrays,
            )
            return float(c), NormalEquations(st, *arrays)
        # the prediction and the active columns' derivatives, with the columns' per-view weights folded
        # into the maps: one evaluation gives residual rows and weighted Jacobian rows
        maps = projection.view_maps(views)[self._map_rows]  # (1 + q, 2, 4, n_views)
        maps[1:] *= st.view_factor[:, None, None, :]
        plan = st.grid_plan(o.n_views, o.n_markers)
        if plan is not None:
            # every view's maps at every marker: the grid the normal equations are formed on
            w, xyw = self._grid_weight_rows(plan)
            grid = projection.view_maps_on_grid(maps.reshape(-1, 4, o.n_views), points)
            grid = grid.reshape(len(maps), 2, o.n_views, o.n_markers)
            grid *= w
            grid[0] -= xyw
            flat = grid[0].reshape(-1)
            return 0.5 * float(flat @ flat), st.assemble_grid(grid)
        values = projection.apply_view_maps(maps.reshape(-1, 4, maps.shape[-1]), points, o.marker_index,
                                            o.view_index).reshape(len(maps), 2, -1)
        sqrt_w = self.sqrt_w[:, 0]
        values *= sqrt_w
        resid = values[0]
        resid -= self._xy_rows * sqrt_w
        jac = values[1:].transpose(1, 0, 2)  # (2, q, n_obs)
        if st.marker_factor is not None:
            jac *= st.marker_factor[:, o.marker_index]
        flat = resid.reshape(-1)
        return 0.5 * float(flat @ flat), st.assemble(jac, resid)

    def apply(self, state, step):
        views, points = state
        return self.layout.apply(views, points, step)

    def norm(self, state, scale):
        views, points = state
        return float(np.linalg.norm(scale * self.layout.values(views, points)))


def solve_bundle(obs, views, points_xyz_px, layout, options=LMOptions(), eliminate="auto", compiled="auto",
                 reweight=None):
    """Solve the fiducial model for the free parameters of ``layout``.

    Parameters
    ----------
    obs : Observations
    views : ndarray, shape (n_views, 7) or (n_views, 5)
        Starting view parameters; held entries keep these values (five
        columns: no distortion).
    points_xyz_px : ndarray, shape (n_markers, 3)
        Starting marker positions; held entries keep these values.
    layout : Layout
    options : LMOptions
    eliminate : {"auto", "points", "views"}
        Schur-complement choice (see :class:`SchurStructure`).
    compiled : bool or "auto"
        Use the numba kernels (True), the pure-numpy path (False), or the
        kernels from :data:`COMPILED_MIN_OBSERVATIONS` observations on
        (``"auto"``, default).
    reweight : callable, optional
        ``reweight(resid_xy_px) -> weights or None`` (``resid_xy_px``
        (n_obs, 2): unweighted ``pred - obs`` at the current state): robust
        re-weighting inside the loop (see :func:`levenberg_marquardt`).
        Observations whose weight drops to 0 keep the layout: their
        parameters, left without information, are held in place by the
        damping.

    Returns
    -------
    BundleSolution
    """
    views = projection.full_views(views)
    points_xyz_px = np.asarray(points_xyz_px, dtype=float)
    if views.shape != (obs.n_views, N_VIEW):
        raise ValueError(f"views must have shape ({obs.n_views}, 5) or ({obs.n_views}, {N_VIEW}), got {views.shape}")
    if points_xyz_px.shape != (obs.n_markers, 3):
        raise ValueError(f"points_xyz_px must have shape ({obs.n_markers}, 3), got {points_xyz_px.shape}")
    if not (np.all(np.isfinite(views)) and np.all(np.isfinite(points_xyz_px))):
        raise ValueError("starting parameters contain NaN or Inf")
    t0 = time.perf_counter()
    problem = BundleProblem(obs, layout, eliminate, compiled)
    (v, p), report = levenberg_marquardt(
        problem, (views, points_xyz_px), options,
        None if reweight is None else (lambda state: reweight(problem.residual_vectors(state))),
    )
    seconds = time.perf_counter() - t0
    return BundleSolution(v, p, report, seconds, problem.structure.eliminate, layout.n_params)


@contextlib.contextmanager
def blas_threads(threads):
    """Limit the BLAS libraries loaded now (numpy's, scipy's) to ``threads`` threads inside the block.

    The dense Schur system of a bundle problem is a few hundred unknowns: one
    thread per job solves it fastest, and two OpenBLAS pools (numpy and scipy
    each bring one) with a thread per core each slow each other down
    (measured, 2 cores: 121 views x 200 markers 0.23 s with one thread, 0.62 s
    with two).  Libraries loaded inside the block are not limited: load them
    first (:func:`warm_up`).
    """
    if not (isinstance(threads, (int, np.integer)) and threads >= 1):
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    with _blas_controller().limit(limits=int(threads), user_api="blas"):
        yield


_controllers = {}


def _blas_controller():
    """A threadpoolctl controller of the BLAS libraries loaded now (finding them scans the process's
    libraries, ~2 ms: done once, and again once scipy.linalg has brought its own OpenBLAS)."""
    from threadpoolctl import ThreadpoolController

    key = "scipy.linalg" in sys.modules
    if key not in _controllers:
        _controllers[key] = ThreadpoolController()
    return _controllers[key]


#: glibc allocator settings :func:`keep_freed_memory` makes: arrays up to this size come from the heap ...
HEAP_ARRAY_MAX_BYTES = 32 << 20
#: ... and up to this much freed memory at its top is kept for reuse instead of returned to the system.
HEAP_KEEP_BYTES = 256 << 20

_allocator_tuned = None


def keep_freed_memory():
    """Let the C allocator (glibc) reuse freed memory for the solver's short-lived arrays.

    Every L-M iteration allocates and frees the same few arrays of 0.1-30 MB
    (Jacobian blocks, products, the Schur system).  With glibc's defaults
    each one is a fresh ``mmap`` (or heap memory trimmed back to the system
    on every free), so every iteration page-faults its memory in again:
    measured here, that doubles the time of a 107-view x 30-marker solve
    (95 vs 47 ms) and costs 10 % on 121 x 200.  This raises the ``mmap``
    threshold to :data:`HEAP_ARRAY_MAX_BYTES` and the trim threshold to
    :data:`HEAP_KEEP_BYTES` (``mallopt``), process-wide: freed memory is
    then reused, at the price of the process keeping up to that much freed
    heap mapped.  No-op (False) where the C library has no ``mallopt``
    (macOS, musl); called once per process by :func:`warm_up`.
    """
    global _allocator_tuned
    if _allocator_tuned is None:
        _allocator_tuned = False
        if sys.platform.startswith("linux"):
            import ctypes
            import ctypes.util

            try:
                mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
            except (OSError, AttributeError):
                mallopt = None
            if mallopt is not None:
                m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
                _allocator_tuned = bool(mallopt(m_mmap_threshold, HEAP_ARRAY_MAX_BYTES)
                                        and mallopt(m_trim_threshold, HEAP_KEEP_BYTES))
    return _allocator_tuned


_warmed_up = set()


def warm_up(n_obs=None):
    """Load (or compile) what a solve of ``n_obs`` observations uses, once per process.

    Called before timing a solve, so that ``seconds`` measures the solve
    and not JIT compilation or cache loading.  ``n_obs=None`` loads the
    numba kernels whatever the size (benchmarks).  Also tunes the process's
    allocator (:func:`keep_freed_memory`).
    """
    keep_freed_memory()
    compiled = True if n_obs is None else use_compiled("auto", n_obs)
    if compiled in _warmed_up:
        return
    if compiled:
        import scipy.linalg  # noqa: F401 -- large kept systems use its Cholesky (see _schur._spd_solve)

    tilt = np.deg2rad([-30.0, 0.0, 30.0])
    views = np.column_stack([tilt, np.zeros(3), np.ones(3), np.zeros((3, N_VIEW - 3))])
    points = np.array([[10.0, 5.0, 3.0], [-8.0, 2.0, -4.0], [3.0, -9.0, 1.0]])
    mi, vi = np.meshgrid(np.arange(3), np.arange(3), indexing="ij")
    mi, vi = mi.ravel(), vi.ravel()
    xy = projection.project(points, views, mi, vi, (50.0, 50.0)) + 0.1
    obs = Observations(mi, vi, xy, np.ones(len(mi)), 3, 3, (50.0, 50.0))
    free_v = np.zeros((3, N_VIEW), dtype=bool)
    free_v[:, 3:5] = True
    free_p = np.ones((3, 3), dtype=bool)
    free_p[0] = False
    layout = Layout.from_masks(free_v, free_p)
    for eliminate in ("points", "views"):
        solve_bundle(obs, views, points, layout, LMOptions(max_iterations=3), eliminate, compiled)
    BundleProblem(obs, layout, compiled=compiled).residual_vectors((views, points))
    if compiled:
        _kernels().window_medians(np.arange(3.0), np.zeros(1, dtype=np.int64), np.full(1, 3))
    _warmed_up.add(compiled)
