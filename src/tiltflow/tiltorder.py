"""Walking a tilt series in tilt order, and interpolating over tilt.

The one place where "outwards from the reference view" and "fill the views
we could not solve from their neighbours in tilt" are written; the marker
coarse shifts, the image correlation chain and the tying of weak views all
use these.
"""

from __future__ import annotations

import numpy as np


def walk_outward(tilt, reference_view, usable):
    """Pairs ``(near, far)`` in tilt order walking outwards from the reference view.

    First towards higher tilt, then towards lower tilt.  Views not
    ``usable`` are skipped: the next usable view pairs with the last usable
    one.

    Parameters
    ----------
    tilt : ndarray, shape (n_views,)
        Tilt angles (any unit; only their order matters).  Ties keep their
        order in the tilt list.
    reference_view : int
    usable : ndarray of bool, shape (n_views,)

    Returns
    -------
    list of (int, int)
    """
    order = np.argsort(tilt, kind="stable")
    pos = int(np.flatnonzero(order == reference_view)[0])
    pairs = []
    for step in (1, -1):
        last = int(reference_view)
        k = pos + step
        while 0 <= k < len(order):
            v = int(order[k])
            if usable[v]:
                pairs.append((last, v))
                last = v
            k += step
    return pairs


def interpolate_over_tilt(values, tilt, source):
    """Fill the rows not in ``source`` by linear interpolation over tilt.

    Rows beyond the first or last source row (in tilt) take that row's
    value.

    Parameters
    ----------
    values : ndarray, shape (n_views,) or (n_views, k)
    tilt : ndarray, shape (n_views,)
        Tilt angles (any unit: the interpolation is linear in them).
    source : ndarray of bool, shape (n_views,)
        Rows whose values are known.

    Returns
    -------
    ndarray
        A copy of ``values`` with the other rows filled (unchanged when
        ``source`` is all or nothing).
    """
    out = np.array(values, dtype=float, copy=True)
    source = np.asarray(source, dtype=bool)
    src = np.flatnonzero(source)
    dst = np.flatnonzero(~source)
    if not len(src) or not len(dst):
        return out
    tilt = np.asarray(tilt, dtype=float)
    order = np.argsort(tilt[src], kind="stable")
    xs = tilt[src][order]
    columns = out if out.ndim == 2 else out[:, None]
    for k in range(columns.shape[1]):
        columns[dst, k] = np.interp(tilt[dst], xs, columns[src, k][order])
    return out
